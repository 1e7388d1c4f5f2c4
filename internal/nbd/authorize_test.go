package nbd

import (
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/hacs/hacs/internal/nbd/tlstest"
	"github.com/hacs/hacs/internal/tlspsk"
)

// grantOnly is an Authorize admitting the certificates with these common
// names and the pre-shared key identities "psk:NAME".
func grantOnly(names ...string) func(Peer) error {
	return func(p Peer) error {
		name := ""
		switch {
		case p.PSKIdentity != "":
			name = "psk:" + p.PSKIdentity
		case p.Cert != nil:
			name = p.Cert.Subject.CommonName
		default:
			return fmt.Errorf("unauthenticated client refused")
		}
		if slices.Contains(names, name) {
			return nil
		}
		return fmt.Errorf("client %s is not granted this export", name)
	}
}

// TestExportAuthorize: an export's Authorize decides per client (x509
// certificate or pre-shared key) who opens it, with NBD_REP_ERR_POLICY and
// its reason for the others, while an export without it on the same
// server serves every client.
func TestExportAuthorize(t *testing.T) {
	p := newTestPKI(t, "ca")
	other := p.issue(t, "other", tlstest.Options{Client: true})
	srvCfg := p.serverConfig(false)
	srvCfg.ClientCAs, srvCfg.ClientAuth = p.pool, tls.VerifyClientCertIfGiven
	vol := memExport("vol", 1<<20)
	vol.TLS, vol.ClientAuth, vol.Authorize = TLSRequired, true, grantOnly("client", "psk:alice")
	open := memExport("open", 1<<20)
	open.TLS, open.ClientAuth = TLSRequired, true
	sock, logs := startPSKServer(t, srvCfg, pskKeys, TLSAllowed, vol, open)
	cases := []struct {
		name    string
		x509    *tls.Config
		psk     *tlspsk.Config
		export  string
		wantErr string // "" = served
	}{
		{"granted certificate", p.clientConfig(true), nil, "vol", ""},
		{"granted psk identity", nil, pskClient("alice", pskAlice), "vol", ""},
		{"ungranted certificate", withCert(p.clientConfig(false), other), nil, "vol", "client other is not granted this export"},
		{"ungranted psk identity", nil, pskClient("bob", pskBob), "vol", "client psk:bob is not granted this export"},
		{"no certificate", p.clientConfig(false), nil, "vol", "admits only authenticated clients"},
		{"plaintext", nil, nil, "vol", "TLS required"},
		{"ungranted certificate, export without grants", withCert(p.clientConfig(false), other), nil, "open", ""},
		{"ungranted psk identity, export without grants", nil, pskClient("bob", pskBob), "open", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := dialErr(sock, ClientOptions{Export: tc.export, TLS: tc.x509, PSK: tc.psk})
			if tc.wantErr == "" {
				mustOK(t, err)
				defer c.Close()
				roundTrip(t, c)
				return
			}
			if err == nil {
				c.Close()
				t.Fatalf("served, want an error containing %q", tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %q, want it to contain %q", err, tc.wantErr)
			}
		})
	}
	waitLog(t, logs, "client psk:bob is not granted this export")
}

