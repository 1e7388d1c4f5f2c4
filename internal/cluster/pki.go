package cluster

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hacs/hacs/internal/fsutil"
)

// The cluster PKI (docs/SECURITY.md).
//
// The node that creates a cluster creates its certificate authority (ECDSA
// P-256, valid 10 years) and keeps it in DATA_DIR/tls/ca.key; the CA (key
// included) is also stored in the cluster store (KeyCA) so that any member
// can admit a new node. Every node has its own key (DATA_DIR/tls/node.key,
// never sent anywhere) and a certificate the CA signed from its certificate
// request at join time (DATA_DIR/tls/node.crt). That certificate is the
// node's identity on every link: etcd peer and client traffic, the agent
// API between nodes, the replication links.

// Files of DATA_DIR/tls.
const (
	TLSDir      = "tls"
	CACertFile  = "ca.crt"
	CAKeyFile   = "ca.key"
	NodeCert    = "node.crt"
	NodeKey     = "node.key"
	CRLFileName = "revoked.crl"
)

// NodeCertValidity is how long a node certificate is valid; a node renews
// its own before a third of it is left.
var NodeCertValidity = 90 * 24 * time.Hour

const caValidity = 10 * 365 * 24 * time.Hour

// TLSPaths are the files of a node's TLS material.
type TLSPaths struct {
	Dir, CACert, CAKey, Cert, Key, CRL string
}

// TLSFiles returns where a node with data directory dir keeps its TLS files.
func TLSFiles(dataDir string) TLSPaths {
	d := filepath.Join(dataDir, TLSDir)
	return TLSPaths{Dir: d, CACert: filepath.Join(d, CACertFile), CAKey: filepath.Join(d, CAKeyFile),
		Cert: filepath.Join(d, NodeCert), Key: filepath.Join(d, NodeKey), CRL: filepath.Join(d, CRLFileName)}
}

func randomSerial() *big.Int {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err)
	}
	return s.Add(s, big.NewInt(1))
}

func pemEncode(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func marshalKey(k *ecdsa.PrivateKey) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		panic(err)
	}
	return pemEncode("PRIVATE KEY", der)
}

// newCA creates the certificate authority of cluster clusterID.
func newCA(clusterID string) (certPEM, keyPEM []byte, err error) {
	certPEM, keyPEM, _, err = newCANamed("hacs cluster " + clusterID + " CA")
	return certPEM, keyPEM, err
}

// caTemplate is the certificate of a cluster CA named cn for key. Path
// length 1: the CA may sign one intermediate, the cross-signed certificate
// of its successor in a CA rotation (docs/SECURITY.md), so that verifiers
// that still trust only this CA accept the successor's node certificates.
func caTemplate(cn string, key *ecdsa.PrivateKey) (*x509.Certificate, error) {
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	ski := sha256.Sum256(pub)
	now := time.Now()
	return &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"hacs"}},
		SubjectKeyId:          ski[:20],
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,
	}, nil
}

// newCANamed creates a self-signed CA named cn.
func newCANamed(cn string) (certPEM, keyPEM []byte, key *ecdsa.PrivateKey, err error) {
	key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	tmpl, err := caTemplate(cn, key)
	if err != nil {
		return nil, nil, nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, nil, err
	}
	return pemEncode("CERTIFICATE", der), marshalKey(key), key, nil
}

// ca is a loaded certificate authority (key optional).
type ca struct {
	cert    *x509.Certificate
	certPEM []byte
	key     any
	pool    *x509.CertPool
	// chain is appended to the certificates it signs: the cross-signed
	// certificate of this CA by its predecessor after a CA rotation
	chain []byte
}

func parseCA(certPEM, keyPEM []byte) (*ca, error) {
	b, _ := pem.Decode(certPEM)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate in the cluster CA")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("cluster CA: %w", err)
	}
	a := &ca{cert: c, certPEM: certPEM, pool: x509.NewCertPool()}
	a.pool.AddCert(c)
	if keyPEM != nil {
		kb, _ := pem.Decode(keyPEM)
		if kb == nil {
			return nil, errors.New("no PEM key in the cluster CA key")
		}
		k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
		if err != nil {
			return nil, fmt.Errorf("cluster CA key: %w", err)
		}
		a.key = k
	}
	return a, nil
}

