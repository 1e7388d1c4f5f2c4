package cli

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/cluster"
)

// testCert signs a certificate for tmpl with ca (nil: self-signed CA).
func testCert(t *testing.T, tmpl *x509.Certificate, ca *x509.Certificate, caKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey, []byte, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	parent, signer := tmpl, key
	if ca != nil {
		parent, signer = ca, caKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	kb, _ := x509.MarshalPKCS8PrivateKey(key)
	return c, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb})
}

// TestExportCredentials: where an export client finds its certificate
// (TLS flags, the node's with --data-dir, the client config directory),
// and how it checks the export: a hacs node certificate by its chain only,
// any other also by the address.
func TestExportCredentials(t *testing.T) {
	ca, caKey, caPEM, _ := testCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "ca"}, IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}, nil, nil)
	srvUsage := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	u, _ := url.Parse("hacs://c1/node/n1")
	_, _, nodeCert, nodeKey := testCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "n1"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, DNSNames: []string{"elsewhere"}, URIs: []*url.URL{u}}, ca, caKey)
	_, _, otherName, otherNameKey := testCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "x"}, ExtKeyUsage: srvUsage, DNSNames: []string{"elsewhere"}}, ca, caKey)
	_, _, rightIP, rightIPKey := testCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "y"}, ExtKeyUsage: srvUsage, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}, ca, caKey)
	cu, _ := url.Parse("hacs://c1/client/vm1")
	_, _, clientCert, clientKey := testCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "export client vm1"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, URIs: []*url.URL{cu}}, ca, caKey)

	write := func(dir string, files map[string][]byte) {
		mustDo(t, os.MkdirAll(dir, 0o700))
		for n, b := range files {
			mustDo(t, os.WriteFile(filepath.Join(dir, n), b, 0o600))
		}
	}
	tmp := t.TempDir()
	cdir, ddir, xdir := filepath.Join(tmp, "config"), filepath.Join(tmp, "data"), filepath.Join(tmp, "x509")
	write(cdir, map[string][]byte{"ca.crt": caPEM, cluster.ClientCertFile: clientCert, cluster.ClientKeyFile: clientKey})
	write(filepath.Join(ddir, cluster.TLSDir), map[string][]byte{cluster.CACertFile: caPEM, cluster.NodeCert: nodeCert, cluster.NodeKey: nodeKey})
	write(xdir, map[string][]byte{cluster.ClientCAFile: caPEM, cluster.ClientCertFile: clientCert, cluster.ClientKeyFile: clientKey})
	t.Setenv("HACS_CONFIG_DIR", cdir)
	t.Setenv("HACS_CA_FILE", "")

	for _, c := range []struct {
		name string
		f    apiFlags
		tf   tlsClientFlags
		want string // the client certificate's file
	}{
		{"config directory", apiFlags{}, tlsClientFlags{}, filepath.Join(cdir, cluster.ClientCertFile)},
		{"node", apiFlags{dataDir: ddir}, tlsClientFlags{}, filepath.Join(ddir, cluster.TLSDir, cluster.NodeCert)},
		{"flags", apiFlags{dataDir: ddir}, tlsClientFlags{dir: xdir}, filepath.Join(xdir, cluster.ClientCertFile)},
	} {
		cr, err := c.f.exportCredentials(&c.tf)
		if err != nil || cr == nil || cr.from != c.want {
			t.Fatalf("%s: %+v %v, want the certificate of %s", c.name, cr, err, c.want)
		}
	}
	if _, err := (&apiFlags{}).exportCredentials(&tlsClientFlags{dir: filepath.Join(tmp, "none")}); err == nil || !strings.Contains(err.Error(), "no CA certificate") {
		t.Fatalf("empty --tls-certificates: %v", err)
	}
	t.Setenv("HACS_CONFIG_DIR", filepath.Join(tmp, "nothing"))
	if cr, err := (&apiFlags{}).exportCredentials(nil); cr != nil || err != nil {
		t.Fatalf("no CA anywhere: %+v %v", cr, err)
	}

	// the server check
	cr, err := (&apiFlags{}).exportCredentials(&tlsClientFlags{dir: xdir})
	mustDo(t, err)
	serve := func(certPEM, keyPEM []byte) string {
		kp, err := tls.X509KeyPair(certPEM, keyPEM)
		mustDo(t, err)
		ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{kp}})
		mustDo(t, err)
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.(*tls.Conn).Handshake()
				c.Write([]byte("x"))
				c.Close()
			}
		}()
		return ln.Addr().String()
	}
	dial := func(addr string) error {
		c, err := tls.Dial("tcp", addr, cr.config(addr))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = io.ReadFull(c, make([]byte, 1))
		return err
	}
	if err := dial(serve(nodeCert, nodeKey)); err != nil {
		t.Fatalf("a hacs node certificate named for another host: %v", err)
	}
	if err := dial(serve(rightIP, rightIPKey)); err != nil {
		t.Fatalf("a certificate for the address: %v", err)
	}
	if err := dial(serve(otherName, otherNameKey)); err == nil || !strings.Contains(err.Error(), "127.0.0.1") {
		t.Fatalf("a certificate of the CA for another host: %v", err)
	}
	_, _, foreign, foreignKey := testCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "z"}, ExtKeyUsage: srvUsage, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, URIs: []*url.URL{u}}, nil, nil)
	if err := dial(serve(foreign, foreignKey)); err == nil || !strings.Contains(err.Error(), "not one of this cluster's") {
		t.Fatalf("a certificate of another CA: %v", err)
	}
}

func mustDo(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
