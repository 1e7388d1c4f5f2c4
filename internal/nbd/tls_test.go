package nbd

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/nbd/tlstest"
	"github.com/hacs/hacs/internal/testlog"
)

// testPKI is a CA with a server and a client certificate, and the
// matching configurations.
type testPKI struct {
	ca     *tlstest.CA
	server tls.Certificate
	client tls.Certificate
	pool   *x509.CertPool
}

func newTestPKI(t testing.TB, name string) *testPKI {
	t.Helper()
	ca, err := tlstest.NewCA(name)
	mustOK(t, err)
	p := &testPKI{ca: ca, pool: x509.NewCertPool()}
	p.pool.AddCert(ca.Cert)
	p.server = p.issue(t, "server", tlstest.Options{})
	p.client = p.issue(t, "client", tlstest.Options{Client: true})
	return p
}

func (p *testPKI) issue(t testing.TB, name string, o tlstest.Options) tls.Certificate {
	t.Helper()
	pair, err := p.ca.Issue(name, o)
	mustOK(t, err)
	c, err := tls.X509KeyPair(pair.CertPEM, pair.KeyPEM)
	mustOK(t, err)
	return c
}

func (p *testPKI) serverConfig(mtls bool) *tls.Config {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{p.server}}
	if mtls {
		cfg.ClientCAs, cfg.ClientAuth = p.pool, tls.RequireAndVerifyClientCert
	}
	return cfg
}

func (p *testPKI) clientConfig(withCert bool) *tls.Config {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: p.pool, ServerName: "localhost"}
	if withCert {
		cfg.Certificates = []tls.Certificate{p.client}
	}
	return cfg
}

// withCert makes cfg present cert whatever CAs the server asks for.
func withCert(cfg *tls.Config, cert tls.Certificate) *tls.Config {
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	return cfg
}

// syncBuf is a log sink tests can read while the server writes.
type syncBuf = testlog.Buffer

// startTLSServer serves the exports with TLS on a Unix socket.
func startTLSServer(t testing.TB, cfg *tls.Config, policy TLSPolicy, exports ...Export) (*Server, string, *syncBuf) {
	t.Helper()
	return startLoggedServer(t, func(srv *Server) { srv.TLSConfig, srv.TLSPolicy = cfg, policy }, exports...)
}

func dialErr(sock string, opts ClientOptions) (*Client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return Dial(ctx, "unix", sock, opts)
}

// checkConnected checks what dialErr returned: an error containing
// wantErr or, where wantErr is "", a client over TLS with structured
// replies and block status that writes a block and reads it back.
func checkConnected(t testing.TB, c *Client, err error, wantErr string) {
	t.Helper()
	if wantErr != "" {
		if err == nil {
			c.Close()
			t.Fatalf("connected, want error containing %q", wantErr)
		}
		if !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("error %q, want it to contain %q", err, wantErr)
		}
		return
	}
	mustOK(t, err)
	defer c.Close()
	if !c.Info().TLS || !c.Info().Structured || !c.Info().BlockStatus {
		t.Fatalf("info %+v: want TLS, structured replies and block status", c.Info())
	}
	roundTrip(t, c)
}

// roundTrip writes and reads back a block through c.
func roundTrip(t testing.TB, c *Client) {
	t.Helper()
	want := bytes.Repeat([]byte("tls!"), 2048)
	mustOK(t, c.WriteAt(want, 4096, false))
	got := make([]byte, len(want))
	mustOK(t, c.ReadAt(got, 4096))
	if !bytes.Equal(got, want) {
		t.Fatal("read back different data")
	}
}

func TestTLSClientServer(t *testing.T) {
	p := newTestPKI(t, "ca")
	other := newTestPKI(t, "other-ca")
	cases := []struct {
		name    string
		server  *tls.Config
		policy  TLSPolicy
		client  *tls.Config
		wantErr string // "" = connects over TLS
	}{
		{"allowed", p.serverConfig(false), TLSAllowed, p.clientConfig(false), ""},
		{"default policy with config", p.serverConfig(false), TLSDefault, p.clientConfig(false), ""},
		{"required", p.serverConfig(false), TLSRequired, p.clientConfig(false), ""},
		{"mtls", p.serverConfig(true), TLSRequired, p.clientConfig(true), ""},
		{"mtls without client cert", p.serverConfig(true), TLSRequired, p.clientConfig(false), "tls: certificate required"},
		{"mtls with other CA's client cert", p.serverConfig(true), TLSRequired, withCert(p.clientConfig(false), other.client), "tls: "},
		{"server cert from other CA", other.serverConfig(false), TLSRequired, p.clientConfig(false), "certificate signed by unknown authority"},
		{"server off", nil, TLSDefault, p.clientConfig(false), "server refused TLS"},
		{"server policy off", p.serverConfig(false), TLSOff, p.clientConfig(false), "refused by policy"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, sock, _ := startTLSServer(t, tc.server, tc.policy, memExport("vol", 1<<20))
			c, err := dialErr(sock, ClientOptions{Export: "vol", TLS: tc.client})
			checkConnected(t, c, err, tc.wantErr)
		})
	}
}

