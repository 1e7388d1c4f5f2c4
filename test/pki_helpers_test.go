package test

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/cluster"
)

// Clusters in the tests run secure (the default): TLS on every link, API
// tokens. These helpers give a test the credentials of a cluster from the
// data directory of one of its nodes.

// caFileOf is the cluster CA certificate in a node's data directory.
func caFileOf(dataDir string) string {
	return filepath.Join(dataDir, cluster.TLSDir, cluster.CACertFile)
}

// cliCreds are the CLI flags that give it a cluster's credentials (the
// CA, and the admin token of the node that created the cluster).
func cliCreds(firstDataDir string) []string {
	return []string{"--ca-file", caFileOf(firstDataDir), "--token-file", filepath.Join(firstDataDir, cluster.AdminTokenFile)}
}

// credEnv sets the CLI's credentials for the whole test (HACS_CA_FILE,
// HACS_TOKEN_FILE), for the hacs commands it runs.
func credEnv(t *testing.T, firstDataDir string) {
	t.Setenv("HACS_CA_FILE", caFileOf(firstDataDir))
	t.Setenv("HACS_TOKEN_FILE", filepath.Join(firstDataDir, cluster.AdminTokenFile))
}

// apiHTTP is an HTTP client of the cluster's API (HTTPS checked against
// the cluster CA) that sends the admin token of firstDataDir.
func apiHTTP(t testing.TB, firstDataDir string) *http.Client {
	t.Helper()
	var ca []byte
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := os.ReadFile(caFileOf(firstDataDir))
		if err == nil {
			ca = b
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster CA: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	tc, err := cluster.CATLSConfig(ca)
	if err != nil {
		t.Fatal(err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tc
	return &http.Client{Transport: &bearer{dir: firstDataDir, next: tr}}
}

// bearer adds the admin token (read when first there) to each request.
type bearer struct {
	dir  string
	tok  string
	next http.RoundTripper
}

func (b *bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	if b.tok == "" {
		if t, err := os.ReadFile(filepath.Join(b.dir, cluster.AdminTokenFile)); err == nil {
			b.tok = string(trimNL(t))
		}
	}
	if b.tok != "" && r.Header.Get("Authorization") == "" {
		r = r.Clone(r.Context())
		r.Header.Set("Authorization", "Bearer "+b.tok)
	}
	return b.next.RoundTrip(r)
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// nodeTLS is the TLS configuration of a node (its certificate, the
// cluster CA): what the etcd client of a test needs.
func nodeTLS(t testing.TB, dataDir string) *tls.Config {
	t.Helper()
	p := cluster.TLSFiles(dataDir)
	cert, err := tls.LoadX509KeyPair(p.Cert, p.Key)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(p.CACert)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool}
}

// adminClientDir is the administrator's client directory the cluster's
// creation wrote (ca-cert.pem, client-cert.pem, client-key.pem: what
// nbdinfo's tls-certificates=DIR and qemu's tls-creds-x509 dir= read).
func adminClientDir(firstDataDir string) string {
	return filepath.Join(firstDataDir, cluster.AdminClientDir)
}

// exportCreds are the flags of hacs volume attach that present the
// administrator's export client certificate.
func exportCreds(firstDataDir string) []string {
	return []string{"--tls-certificates", adminClientDir(firstDataDir)}
}

// exportTLS is the TLS configuration of an NBD client of the volume
// exports with the administrator's export client certificate (the server
// checked as a node of the cluster).
func exportTLS(t testing.TB, firstDataDir string) *tls.Config {
	t.Helper()
	d := adminClientDir(firstDataDir)
	cert, err := tls.LoadX509KeyPair(filepath.Join(d, cluster.ClientCertFile), filepath.Join(d, cluster.ClientKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(filepath.Join(d, cluster.ClientCAFile))
	if err != nil {
		t.Fatal(err)
	}
	tc, err := cluster.CATLSConfig(ca)
	if err != nil {
		t.Fatal(err)
	}
	tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	return tc
}

// volumeNBDS is the nbdinfo/qemu URI of a volume export over TLS with the
// administrator's export client certificate.
func volumeNBDS(addr, export, firstDataDir string) string {
	return "nbds://" + addr + "/" + export + "?tls-certificates=" + adminClientDir(firstDataDir)
}
