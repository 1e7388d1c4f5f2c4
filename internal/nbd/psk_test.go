package nbd

import (
	"crypto/tls"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/tlspsk"
)

var (
	pskAlice = []byte("0123456789abcdef0123456789abcdef")
	pskBob   = []byte("fedcba9876543210fedcba9876543210")
	pskKeys  = tlspsk.Keys{"alice": pskAlice, "bob": pskBob}
)

// startPSKServer serves the exports on a Unix socket with pre-shared keys
// and, when cfg is set, certificates too.
func startPSKServer(t testing.TB, cfg *tls.Config, keys tlspsk.Keys, policy TLSPolicy, exports ...Export) (string, *syncBuf) {
	t.Helper()
	_, sock, logs := startLoggedServer(t, func(srv *Server) { srv.TLSConfig, srv.PSKKeys, srv.TLSPolicy = cfg, keys, policy }, exports...)
	return sock, logs
}

func tls12(cfg *tls.Config) *tls.Config {
	cfg.MaxVersion = tls.VersionTLS12
	return cfg
}

func pskClient(identity string, key []byte) *tlspsk.Config {
	return &tlspsk.Config{Identity: identity, Keys: tlspsk.Keys{identity: key}}
}

// The server picks the kind of TLS from the client's hello: x509 clients
// keep working when the server also has pre-shared keys; a server with
// only keys refuses them clearly; PSK clients get in with a known
// identity and its key, and are refused, saying why, otherwise.
func TestPSKDispatch(t *testing.T) {
	p := newTestPKI(t, "ca")
	cases := []struct {
		name    string
		server  *tls.Config
		keys    tlspsk.Keys
		policy  TLSPolicy
		x509    *tls.Config
		psk     *tlspsk.Config
		wantErr string // "" = connects over TLS
		wantLog string
	}{
		{"x509 client, x509+psk server", p.serverConfig(false), pskKeys, TLSRequired, p.clientConfig(false), nil, "", ""},
		{"mtls client, x509+psk server", p.serverConfig(true), pskKeys, TLSRequired, p.clientConfig(true), nil, "", "peer=\"CN=client"},
		{"x509 client, psk-only server", nil, pskKeys, TLSRequired, p.clientConfig(false), nil, "handshake failure", "offers no pre-shared key"},
		{"tls 1.2 x509 client, x509+psk server", p.serverConfig(false), pskKeys, TLSRequired, tls12(p.clientConfig(false)), nil, "", ""},
		{"tls 1.2 client, psk-only server", nil, pskKeys, TLSRequired, tls12(p.clientConfig(false)), nil, "protocol version", "does not offer TLS 1.3"},
		{"psk client, psk-only server", nil, pskKeys, TLSRequired, nil, pskClient("alice", pskAlice), "", "peer=psk:alice"},
		{"psk client, x509+psk server", p.serverConfig(false), pskKeys, TLSAllowed, nil, pskClient("bob", pskBob), "", "peer=psk:bob"},
		{"unknown identity", nil, pskKeys, TLSRequired, nil, pskClient("eve", pskAlice), "does not know the identity \"eve\"", "psk_identity=eve"},
		{"wrong key", p.serverConfig(false), pskKeys, TLSRequired, nil, pskClient("alice", pskBob), "wrong key", "psk_identity=alice"},
		{"psk client, x509-only server", p.serverConfig(false), nil, TLSRequired, nil, pskClient("alice", pskAlice), "TLS-PSK handshake as \"alice\"", "nbd TLS handshake failed"},
		{"psk client, server without TLS", nil, nil, TLSDefault, nil, pskClient("alice", pskAlice), "server refused TLS", ""},
		{"plaintext client, psk-only server", nil, pskKeys, TLSRequired, nil, nil, "TLS required", "TLS required"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sock, logs := startPSKServer(t, tc.server, tc.keys, tc.policy, memExport("vol", 1<<20))
			c, err := dialErr(sock, ClientOptions{Export: "vol", TLS: tc.x509, PSK: tc.psk})
			if tc.wantLog != "" {
				defer waitLog(t, logs, tc.wantLog)
			}
			checkConnected(t, c, err, tc.wantErr)
		})
	}
}