// newNodeKey creates a node key and a certificate request for it.
func newNodeKey(name string) (keyPEM, csrPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	if err != nil {
		return nil, nil, err
	}
	return marshalKey(key), pemEncode("CERTIFICATE REQUEST", der), nil
}

// csrFromKey makes a certificate request for an existing node key (renewal).
func csrFromKey(name string, keyPEM []byte) ([]byte, error) {
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, errors.New("no PEM node key")
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, k)
	if err != nil {
		return nil, err
	}
	return pemEncode("CERTIFICATE REQUEST", der), nil
}

// nodeCertURI names a node in its certificate: hacs://CLUSTER/node/ID.
func nodeCertURI(clusterID, nodeID string) string {
	return "hacs://" + clusterID + "/node/" + nodeID
}

// request reads a certificate request for this CA to sign: well formed and
// signed by the key it names (which proves its possession).
func (a *ca) request(csrPEM []byte) (*x509.CertificateRequest, error) {
	if a.key == nil {
		return nil, errors.New("this node does not hold the cluster CA key")
	}
	b, _ := pem.Decode(csrPEM)
	if b == nil || b.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("no PEM certificate request")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("certificate request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("certificate request: bad signature: %w", err)
	}
	return csr, nil
}

// sign issues a node certificate for the key of csrPEM. The name, id and
// addresses come from the cluster (the admitted join request), not from the
// request, which only proves possession of the key.
func (a *ca) sign(csrPEM []byte, clusterID, nodeID, name string, hosts []string, validity time.Duration) ([]byte, error) {
	csr, err := a.request(csrPEM)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	u, err := url.Parse(nodeCertURI(clusterID, nodeID))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: name, Organization: []string{"hacs"}, OrganizationalUnit: []string{"cluster " + clusterID}},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     now.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{"localhost", name},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")},
	}
	// (the name "localhost" also marks a node: etcd admits only
	// certificates valid for it, nodeOnlyHostname; export client
	// certificates have no names)
	tmpl.URIs = append(tmpl.URIs, u)
	for _, h := range hosts {
		if h == "" {
			continue
		}
		if ip := net.ParseIP(h); ip != nil {
			if !slices.ContainsFunc(tmpl.IPAddresses, ip.Equal) {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			}
		} else if !slices.Contains(tmpl.DNSNames, h) {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, csr.PublicKey, a.key)
	if err != nil {
		return nil, err
	}
	return append(pemEncode("CERTIFICATE", der), a.chain...), nil
}

// crl is a certificate revocation list of the given serials (DER).
func (a *ca) crl(serials []*big.Int) ([]byte, error) {
	if a.key == nil {
		return nil, errors.New("this node does not hold the cluster CA key")
	}
	signer, ok := a.key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, errors.New("cluster CA key cannot sign")
	}
	var entries []x509.RevocationListEntry
	for _, s := range serials {
		entries = append(entries, x509.RevocationListEntry{SerialNumber: s, RevocationTime: time.Now()})
	}
	now := time.Now()
	tmpl := &x509.RevocationList{
		RevokedCertificateEntries: entries,
		Number:                    big.NewInt(now.UnixNano()),
		ThisUpdate:                now.Add(-time.Minute),
		NextUpdate:                now.Add(caValidity),
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, a.cert, signer)
	if err != nil {
		return nil, err
	}
	return der, nil // DER: what etcd's CRL check reads
}

// hostsOf returns the hosts of HOST:PORT addresses (for certificate SANs).
func hostsOf(addrs ...string) []string {
	var hs []string
	for _, a := range addrs {
		if h, _, err := net.SplitHostPort(trimScheme(a)); err == nil && h != "" && !slices.Contains(hs, h) {
			hs = append(hs, h)
		}
	}
	return hs
}

