package cli

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/hacs/hacs/internal/agent"
	"github.com/hacs/hacs/internal/cluster"
)

// exportCreds are what an NBD client of the cluster's volume exports
// presents and trusts: the CA that signs the servers' certificates and the
// client certificate that opens the volumes of a secure cluster.
type exportCreds struct {
	roots *x509.CertPool
	cert  *tls.Certificate // nil: none found
	from  string           // where the client certificate comes from
}

// exportCredentials finds the credentials of a volume export client:
//   - the TLS flags (--tls-certificates DIR, --tls-ca, --tls-cert,
//     --tls-key) when given;
//   - else the cluster CA as the API client finds it, and the client
//     certificate of the local node (--data-dir: DATA_DIR/tls/node.crt),
//     or else the export client certificate of the client config directory
//     ($HACS_CONFIG_DIR or ~/.config/hacs: client-cert.pem, client-key.pem).
//
// nil when there is no CA to check the servers with.
func (f *apiFlags) exportCredentials(tf *tlsClientFlags) (*exportCreds, error) {
	if tf != nil && tf.given() {
		files := tf.files()
		if files.CA == "" {
			return nil, errors.New("TLS: no CA certificate (--tls-ca or ca-cert.pem in --tls-certificates)")
		}
		caPEM, err := os.ReadFile(files.CA)
		if err != nil {
			return nil, fmt.Errorf("TLS: %w", err)
		}
		c, err := newExportCreds(caPEM)
		if err != nil {
			return nil, fmt.Errorf("TLS: %s: %w", files.CA, err)
		}
		if files.Cert != "" || files.Key != "" {
			if files.Cert == "" || files.Key == "" {
				return nil, errors.New("TLS: a client certificate needs both its certificate and its key file")
			}
			kp, err := tls.LoadX509KeyPair(files.Cert, files.Key)
			if err != nil {
				return nil, fmt.Errorf("TLS: client certificate %s: %w", files.Cert, err)
			}
			c.cert, c.from = &kp, files.Cert
		}
		return c, nil
	}
	caPEM, _, err := loadCA(f.caFile)
	if err != nil {
		return nil, err
	}
	cdir := clientConfigDir()
	if caPEM == nil && f.dataDir != "" {
		caPEM, _ = os.ReadFile(cluster.TLSFiles(f.dataDir).CACert)
	}
	if caPEM == nil && cdir != "" {
		caPEM, _ = os.ReadFile(filepath.Join(cdir, cluster.ClientCAFile))
	}
	if caPEM == nil {
		return nil, nil
	}
	c, err := newExportCreds(caPEM)
	if err != nil {
		return nil, fmt.Errorf("cluster CA certificate: %w", err)
	}
	var tries [][2]string
	if f.dataDir != "" {
		p := cluster.TLSFiles(f.dataDir)
		tries = append(tries, [2]string{p.Cert, p.Key})
	}
	if cdir != "" {
		tries = append(tries, [2]string{filepath.Join(cdir, cluster.ClientCertFile), filepath.Join(cdir, cluster.ClientKeyFile)})
	}
	for _, t := range tries {
		if _, err := os.Stat(t[0]); err != nil {
			continue
		}
		kp, err := tls.LoadX509KeyPair(t[0], t[1])
		if err != nil {
			return nil, fmt.Errorf("client certificate %s: %w", t[0], err)
		}
		c.cert, c.from = &kp, t[0]
		break
	}
	return c, nil
}

func newExportCreds(caPEM []byte) (*exportCreds, error) {
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("no PEM certificate in it")
	}
	return &exportCreds{roots: roots}, nil
}

// config is the TLS configuration to reach the export at addr: the
// server's certificate must chain to the CA; a node certificate of a hacs
// cluster is taken without a host name check (every certificate the
// cluster CA gave a node is one of its members, as between the nodes),
// any other must be valid for addr's host.
func (c *exportCreds) config(addr string) *tls.Config {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // checked below
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the export presented no certificate")
			}
			leaf := cs.PeerCertificates[0]
			inter := x509.NewCertPool()
			for _, ic := range cs.PeerCertificates[1:] {
				inter.AddCert(ic)
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: c.roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
				return fmt.Errorf("the export's certificate is not one of this cluster's (nor of the CA given): %w", err)
			}
			if kind, _, _ := cluster.CertIdentity(leaf); kind == cluster.CertNode {
				return nil
			}
			if err := leaf.VerifyHostname(host); err != nil {
				return fmt.Errorf("the export's certificate: %w", err)
			}
			return nil
		},
	}
	if c.cert != nil {
		cert := *c.cert
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	}
	return cfg
}

// missingCertHint explains an export's refusal of a client without a
// certificate.
func (c *exportCreds) missingCertHint() string {
	if c != nil && c.cert != nil {
		return ""
	}
	return fmt.Sprintf("; a secure cluster admits to a volume only clients with a certificate of the cluster: give --tls-certificates DIR (ca-cert.pem, client-cert.pem, client-key.pem: `hacs cluster auth client-cert create NAME --out DIR`), run on a node with --data-dir, or put client-cert.pem and client-key.pem in %s", clientConfigDir())
}

// exportURI is the NBD URI of a volume's export: nbds:// when its primary
// offers TLS (a client then needs tls-certificates=DIR or a pre-shared
// key to open it).
func exportURI(e *agent.Export) string {
	scheme := "nbd://"
	if e.TLS {
		scheme = "nbds://"
	}
	return scheme + e.Addr + "/" + e.Name
}