// Refused PSK clients do not disturb a PSK client in transmission; a
// TLS-only export on a server that allows plaintext serves PSK clients.
func TestPSKRefusalsDoNotDisturbOthers(t *testing.T) {
	secret := memExport("secret", 1<<20)
	secret.TLS = TLSRequired
	sock, logs := startPSKServer(t, nil, pskKeys, TLSAllowed, memExport("open", 1<<20), secret)
	good, err := dialErr(sock, ClientOptions{Export: "secret", PSK: pskClient("alice", pskAlice)})
	mustOK(t, err)
	defer good.Close()
	roundTrip(t, good)
	if _, err := dialErr(sock, ClientOptions{Export: "secret"}); err == nil || !strings.Contains(err.Error(), "TLS required") {
		t.Fatalf("plaintext client of a TLS-only export: %v", err)
	}
	roundTrip(t, dialT(t, sock, ClientOptions{Export: "open"}))
	for _, bad := range []*tlspsk.Config{pskClient("eve", pskAlice), pskClient("bob", pskAlice)} {
		if c, err := dialErr(sock, ClientOptions{Export: "secret", PSK: bad}); err == nil {
			c.Close()
			t.Fatalf("identity %s with a wrong key connected", bad.Identity)
		}
		roundTrip(t, good)
	}
	// Garbage where the TLS hello belongs.
	r := dialRaw(t, sock)
	r.greet(clientFixedNewstyle | clientNoZeroes)
	r.opt(optStartTLS, nil)
	if typ, _ := r.optReply(optStartTLS); typ != repAck {
		t.Fatalf("STARTTLS: %#x", typ)
	}
	r.write([]byte("this is not a TLS client hello\r\n\r\n"))
	r.expectClosed()
	waitLog(t, logs, "reading the client's TLS hello")
	roundTrip(t, good)
	roundTrip(t, dialT(t, sock, ClientOptions{Export: "secret", PSK: pskClient("bob", pskBob)}))
}

func TestPSKClientOptions(t *testing.T) {
	sock, _ := startPSKServer(t, nil, pskKeys, TLSRequired, memExport("vol", 1<<20))
	p := newTestPKI(t, "ca")
	if _, err := dialErr(sock, ClientOptions{TLS: p.clientConfig(false), PSK: pskClient("alice", pskAlice)}); err == nil || !strings.Contains(err.Error(), "exclusive") {
		t.Fatalf("TLS and PSK together: %v", err)
	}
	if _, err := dialErr(sock, ClientOptions{PSK: &tlspsk.Config{Identity: "alice", Keys: tlspsk.Keys{"bob": pskBob}}}); err == nil || !strings.Contains(err.Error(), "no pre-shared key for identity") {
		t.Fatalf("identity without a key: %v", err)
	}
}

func TestUsePSK(t *testing.T) {
	ticket := strings.Repeat("\x01\xfe", 80)
	for _, tc := range []struct {
		hello    tlspsk.ClientHelloInfo
		keys     tlspsk.Keys
		haveX509 bool
		want     bool
	}{
		{tlspsk.ClientHelloInfo{}, pskKeys, true, false},
		{tlspsk.ClientHelloInfo{}, pskKeys, false, false},
		{tlspsk.ClientHelloInfo{OffersPSK: true, Identities: []string{"alice"}}, nil, true, false},
		{tlspsk.ClientHelloInfo{OffersPSK: true, Identities: []string{"alice"}}, pskKeys, true, true},
		{tlspsk.ClientHelloInfo{OffersPSK: true, Identities: []string{"eve"}}, pskKeys, true, true},
		{tlspsk.ClientHelloInfo{OffersPSK: true, Identities: []string{ticket}}, pskKeys, true, false},
		{tlspsk.ClientHelloInfo{OffersPSK: true, Identities: []string{ticket}}, pskKeys, false, true},
	} {
		if got := usePSK(tc.hello, tc.keys, tc.haveX509); got != tc.want {
			t.Errorf("usePSK(%+v, %d keys, x509 %v) = %v, want %v", tc.hello, len(tc.keys), tc.haveX509, got, tc.want)
		}
	}
}

// startServerWith is startPSKServer returning the server, logging to logs.
func startServerWith(t testing.TB, logs *syncBuf, cfg *tls.Config, keys tlspsk.Keys, exports ...Export) (*Server, string) {
	t.Helper()
	srv := NewServer(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	srv.HandshakeTimeout = 5 * time.Second
	srv.TLSConfig, srv.PSKKeys, srv.TLSPolicy = cfg, keys, TLSAllowed
	return srv, serveUnix(t, srv, exports...)
}