func trimScheme(s string) string {
	for _, p := range []string{"https://", "http://"} {
		if len(s) > len(p) && s[:len(p)] == p {
			return s[len(p):]
		}
	}
	return s
}

// caMAC proves to a joining node that the CA it is shown belongs to the
// cluster whose join secret it holds: HMAC-SHA256 of the CA certificate,
// keyed with the secret's hash (joinKey; what the store keeps of a join
// token). A joining node checks it before it sends its secret anywhere.
func caMAC(key string, caPEM []byte) string {
	m := hmac.New(sha256.New, []byte(key))
	m.Write([]byte("hacs-join-ca\n"))
	m.Write(caPEM)
	return hex.EncodeToString(m.Sum(nil))
}

// tlsCreds is a node's TLS material, reloaded from its files when they
// change (so a renewed certificate is used at the next handshake).
type tlsCreds struct {
	paths TLSPaths
	ca    *ca
	// trust is the set of trusted cluster CAs (nil: ca alone); during a CA
	// rotation the old and the new one
	trust atomic.Pointer[x509.CertPool]

	mu      sync.Mutex
	cert    *tls.Certificate
	leaf    *x509.Certificate
	modTime time.Time
	size    int64

	// revoked reports whether a certificate serial is revoked (nil: none).
	revoked func(serial *big.Int) bool
	// onRefused logs a refused peer.
	onRefused func(what string, err error)
}

