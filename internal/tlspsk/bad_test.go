package tlspsk

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

func wantAlert(t *testing.T, side string, err error, alert uint8, received bool, text string) {
	t.Helper()
	var ae *AlertError
	if !errors.As(err, &ae) || ae.Alert != alert || ae.Received != received || !strings.Contains(err.Error(), text) {
		t.Fatalf("%s error %v; want alert %s (received %v) containing %q", side, err, AlertName(alert), received, text)
	}
}

func TestRefusals(t *testing.T) {
	for _, tc := range []struct {
		name   string
		client Config
		server Config
		sAlert uint8
		sText  string
		cAlert uint8
		cText  string
	}{
		{"wrong-key", Config{Keys: Keys{"alice": []byte("not alice's key!")}, Identity: "alice"}, Config{Keys: testKeys},
			alertDecryptError, `PSK binder mismatch: wrong key for identity "alice"`,
			alertDecryptError, `the server refused the PSK for identity "alice" (wrong key`},
		{"unknown-identity", Config{Keys: Keys{"carol": []byte("k")}, Identity: "carol"}, Config{Keys: testKeys},
			alertUnknownPSKIdentity, `unknown PSK identity "carol"`,
			alertUnknownPSKIdentity, `the server does not know PSK identity "carol"`},
		{"sha384-psk-vs-sha256-server", Config{Keys: testKeys, Identity: "alice", CipherSuites: []uint16{TLS_AES_256_GCM_SHA384}}, Config{Keys: testKeys, CipherSuites: []uint16{TLS_AES_128_GCM_SHA256}},
			alertHandshakeFailure, "no TLS 1.3 cipher suite in common with the client for a SHA-384 PSK",
			alertHandshakeFailure, "peer sent alert handshake_failure"},
		{"no-common-group", Config{Keys: testKeys, Identity: "alice", Groups: []uint16{GroupSecp384r1}}, Config{Keys: testKeys, Groups: []uint16{GroupX25519}},
			alertHandshakeFailure, "no key exchange group in common",
			alertHandshakeFailure, "peer sent alert handshake_failure"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, cerr, serr := handshakePair(t, &tc.client, &tc.server)
			wantAlert(t, "server", serr, tc.sAlert, false, tc.sText)
			wantAlert(t, "client", cerr, tc.cAlert, true, tc.cText)
		})
	}
}

// serverResult runs a server handshake on one end of a pipe while fn plays
// the client on the other, and returns the server's error.
func serverResult(t *testing.T, fn func(net.Conn)) error {
	t.Helper()
	a, b := pipe(t)
	sv := Server(b, nil, &Config{Keys: testKeys, HandshakeTimeout: 5 * time.Second})
	done := make(chan error, 1)
	go func() { done <- sv.Handshake(); b.Close() }()
	fn(a)
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("server handshake hangs")
		return nil
	}
}

func TestServerBadInput(t *testing.T) {
	// a valid ClientHello from our own client, to cut and bend
	p := &clientHelloParams{random: make([]byte, 32), sessionID: make([]byte, 32), suites: []uint16{0x1301}, groups: []uint16{GroupX25519}, shareID: GroupX25519, identity: "alice"}
	p.share, _ = generateKey(GroupX25519, bytes.NewReader(make([]byte, 64)))
	ch, _ := buildClientHello(p, 32)
	hello := append([]byte{22, 3, 1, byte(len(ch) >> 8), byte(len(ch))}, ch...)

	for _, tc := range []struct {
		name  string
		input []byte
		text  string
	}{
		{"plaintext-nbd", []byte("NBDMAGIC\x00\x00\x42\x02\x81\x86\x12\x53"), "not a TLS record (content type 78)"},
		{"http", []byte("GET / HTTP/1.1\r\n\r\n"), "not a TLS record"},
		{"truncated-hello", hello[:100], "connection closed by the peer while waiting for ClientHello"},
		{"truncated-header", hello[:3], "connection closed by the peer while waiting for ClientHello"},
		{"empty", nil, "connection closed by the peer while waiting for ClientHello"},
		{"bad-binder-bytes", hello, `PSK binder mismatch`},
		{"garbage-in-hello", append(append([]byte{}, hello[:60]...), bytes.Repeat([]byte{0xff}, len(hello)-60)...), "malformed"},
		{"app-data-first", []byte{23, 3, 3, 0, 5, 1, 2, 3, 4, 5}, "application data before the handshake finished"},
		{"oversized-record", []byte{22, 3, 1, 0x50, 0}, "too long"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := serverResult(t, func(c net.Conn) {
				c.Write(tc.input)
				c.(*net.TCPConn).CloseWrite()
				io.Copy(io.Discard, c)
			})
			if err == nil || !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("server error %v, want %q", err, tc.text)
			}
		})
	}
}