func TestTLSExpiredCertificates(t *testing.T) {
	p := newTestPKI(t, "ca")
	expired := p.issue(t, "old", tlstest.Options{Expired: true})
	expiredClient := p.issue(t, "oldclient", tlstest.Options{Client: true, Expired: true})

	scfg := p.serverConfig(false)
	scfg.Certificates = []tls.Certificate{expired}
	_, sock, _ := startTLSServer(t, scfg, TLSRequired, memExport("vol", 1<<20))
	if _, err := dialErr(sock, ClientOptions{Export: "vol", TLS: p.clientConfig(false)}); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired server certificate: err %v, want a certificate-expired error", err)
	}

	_, sock, logs := startTLSServer(t, p.serverConfig(true), TLSRequired, memExport("vol", 1<<20))
	ccfg := p.clientConfig(false)
	ccfg.Certificates = []tls.Certificate{expiredClient}
	if c, err := dialErr(sock, ClientOptions{Export: "vol", TLS: ccfg}); err == nil {
		// TLS 1.3: the client learns of the refusal at its first read.
		err = c.ReadAt(make([]byte, 512), 0)
		c.Close()
		if err == nil {
			t.Fatal("expired client certificate accepted")
		}
	}
	waitLog(t, logs, "expired")
}

func waitLog(t testing.TB, logs *syncBuf, want string) {
	t.Helper()
	for i := 0; i < 100; i++ {
		if strings.Contains(logs.String(), want) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("server log lacks %q:\n%s", want, logs.String())
}

func TestTLSRequiredRefusesPlaintext(t *testing.T) {
	p := newTestPKI(t, "ca")
	_, sock, logs := startTLSServer(t, p.serverConfig(false), TLSRequired, memExport("vol", 1<<20))

	// Our own client, plaintext: the TLS-required error.
	_, err := dialErr(sock, ClientOptions{Export: "vol"})
	if err == nil || !strings.Contains(err.Error(), "TLS required") {
		t.Fatalf("plaintext client: err %v, want TLS required", err)
	}

	// Every option but STARTTLS and ABORT: NBD_REP_ERR_TLS_REQD.
	r := dialRaw(t, sock)
	r.greet(clientFixedNewstyle | clientNoZeroes)
	for _, o := range []struct {
		opt  uint32
		data []byte
	}{{optList, nil}, {optStructuredReply, nil}, {optInfo, goData("vol")}, {optGo, goData("vol")}, {optListMetaContext, metaData("vol")}} {
		r.opt(o.opt, o.data)
		if typ, msg := r.optReply(o.opt); typ != repErrTLSReqd {
			t.Fatalf("%s before TLS: reply %#x %q, want NBD_REP_ERR_TLS_REQD", optName(o.opt), typ, msg)
		}
	}
	// The connection is still usable: upgrade and go.
	r.opt(optStartTLS, nil)
	if typ, _ := r.optReply(optStartTLS); typ != repAck {
		t.Fatalf("STARTTLS: %#x", typ)
	}
	tc := tls.Client(r.nc, p.clientConfig(false))
	mustOK(t, tc.Handshake())
	r.nc = tc
	r.opt(optStartTLS, nil)
	if typ, _ := r.optReply(optStartTLS); typ != repErrInvalid {
		t.Fatalf("second STARTTLS: %#x, want NBD_REP_ERR_INVALID", typ)
	}
	r.opt(optGo, goData("vol"))
	if typ := r.finalReply(optGo); typ != repAck {
		t.Fatalf("GO over TLS: %#x", typ)
	}

	// EXPORT_NAME before TLS cannot be refused: the server hangs up.
	r2 := dialRaw(t, sock)
	r2.greet(clientFixedNewstyle)
	r2.opt(optExportName, []byte("vol"))
	r2.expectClosed()
	waitLog(t, logs, "asked for an export without TLS")
}

func TestTLSSelectivePerExport(t *testing.T) {
	p := newTestPKI(t, "ca")
	secret := memExport("secret", 1<<20)
	secret.TLS = TLSRequired
	_, sock, _ := startTLSServer(t, p.serverConfig(false), TLSAllowed, memExport("open", 1<<20), secret)

	roundTrip(t, dialT(t, sock, ClientOptions{Export: "open"}))
	roundTrip(t, dialT(t, sock, ClientOptions{Export: "open", TLS: p.clientConfig(false)}))
	roundTrip(t, dialT(t, sock, ClientOptions{Export: "secret", TLS: p.clientConfig(false)}))
	if _, err := dialErr(sock, ClientOptions{Export: "secret"}); err == nil || !strings.Contains(err.Error(), "TLS required") {
		t.Fatalf("plaintext to TLS-only export: %v, want TLS required", err)
	}

	// LIST hides TLS-only exports from plaintext clients.
	r := dialRaw(t, sock)
	r.greet(clientFixedNewstyle | clientNoZeroes)
	r.opt(optList, nil)
	var names []string
	for {
		typ, data := r.optReply(optList)
		if typ != repServer {
			break
		}
		n := binary.BigEndian.Uint32(data)
		names = append(names, string(data[4:4+n]))
	}
	if len(names) != 1 || names[0] != "open" {
		t.Fatalf("plaintext LIST: %q, want only open", names)
	}
	r.opt(optInfo, goData("secret"))
	if typ := r.finalReply(optInfo); typ != repErrTLSReqd {
		t.Fatalf("INFO on TLS-only export: %#x", typ)
	}
	r.opt(optExportName, []byte("secret"))
	r.expectClosed()

	// A TLS-only export on a server without TLS: refused by policy (a
	// NOTLS server never answers TLS_REQD).
	e := memExport("secret", 1<<20)
	e.TLS = TLSRequired
	_, sock2 := startServer(t, e)
	if _, err := dialErr(sock2, ClientOptions{Export: "secret"}); err == nil || !strings.Contains(err.Error(), "refused by policy") {
		t.Fatalf("TLS-only export on a NOTLS server: %v", err)
	}
}

// Bad input around STARTTLS ends only that connection, with a log line;
// a client in transmission meanwhile keeps working.
func TestTLSBadInputDoesNotDisturbOthers(t *testing.T) {
	p := newTestPKI(t, "ca")
	other := newTestPKI(t, "other")
	_, sock, logs := startTLSServer(t, p.serverConfig(true), TLSAllowed, memExport("vol", 1<<20))
	good := dialT(t, sock, ClientOptions{Export: "vol", TLS: p.clientConfig(true)})
	roundTrip(t, good)

	starttls := func() *raw {
		r := dialRaw(t, sock)
		r.greet(clientFixedNewstyle | clientNoZeroes)
		r.opt(optStartTLS, nil)
		if typ, _ := r.optReply(optStartTLS); typ != repAck {
			t.Fatalf("STARTTLS: %#x", typ)
		}
		return r
	}
	// Plaintext garbage where the TLS hello should be.
	r := starttls()
	r.write([]byte("GET / HTTP/1.0\r\n\r\n"))
	r.expectClosed()
	roundTrip(t, good)
	// Garbage inside TLS after a good handshake.
	r = starttls()
	tc := tls.Client(r.nc, p.clientConfig(true))
	mustOK(t, tc.Handshake())
	tc.Write(bytes.Repeat([]byte{0xde, 0xad}, 100))
	tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(tc); err != nil && isTimeout(err) {
		t.Fatal("server did not close after garbage inside TLS")
	}
	roundTrip(t, good)
	// A client certificate from another CA.
	if c, err := dialErr(sock, ClientOptions{Export: "vol", TLS: withCert(p.clientConfig(false), other.client)}); err == nil {
		c.Close()
		t.Fatal("client certificate from another CA accepted")
	}
	// Options pipelined after STARTTLS, before its answer.
	r = dialRaw(t, sock)
	r.greet(clientFixedNewstyle | clientNoZeroes)
	var b bytes.Buffer
	for _, o := range [][]byte{nil, nil} {
		b.Write(optBytes(optStartTLS, o))
	}
	r.write(b.Bytes())
	r.expectClosed()
	// A client that stops in the middle of the TLS handshake.
	r = starttls()
	r.write([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01})
	r.nc.Close()
	roundTrip(t, good)
	waitLog(t, logs, "nbd TLS handshake failed")
	waitLog(t, logs, "bad option magic")
	waitLog(t, logs, "certificate signed by unknown authority")
}

func TestTLSFilesConfigs(t *testing.T) {
	p := newTestPKI(t, "ca")
	dir := t.TempDir()
	spair, err := p.ca.Issue("server", tlstest.Options{})
	mustOK(t, err)
	cpair, err := p.ca.Issue("client", tlstest.Options{Client: true})
	mustOK(t, err)
	mustOK(t, tlstest.WriteDir(dir, p.ca.CertPEM, "server", spair))
	mustOK(t, tlstest.WriteDir(dir, nil, "client", cpair))
	sf, cf := TLSFilesFromDir(dir, false), TLSFilesFromDir(dir, true)
	if sf.CA == "" || sf.Cert == "" || sf.Key == "" || cf.Cert == "" || !strings.HasSuffix(cf.Key, "client-key.pem") {
		t.Fatalf("files from dir: %+v %+v", sf, cf)
	}
	scfg, err := sf.ServerConfig(true)
	mustOK(t, err)
	ccfg, err := cf.ClientConfig("localhost")
	mustOK(t, err)
	_, sock, _ := startTLSServer(t, scfg, TLSRequired, memExport("vol", 1<<20))
	roundTrip(t, dialT(t, sock, ClientOptions{Export: "vol", TLS: ccfg}))

	if _, err := (TLSFiles{CA: sf.CA}).ServerConfig(false); err == nil {
		t.Fatal("server config without certificate accepted")
	}
	if _, err := (TLSFiles{Cert: sf.Cert, Key: sf.Key}).ServerConfig(true); err == nil {
		t.Fatal("peer verification without CA accepted")
	}
	for _, s := range []string{"off", "allowed", "on", "required", "require", ""} {
		if _, err := ParseTLSPolicy(s); err != nil {
			t.Fatalf("ParseTLSPolicy(%q): %v", s, err)
		}
	}
	if _, err := ParseTLSPolicy("maybe"); err == nil {
		t.Fatal("ParseTLSPolicy accepted maybe")
	}
	srv := NewServer(nil)
	srv.TLSPolicy = TLSRequired
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	mustOK(t, err)
	defer ln.Close()
	if err := srv.Serve(ln); err == nil {
		t.Fatal("TLS required without a configuration served")
	}
}

// TestTLSCutPeers: CutPeers closes exactly the connections whose client
// certificate matches, in transmission and in negotiation; the others keep
// serving.
func TestTLSCutPeers(t *testing.T) {
	p := newTestPKI(t, "ca")
	other := p.issue(t, "other-client", tlstest.Options{Client: true})
	srv, sock, logs := startTLSServer(t, p.serverConfig(true), TLSRequired, memExport("vol", 1<<20))
	victim, err := dialErr(sock, ClientOptions{Export: "vol", TLS: p.clientConfig(true)})
	mustOK(t, err)
	defer victim.Close()
	keeper, err := dialErr(sock, ClientOptions{Export: "vol", TLS: withCert(p.clientConfig(false), other)})
	mustOK(t, err)
	defer keeper.Close()
	roundTrip(t, victim)
	roundTrip(t, keeper)
	serial := p.client.Leaf
	if serial == nil {
		l, err := x509.ParseCertificate(p.client.Certificate[0])
		mustOK(t, err)
		serial = l
	}
	n := srv.CutPeers(func(c *x509.Certificate) bool { return c.SerialNumber.Cmp(serial.SerialNumber) == 0 }, "certificate revoked")
	if n != 1 {
		t.Fatalf("CutPeers closed %d connections, want 1", n)
	}
	buf := make([]byte, 4096)
	if err := victim.ReadAt(buf, 0); err == nil {
		t.Fatal("the cut connection still serves reads")
	}
	roundTrip(t, keeper)
	if !strings.Contains(logs.String(), "nbd connection cut: certificate revoked") {
		t.Fatalf("no log line for the cut connection:\n%s", logs.String())
	}
	if n := srv.CutPeers(func(*x509.Certificate) bool { return false }, "x"); n != 0 {
		t.Fatalf("CutPeers with no match closed %d", n)
	}
}