// TestSetExportAuthorize: replacing an export's Authorize cuts exactly the
// open connections of the clients it no longer admits (logged); the
// others, and the connections to other exports, keep serving; the next
// connections get the new decision.
func TestSetExportAuthorize(t *testing.T) {
	p := newTestPKI(t, "ca")
	srvCfg := p.serverConfig(false)
	srvCfg.ClientCAs, srvCfg.ClientAuth = p.pool, tls.VerifyClientCertIfGiven
	logs := &syncBuf{}
	vol := memExport("vol", 1<<20)
	vol.TLS, vol.ClientAuth, vol.Authorize = TLSRequired, true, grantOnly("client", "psk:alice", "psk:bob")
	vol2 := memExport("vol2", 1<<20)
	vol2.TLS, vol2.ClientAuth = TLSRequired, true
	srv, sock := startServerWith(t, logs, srvCfg, pskKeys, vol, vol2)
	dial := func(export string, x *tls.Config, k *tlspsk.Config) *Client {
		t.Helper()
		c, err := dialErr(sock, ClientOptions{Export: export, TLS: x, PSK: k})
		mustOK(t, err)
		t.Cleanup(func() { c.Close() })
		return c
	}
	cert := dial("vol", p.clientConfig(true), nil)
	alice := dial("vol", nil, pskClient("alice", pskAlice))
	bob := dial("vol", nil, pskClient("bob", pskBob))
	alice2 := dial("vol2", nil, pskClient("alice", pskAlice))
	for _, c := range []*Client{cert, alice, bob, alice2} {
		roundTrip(t, c)
	}
	n, err := srv.SetExportAuthorize("vol", grantOnly("client", "psk:bob"), "grant removed")
	mustOK(t, err)
	if n != 1 {
		t.Fatalf("SetExportAuthorize cut %d connections, want 1 (alice's)", n)
	}
	if err := alice.ReadAt(make([]byte, 4096), 0); err == nil {
		t.Fatal("the cut connection still serves reads")
	}
	for _, c := range []*Client{cert, bob, alice2} {
		roundTrip(t, c)
	}
	waitLog(t, logs, "nbd connection cut: grant removed")
	waitLog(t, logs, "peer=psk:alice")
	if _, err := dialErr(sock, ClientOptions{Export: "vol", PSK: pskClient("alice", pskAlice)}); err == nil || !strings.Contains(err.Error(), "client psk:alice is not granted") {
		t.Fatalf("alice after her grant was removed: %v", err)
	}
	// nil admits every client ClientAuth lets in
	if n, err := srv.SetExportAuthorize("vol", nil, "x"); err != nil || n != 0 {
		t.Fatalf("SetExportAuthorize nil: %d %v", n, err)
	}
	roundTrip(t, dial("vol", nil, pskClient("alice", pskAlice)))
	if _, err := srv.SetExportAuthorize("nope", nil, "x"); err == nil {
		t.Fatal("SetExportAuthorize of an unknown export")
	}
}

func TestPeerString(t *testing.T) {
	p := newTestPKI(t, "ca")
	leaf := p.client.Leaf
	for _, tc := range []struct {
		p    Peer
		want string
		auth bool
	}{
		{Peer{}, "unauthenticated", false},
		{Peer{PSKIdentity: "alice"}, "psk:alice", true},
		{Peer{Cert: leaf}, `cert "client"`, true},
	} {
		if got := tc.p.String(); got != tc.want || tc.p.Authenticated() != tc.auth {
			t.Errorf("%+v: %q %v, want %q %v", tc.p, got, tc.p.Authenticated(), tc.want, tc.auth)
		}
	}
}

// TestAuthorizeOptions: every option that names an export asks its
// Authorize — LIST leaves the export out, INFO, GO and SET_META_CONTEXT get
// NBD_REP_ERR_POLICY with the reason, EXPORT_NAME (which cannot carry an
// error) is disconnected — on a plaintext connection to an export that
// does not need TLS (the zero Peer: Authorize decides alone).
func TestAuthorizeOptions(t *testing.T) {
	closed := memExport("closed", 1<<20)
	closed.Authorize = grantOnly("someone")
	_, sock := startServer(t, memExport("open", 1<<20), closed)

	r := dialRaw(t, sock)
	r.greet(clientFixedNewstyle)
	r.opt(optList, nil)
	var names []string
	for {
		typ, data := r.optReply(optList)
		if typ == repAck {
			break
		}
		names = append(names, string(data[4:4+binary.BigEndian.Uint32(data)]))
	}
	if !slices.Equal(names, []string{"open"}) {
		t.Fatalf("LIST: %v, want only the open export", names)
	}
	for _, opt := range []uint32{optInfo, optGo} {
		r.opt(opt, goData("closed"))
		typ, msg := r.optReply(opt)
		if typ != repErrPolicy || !strings.Contains(string(msg), "unauthenticated client refused") {
			t.Fatalf("%s: reply %#x %q, want NBD_REP_ERR_POLICY with the reason", optName(opt), typ, msg)
		}
	}
	r.opt(optStructuredReply, nil)
	if typ := r.finalReply(optStructuredReply); typ != repAck {
		t.Fatalf("structured replies: %#x", typ)
	}
	r.opt(optSetMetaContext, metaData("closed", MetaBaseAllocation))
	if typ, _ := r.optReply(optSetMetaContext); typ != repErrPolicy {
		t.Fatalf("SET_META_CONTEXT: reply %#x, want NBD_REP_ERR_POLICY", typ)
	}
	// the connection still serves the open export
	r.opt(optGo, goData("open"))
	if typ := r.finalReply(optGo); typ != repAck {
		t.Fatalf("GO open after the refusals: %#x", typ)
	}

	r2 := dialRaw(t, sock)
	r2.greet(clientFixedNewstyle | clientNoZeroes)
	r2.opt(optExportName, []byte("closed"))
	r2.expectClosed()
}
