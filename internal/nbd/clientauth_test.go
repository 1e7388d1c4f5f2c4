package nbd

import (
	"crypto/tls"
	"strings"
	"testing"
)

// TestTLSExportClientAuth: an export with ClientAuth admits TLS clients
// whose certificate the server verified; a TLS client without one is
// refused by policy, a plaintext one with the TLS-required error, while an
// export without ClientAuth on the same server serves them all.
func TestTLSExportClientAuth(t *testing.T) {
	p := newTestPKI(t, "ca")
	srvCfg := p.serverConfig(false)
	srvCfg.ClientCAs, srvCfg.ClientAuth = p.pool, tls.VerifyClientCertIfGiven
	auth := memExport("auth", 1<<20)
	auth.TLS, auth.ClientAuth = TLSRequired, true
	open := memExport("open", 1<<20)
	open.TLS = TLSAllowed
	_, sock, logs := startTLSServer(t, srvCfg, TLSAllowed, auth, open)

	roundTrip(t, dialT(t, sock, ClientOptions{Export: "auth", TLS: p.clientConfig(true)}))
	_, err := dialErr(sock, ClientOptions{Export: "auth", TLS: p.clientConfig(false)})
	if err == nil || !strings.Contains(err.Error(), "refused by policy") || !strings.Contains(err.Error(), "admits only authenticated clients") {
		t.Fatalf("TLS without a client certificate: %v", err)
	}
	waitLog(t, logs, "admits only authenticated clients")
	if _, err := dialErr(sock, ClientOptions{Export: "auth"}); err == nil || !strings.Contains(err.Error(), "TLS required") {
		t.Fatalf("plaintext: %v, want TLS required", err)
	}
	roundTrip(t, dialT(t, sock, ClientOptions{Export: "open"}))
	roundTrip(t, dialT(t, sock, ClientOptions{Export: "open", TLS: p.clientConfig(false)}))

	// the access of a served export changes for the next connections
	srv2, sock3, _ := startTLSServer(t, srvCfg, TLSAllowed, auth)
	if changed, err := srv2.SetExportAccess("auth", TLSAllowed, false); err != nil || !changed {
		t.Fatalf("SetExportAccess: %v %v", changed, err)
	}
	roundTrip(t, dialT(t, sock3, ClientOptions{Export: "auth"}))
	if changed, err := srv2.SetExportAccess("auth", TLSAllowed, false); err != nil || changed {
		t.Fatalf("SetExportAccess again: %v %v", changed, err)
	}
	if _, err := srv2.SetExportAccess("auth", TLSRequired, true); err != nil {
		t.Fatal(err)
	}
	if _, err := dialErr(sock3, ClientOptions{Export: "auth"}); err == nil || !strings.Contains(err.Error(), "TLS required") {
		t.Fatalf("plaintext after SetExportAccess required: %v", err)
	}
	if _, err := srv2.SetExportAccess("nope", TLSRequired, true); err == nil {
		t.Fatal("SetExportAccess of an unknown export")
	}

	// a server that only requests certificates without verifying them
	// authenticates no one
	loose := p.serverConfig(false)
	loose.ClientAuth = tls.RequestClientCert
	_, sock2, _ := startTLSServer(t, loose, TLSAllowed, auth)
	if _, err := dialErr(sock2, ClientOptions{Export: "auth", TLS: p.clientConfig(true)}); err == nil || !strings.Contains(err.Error(), "refused by policy") {
		t.Fatalf("unverified client certificate: %v", err)
	}
}