// Real TLS clients that cannot do PSK: crypto/tls limited to TLS 1.2, and a
// TLS 1.3 certificate client.
func TestRefuseCertificateClients(t *testing.T) {
	for _, tc := range []struct {
		name   string
		max    uint16
		sAlert uint8
		sText  string
		cText  string
	}{
		{"tls12-only", tls.VersionTLS12, alertProtocolVersion, "client does not offer TLS 1.3", "protocol version not supported"},
		{"tls13-x509", tls.VersionTLS13, alertHandshakeFailure, "client offers no PSK", "handshake failure"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cerr error
			serr := serverResult(t, func(c net.Conn) {
				cerr = tls.Client(c, &tls.Config{InsecureSkipVerify: true, MaxVersion: tc.max}).Handshake()
			})
			wantAlert(t, "server", serr, tc.sAlert, false, tc.sText)
			if cerr == nil || !strings.Contains(cerr.Error(), tc.cText) {
				t.Fatalf("crypto/tls client error %v, want %q", cerr, tc.cText)
			}
		})
	}
}

// A client against a server that does not speak TLS.
func TestClientBadServer(t *testing.T) {
	a, b := pipe(t)
	go func() {
		buf := make([]byte, 1024)
		b.Read(buf)
		b.Write([]byte("NBDMAGIC\x00\x00\x42\x02\x81\x86\x12\x53\x00\x03"))
		b.Close()
	}()
	err := Client(a, &Config{Keys: testKeys, Identity: "alice"}).Handshake()
	if err == nil || !strings.Contains(err.Error(), "not a TLS record") {
		t.Fatalf("client error %v", err)
	}
	_, err = Client(a, &Config{Keys: testKeys, Identity: "nobody"}).Write([]byte("x"))
	if err == nil || !strings.Contains(err.Error(), `no key for identity "nobody"`) {
		t.Fatalf("client error %v", err)
	}
}

// flipConn flips a bit of the next write when armed.
type flipConn struct {
	net.Conn
	arm bool
}

func (f *flipConn) Write(b []byte) (int, error) {
	if f.arm && len(b) > 10 {
		f.arm = false
		c := append([]byte{}, b...)
		c[len(c)-3] ^= 1
		return f.Conn.Write(c)
	}
	return f.Conn.Write(b)
}

func TestTamperedRecord(t *testing.T) {
	a, b := pipe(t)
	fc := &flipConn{Conn: a}
	cl := Client(fc, &Config{Keys: testKeys, Identity: "alice"})
	sv := Server(b, nil, &Config{Keys: testKeys})
	go sv.Handshake()
	if err := cl.Handshake(); err != nil {
		t.Fatal(err)
	}
	fc.arm = true
	cl.Write([]byte("hello, tampered"))
	_, err := sv.Read(make([]byte, 100))
	wantAlert(t, "server", err, alertBadRecordMAC, false, "decryption failed")
	_, err = cl.Read(make([]byte, 100))
	wantAlert(t, "client", err, alertBadRecordMAC, true, "peer sent alert bad_record_mac")
}
