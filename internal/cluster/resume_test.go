package cluster

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/device"
	"github.com/hacs/hacs/internal/nbd"
)

// TestRevokedCertNoResumption: a node removed from the cluster loses the
// API also through TLS session resumption. crypto/tls does not call
// VerifyPeerCertificate (where revocation is checked) on a resumed session,
// so a ticket the node kept from before its removal must not resume.
func TestRevokedCertNoResumption(t *testing.T) {
	skipWithoutTLS(t)
	ctx := context.Background()
	n, cfg := startSoloNode(t, "v1")
	tok, _, err := n.CreateJoinToken(ctx, time.Minute, 1, "test")
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, csr, err := newNodeKey("gone")
	if err != nil {
		t.Fatal(err)
	}
	hc := caClient(t, cfg.DataDir, nil)
	code, msg, resp := postJoin(t, hc, n.APIAddr(), storageJoin(n, tok.String(), "gone", randomHex(8), csr))
	if code != 200 {
		t.Fatalf("join: %d %s", code, msg)
	}
	cert, err := tls.X509KeyPair([]byte(resp.Cert), keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	cache := tls.NewLRUClientSessionCache(8)
	get := func(withCache bool) (int, bool, error) {
		t.Helper()
		c := caClient(t, cfg.DataDir, &cert)
		tr := c.Transport.(*http.Transport)
		if withCache {
			tr.TLSClientConfig.ClientSessionCache = cache
		}
		tr.DisableKeepAlives = true
		defer tr.CloseIdleConnections()
		r, err := c.Get("https://" + n.APIAddr() + "/v1/nodes")
		if err != nil {
			return 0, false, err
		}
		io.Copy(io.Discard, r.Body)
		r.Body.Close()
		return r.StatusCode, r.TLS.DidResume, nil
	}
	// as a member: twice, the second resuming the first's session
	if code, _, err := get(true); code != 200 {
		t.Fatalf("member's certificate: %d %v", code, err)
	}
	if code, resumed, err := get(true); code != 200 || !resumed {
		t.Logf("member's certificate, second connection: %d resumed %v %v", code, resumed, err)
	}
	if err := n.RemoveNode(ctx, "gone", false); err != nil {
		t.Fatal(err)
	}
	waitCond(t, 10*time.Second, func() bool { _, _, err := get(false); return err != nil })
	code, resumed, err := get(true)
	if err == nil {
		t.Fatalf("removed node's certificate: API answered %d through a resumed session (resumed %v)", code, resumed)
	}
	t.Logf("removed node, resuming: %v", err)
}

// TestRevokedClientCertNoResumptionNBD: an export client certificate
// revoked by the cluster no longer opens a volume export, also not by
// resuming a TLS session it made before the revocation (the NBD server
// checks no revocation after the handshake: it relies on the TLS
// configuration's verification, which crypto/tls skips on resumption).
func TestRevokedClientCertNoResumptionNBD(t *testing.T) {
	skipWithoutTLS(t)
	ctx := context.Background()
	n, _ := startSoloNode(t, "e1")
	keyPEM, csr, err := NewClientKey("h1")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, caPEM, _, err := n.IssueClientCert(ctx, "h1", csr, time.Hour, "test")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	srv := nbd.NewServer(slog.New(slog.NewTextHandler(io.Discard, nil)))
	srv.TLSConfig, srv.TLSPolicy = n.ExportTLSServerConfig(), nbd.TLSAllowed
	if err := srv.AddExport(nbd.Export{Name: "vol", Device: device.NewMemory(1 << 20), TLS: nbd.TLSRequired, ClientAuth: true}); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	cache := tls.NewLRUClientSessionCache(8)
	open := func(withCache bool) error {
		tc, err := CATLSConfig(caPEM)
		if err != nil {
			t.Fatal(err)
		}
		tc.Certificates = []tls.Certificate{cert}
		if withCache {
			tc.ClientSessionCache = cache
		}
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		c, err := nbd.Dial(dctx, "tcp", ln.Addr().String(), nbd.ClientOptions{Export: "vol", TLS: tc})
		if err != nil {
			return err
		}
		buf := make([]byte, 512)
		err = c.ReadAt(buf, 0)
		c.Close()
		return err
	}
	if err := open(true); err != nil {
		t.Fatalf("before the revocation: %v", err)
	}
	if err := open(true); err != nil {
		t.Fatalf("before the revocation, second connection: %v", err)
	}
	if _, err := n.RevokeClientCert(ctx, "h1", "test"); err != nil {
		t.Fatal(err)
	}
	waitCond(t, 10*time.Second, func() bool { return open(false) != nil })
	if err := open(true); err == nil {
		t.Fatal("revoked export client certificate: the export opened through a resumed TLS session")
	} else {
		t.Logf("revoked, resuming: %v", err)
	}
}