func loadCreds(dataDir string) (*tlsCreds, error) {
	p := TLSFiles(dataDir)
	caPEM, err := os.ReadFile(p.CACert)
	if err != nil {
		return nil, fmt.Errorf("the cluster CA certificate of this node: %w", err)
	}
	var keyPEM []byte
	if b, err := os.ReadFile(p.CAKey); err == nil {
		keyPEM = b
	}
	a, err := parseCA(caPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	c := &tlsCreds{paths: p, ca: a}
	if pool, n := poolFromPEM(caPEM); n > 1 {
		c.trust.Store(pool) // restarted during a CA rotation
	}
	if _, err := c.certificate(); err != nil {
		return nil, err
	}
	return c, nil
}

// certificate returns the node certificate, rereading its files when they
// changed.
func (c *tlsCreds) certificate() (*tls.Certificate, error) {
	st, err := os.Stat(c.paths.Cert)
	if err != nil {
		return nil, fmt.Errorf("node certificate: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cert != nil && st.ModTime().Equal(c.modTime) && st.Size() == c.size {
		return c.cert, nil
	}
	cert, err := tls.LoadX509KeyPair(c.paths.Cert, c.paths.Key)
	if err != nil {
		if c.cert != nil {
			return c.cert, nil // a renewal being written: keep the old one
		}
		return nil, fmt.Errorf("node certificate %s: %w", c.paths.Cert, err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, err
	}
	cert.Leaf = leaf
	c.cert, c.leaf, c.modTime, c.size = &cert, leaf, st.ModTime(), st.Size()
	return c.cert, nil
}

// Leaf is the node's current certificate.
func (c *tlsCreds) Leaf() *x509.Certificate {
	if _, err := c.certificate(); err != nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.leaf
}

// verify checks a peer's certificate chain against the cluster CA (not its
// host name: every certificate the CA signed is a member of the cluster),
// its validity period and the revocation list.
func (c *tlsCreds) verify(rawCerts [][]byte, usage x509.ExtKeyUsage) (*x509.Certificate, error) {
	if len(rawCerts) == 0 {
		return nil, errors.New("no certificate presented")
	}
	leaf, err := x509.ParseCertificate(rawCerts[0])
	if err != nil {
		return nil, fmt.Errorf("bad certificate: %w", err)
	}
	inter := x509.NewCertPool()
	for _, r := range rawCerts[1:] {
		if ic, err := x509.ParseCertificate(r); err == nil {
			inter.AddCert(ic)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: c.roots(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		var ue x509.UnknownAuthorityError
		var ie x509.CertificateInvalidError
		switch {
		case errors.As(err, &ue):
			return nil, fmt.Errorf("certificate of %q is not signed by this cluster's CA (%s): it belongs to another cluster or to no cluster", leaf.Subject.CommonName, c.ca.cert.Subject.CommonName)
		case errors.As(err, &ie) && ie.Reason == x509.Expired:
			return nil, fmt.Errorf("certificate of %q expired or not yet valid (valid %s to %s): %w", leaf.Subject.CommonName, leaf.NotBefore.Format(time.RFC3339), leaf.NotAfter.Format(time.RFC3339), err)
		}
		return nil, fmt.Errorf("certificate of %q refused: %w", leaf.Subject.CommonName, err)
	}
	if c.revoked != nil && c.revoked(leaf.SerialNumber) {
		if kind, _, name := CertIdentity(leaf); kind == CertExportClient {
			return nil, fmt.Errorf("export client certificate %q (serial %x) was revoked (hacs cluster auth client-cert revoke)", name, leaf.SerialNumber)
		}
		return nil, fmt.Errorf("certificate of %q (serial %x) was revoked: the node was removed from the cluster", leaf.Subject.CommonName, leaf.SerialNumber)
	}
	return leaf, nil
}

// ServerConfig is the TLS configuration of this node's listeners. With
// requireClient, a client must present a certificate of this cluster;
// otherwise a presented one is checked, and a client without one may
// authenticate another way (a bearer token).
func (c *tlsCreds) ServerConfig(requireClient bool) *tls.Config {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return c.certificate()
		},
		// no resumption: crypto/tls does not call VerifyPeerCertificate
		// on a resumed session, so a ticket taken before a revocation (or
		// before a CA rotation's --finish) would still let its
		// certificate in
		SessionTicketsDisabled: true,
		ClientAuth:             tls.RequestClientCert,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				if requireClient {
					err := errors.New("client presented no certificate: only nodes of this cluster may connect here")
					c.refused("client", err)
					return err
				}
				return nil
			}
			leaf, err := c.verify(raw, x509.ExtKeyUsageClientAuth)
			if err == nil && requireClient {
				// only nodes get in here: an export client certificate
				// opens volume exports, nothing else (on the API, where
				// a presented certificate is optional, authenticate
				// refuses it as a credential)
				err = c.requireNode(leaf, "only nodes of this cluster may connect to this port")
			}
			if err != nil {
				c.refused("client", err)
			}
			return err
		},
	}
	if requireClient {
		cfg.ClientAuth = tls.RequireAnyClientCert
	}
	return cfg
}

// ClientConfig is the TLS configuration to reach other nodes: the node
// certificate as client certificate, the cluster CA as the only root.
func (c *tlsCreds) ClientConfig() *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // verified below: chain to the cluster CA, revocation
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return c.certificate()
		},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			leaf, err := c.verify(raw, x509.ExtKeyUsageServerAuth)
			if err == nil {
				err = c.requireNode(leaf, "the servers of this cluster present node certificates")
			}
			if err != nil {
				c.refused("server", err)
			}
			return err
		},
	}
}

func (c *tlsCreds) refused(what string, err error) {
	if c.onRefused != nil {
		c.onRefused(what, err)
	}
}

// PeerNode returns the cluster and node id of a verified peer certificate
// ("" when it is not a node certificate: an export client certificate is
// not one).
func PeerNode(cert *x509.Certificate) (clusterID, nodeID string) {
	if kind, cid, id := CertIdentity(cert); kind == CertNode {
		return cid, id
	}
	return "", ""
}

// writeTLSFile writes one TLS file (0600: some hold keys).
func writeTLSFile(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(path, b, 0o600)
}

func certSerial(certPEM []byte) (*big.Int, time.Time, error) {
	b, _ := pem.Decode(certPEM)
	if b == nil {
		return nil, time.Time{}, errors.New("no PEM certificate")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, time.Time{}, err
	}
	return c.SerialNumber, c.NotAfter, nil
}
