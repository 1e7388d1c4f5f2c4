package tlspsk

// Interoperability with the TLS stacks NBD peers use: GnuTLS 3.7 (nbdkit,
// qemu, libnbd on Debian 12) and OpenSSL 3. scripts/install-deps.sh installs
// gnutls-bin and openssl; a missing tool fails the test.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/testnet"
)

func needTool(t *testing.T, tool, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		t.Fatalf("%s not found (Debian package %s): run scripts/install-deps.sh", tool, pkg)
	}
	return p
}

// Priority strings: what nbdkit, qemu and libnbd use for PSK (NORMAL plus
// the PSK key exchanges), and the same limited to TLS 1.3.
const (
	gnutlsPSKPriority   = "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK"
	gnutlsPSK13Priority = "NORMAL:-VERS-ALL:+VERS-TLS1.3:+ECDHE-PSK:+DHE-PSK:+PSK"
)

var interopKey = bytes.Repeat([]byte{0x5a, 0xc3, 0x01, 0x7e}, 8)

// peerProc is a running peer program with its output captured.
type peerProc struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	mu      sync.Mutex
	out     bytes.Buffer // stdout and stderr
	done    chan struct{}
	waitErr error
}

type lockedWriter struct{ p *peerProc }

func (w lockedWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	return w.p.out.Write(b)
}

func startPeer(t *testing.T, name string, args ...string) *peerProc {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	p := &peerProc{cmd: exec.CommandContext(ctx, name, args...), done: make(chan struct{})}
	p.cmd.Stdout = lockedWriter{p}
	p.cmd.Stderr = lockedWriter{p}
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.waitErr = p.cmd.Wait(); cancel(); close(p.done) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("%s output:\n%s", filepath.Base(name), p.output())
		}
	})
	return p
}

func (p *peerProc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// waitOutput waits until the peer printed s.
func (p *peerProc) waitOutput(t *testing.T, s string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(p.output(), s) {
		select {
		case <-p.done:
			if strings.Contains(p.output(), s) {
				return
			}
			t.Fatalf("peer exited (%v) before printing %q", p.waitErr, s)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("peer did not print %q in 20s", s)
		}
	}
}

func (p *peerProc) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-p.done:
		return p.waitErr
	case <-time.After(20 * time.Second):
		t.Fatal("peer did not exit in 20s")
		return nil
	}
}

// goServer accepts one connection on a fresh port and runs fn on it.
func goServer(t *testing.T, cfg *Config, fn func(*Conn) error) (port string, result chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	result = make(chan error, 1)
	go func() {
		defer ln.Close()
		c, err := ln.Accept()
		if err != nil {
			result <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		tc := Server(c, nil, cfg)
		if err := tc.Handshake(); err != nil {
			result <- err
			return
		}
		result <- fn(tc)
	}()
	_, port, _ = net.SplitHostPort(ln.Addr().String())
	return port, result
}

func getResult(t *testing.T, ch chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("Go server did not finish in 30s")
		return nil
	}
}

// pingPong is the Go server's side of the exchange with a command-line
// client: read the client's line, answer, then expect close_notify.
func pingPong(want, reply string) func(*Conn) error {
	return func(c *Conn) error {
		got := make([]byte, len(want))
		if _, err := io.ReadFull(c, got); err != nil {
			return fmt.Errorf("reading client data: %w", err)
		}
		if string(got) != want {
			return fmt.Errorf("client sent %q, want %q", got, want)
		}
		if _, err := c.Write([]byte(reply)); err != nil {
			return err
		}
		rest, err := io.ReadAll(c)
		if err != nil {
			return fmt.Errorf("waiting for close_notify: %w", err)
		}
		if len(rest) != 0 {
			return fmt.Errorf("unexpected data %q", rest)
		}
		return nil
	}
}

func TestInteropGnuTLSClient(t *testing.T) {
	cli := needTool(t, "gnutls-cli", "gnutls-bin")
	for _, tc := range []struct{ name, priority string }{
		{"nbd-priority", gnutlsPSKPriority},
		{"tls13-only", gnutlsPSK13Priority},
		{"chacha20", gnutlsPSK13Priority + ":-CIPHER-ALL:+CHACHA20-POLY1305"},
		{"secp384r1-hrr", gnutlsPSK13Priority + ":-GROUP-ALL:+GROUP-SECP384R1:+GROUP-X25519:+GROUP-SECP256R1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			scfg := &Config{Keys: Keys{"alice": interopKey}}
			if tc.name == "secp384r1-hrr" {
				scfg.Groups = []uint16{GroupSecp256r1} // GnuTLS sends secp384r1 and x25519 shares: HelloRetryRequest
			}
			// the client sends a KeyUpdate (^rekey^ asks ours to update too) between its lines
			want := "hello from gnutls\nsecond line\n"
			pp := pingPong(want, "hello from go\n")
			port, res := goServer(t, scfg, func(c *Conn) error {
				if c.didHRR != (tc.name == "secp384r1-hrr") {
					return fmt.Errorf("HelloRetryRequest sent: %v", c.didHRR)
				}
				// GnuTLS lists ChaCha20 first; the server prefers AES-GCM on AES hardware
				if tc.name == "nbd-priority" && hasAESHardware && c.CipherSuite() != "TLS_AES_128_GCM_SHA256" {
					return fmt.Errorf("suite %s, want TLS_AES_128_GCM_SHA256 on a CPU with AES instructions", c.CipherSuite())
				}
				if err := pp(c); err != nil {
					return err
				}
				if c.peerKeyUpdates != 1 {
					return fmt.Errorf("%d KeyUpdates received from gnutls-cli's ^rekey^, want 1", c.peerKeyUpdates)
				}
				return nil
			})
			p := startPeer(t, cli, "-p", port, "--pskusername", "alice", "--pskkey", hex.EncodeToString(interopKey),
				"--priority", tc.priority, "--inline-commands", "127.0.0.1")
			io.WriteString(p.stdin, "hello from gnutls\n")
			io.WriteString(p.stdin, "^rekey^\n")
			io.WriteString(p.stdin, "second line\n")
			p.waitOutput(t, "hello from go")
			p.stdin.Close()
			if err := getResult(t, res); err != nil {
				t.Fatalf("Go server: %v", err)
			}
			p.wait(t)
		})
	}
}

// gnutls-cli with a psk_ke-only priority (no (EC)DHE): refused, clearly.
func TestInteropGnuTLSClientPSKOnlyRefused(t *testing.T) {
	cli := needTool(t, "gnutls-cli", "gnutls-bin")
	port, res := goServer(t, &Config{Keys: Keys{"alice": interopKey}}, pingPong("x", "y"))
	p := startPeer(t, cli, "-p", port, "--pskusername", "alice", "--pskkey", hex.EncodeToString(interopKey),
		"--priority", "NORMAL:-VERS-ALL:+VERS-TLS1.3:-KX-ALL:+PSK", "127.0.0.1")
	err := getResult(t, res)
	var ae *AlertError
	if !errors.As(err, &ae) || ae.Alert != alertHandshakeFailure || !strings.Contains(err.Error(), "only psk_ke") {
		t.Fatalf("server error %v, want handshake_failure for psk_ke only", err)
	}
	p.stdin.Close()
	if p.wait(t) == nil {
		t.Fatal("gnutls-cli succeeded")
	}
	if out := p.output(); !strings.Contains(out, "Handshake failed") {
		t.Fatalf("gnutls-cli output lacks the failure:\n%s", out)
	}
}

func TestInteropGnuTLSClientWrongKey(t *testing.T) {
	cli := needTool(t, "gnutls-cli", "gnutls-bin")
	for _, tc := range []struct {
		name, user, key, serverErr string
		alert                      uint8
		cliErr                     string
	}{
		{"wrong-key", "alice", strings.Repeat("ab", 32), `PSK binder mismatch: wrong key for identity "alice"`, alertDecryptError, "Received alert [51]: Decrypt error"},
		{"unknown-identity", "mallory", hex.EncodeToString(interopKey), `unknown PSK identity "mallory"`, alertUnknownPSKIdentity, "Received alert [115]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port, res := goServer(t, &Config{Keys: Keys{"alice": interopKey}}, pingPong("x", "y"))
			p := startPeer(t, cli, "-p", port, "--pskusername", tc.user, "--pskkey", tc.key, "--priority", gnutlsPSKPriority, "127.0.0.1")
			err := getResult(t, res)
			var ae *AlertError
			if !errors.As(err, &ae) || ae.Alert != tc.alert || !strings.Contains(err.Error(), tc.serverErr) {
				t.Fatalf("server error %v, want alert %s with %q", err, AlertName(tc.alert), tc.serverErr)
			}
			p.stdin.Close()
			if p.wait(t) == nil {
				t.Fatal("gnutls-cli succeeded")
			}
			if out := p.output(); !strings.Contains(out, tc.cliErr) {
				t.Fatalf("gnutls-cli output lacks %q:\n%s", tc.cliErr, out)
			}
		})
	}
}

// dialRetry connects to a server program that is starting.
func dialRetry(t *testing.T, p *peerProc, port string) net.Conn {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.Dial("tcp", "127.0.0.1:"+port)
		if err == nil {
			c.SetDeadline(time.Now().Add(30 * time.Second))
			return c
		}
		select {
		case <-p.done:
			t.Fatalf("server exited: %v", p.waitErr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("server not listening on %s: %v", port, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func writePSKFile(t *testing.T, user string, key []byte) string {
	path := filepath.Join(t.TempDir(), "keys.psk")
	if err := os.WriteFile(path, []byte(user+":"+hex.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// echoLines sends lines through an echo server and checks what comes back
// (transform: what the server does to a line).
func echoLines(t *testing.T, c *Conn, n int, transform func(string) string) {
	t.Helper()
	var lines []string
	for i := 0; i < n; i++ {
		lines = append(lines, fmt.Sprintf("line %d %s", i, strings.Repeat(string(rune('a'+i%26)), 100+i%500)))
	}
	errc := make(chan error, 1)
	go func() {
		w := bufio.NewWriter(c)
		for _, l := range lines {
			w.WriteString(l + "\n")
		}
		errc <- w.Flush()
	}()
	r := bufio.NewReader(c)
	for i, l := range lines {
		got, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("line %d: %v", i, err)
		}
		if strings.TrimRight(got, "\r\n") != transform(l) {
			t.Fatalf("line %d: got %.40q, want %.40q", i, got, transform(l))
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func TestInteropGnuTLSServer(t *testing.T) {
	serv := needTool(t, "gnutls-serv", "gnutls-bin")
	keyFile := writePSKFile(t, "alice", interopKey)
	for _, tc := range []struct {
		name     string
		priority string
		cfg      Config
	}{
		{"nbd-priority", gnutlsPSKPriority, Config{}},
		{"chacha20", gnutlsPSK13Priority, Config{CipherSuites: []uint16{TLS_CHACHA20_POLY1305_SHA256}}},
		{"p256", gnutlsPSK13Priority, Config{Groups: []uint16{GroupSecp256r1}}},
		{"hrr", gnutlsPSK13Priority + ":-GROUP-ALL:+GROUP-SECP384R1", Config{Groups: []uint16{GroupX25519, GroupSecp384r1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port := strconv.Itoa(testnet.FreePort(t))
			p := startPeer(t, serv, "--echo", "--pskpasswd", keyFile, "--priority", tc.priority, "-p", port, "--nodb", "-a")
			raw := dialRetry(t, p, port)
			defer raw.Close()
			cfg := tc.cfg
			cfg.Keys, cfg.Identity = Keys{"alice": interopKey}, "alice"
			c := Client(raw, &cfg)
			if err := c.Handshake(); err != nil {
				t.Fatalf("handshake with gnutls-serv: %v", err)
			}
			if c.didHRR != (tc.name == "hrr") {
				t.Fatalf("HelloRetryRequest received: %v", c.didHRR)
			}
			echoLines(t, c, 300, func(s string) string { return s })
			if err := c.keyUpdate(true); err != nil {
				t.Fatal(err)
			}
			echoLines(t, c, 20, func(s string) string { return s })
			c.Close()
		})
	}
}

// GnuTLS ties an external PSK to SHA-256: a client that only offers
// TLS_AES_256_GCM_SHA384 cannot use it; the refusal says so.
func TestInteropGnuTLSClientSHA384Refused(t *testing.T) {
	cli := needTool(t, "gnutls-cli", "gnutls-bin")
	port, res := goServer(t, &Config{Keys: Keys{"alice": interopKey}}, pingPong("x", "y"))
	p := startPeer(t, cli, "-p", port, "--pskusername", "alice", "--pskkey", hex.EncodeToString(interopKey),
		"--priority", gnutlsPSK13Priority+":-CIPHER-ALL:+AES-256-GCM", "127.0.0.1")
	err := getResult(t, res)
	if err == nil || !strings.Contains(err.Error(), "no TLS 1.3 cipher suite in common with the client for a SHA-256 PSK (client offers TLS_AES_256_GCM_SHA384)") {
		t.Fatalf("server error %v", err)
	}
	p.stdin.Close()
	p.wait(t)
}

func TestInteropGnuTLSServerWrongKey(t *testing.T) {
	serv := needTool(t, "gnutls-serv", "gnutls-bin")
	keyFile := writePSKFile(t, "alice", interopKey)
	port := strconv.Itoa(testnet.FreePort(t))
	p := startPeer(t, serv, "--echo", "--pskpasswd", keyFile, "--priority", gnutlsPSKPriority, "-p", port, "--nodb", "-a")
	for _, tc := range []struct {
		name, user string
		key        []byte
		alert      uint8
	}{
		// GnuTLS answers a bad binder with illegal_parameter, and hides
		// unknown identities behind a random key (so: a bad binder too)
		{"wrong-key", "alice", bytes.Repeat([]byte{1}, 32), alertIllegalParameter},
		{"unknown-identity", "mallory", interopKey, alertIllegalParameter},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := dialRetry(t, p, port)
			defer raw.Close()
			c := Client(raw, &Config{Keys: Keys{tc.user: tc.key}, Identity: tc.user})
			err := c.Handshake()
			var ae *AlertError
			if !errors.As(err, &ae) || !ae.Received || ae.Alert != tc.alert || !strings.Contains(err.Error(), "the server refused the PSK for identity") {
				t.Fatalf("handshake error %v, want received %s", err, AlertName(tc.alert))
			}
		})
	}
}

func TestInteropOpenSSLClient(t *testing.T) {
	ossl := needTool(t, "openssl", "openssl")
	for _, tc := range []struct{ name, suites, groups string }{
		{"aes128", "TLS_AES_128_GCM_SHA256", "X25519:P-256"},
		{"chacha20", "TLS_CHACHA20_POLY1305_SHA256", "P-384"},
		// OpenSSL's key share is for X448, which we lack: HelloRetryRequest
		{"hrr", "TLS_AES_128_GCM_SHA256", "X448:P-256"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pp := pingPong("hello from openssl\n", "hello from go\n")
			port, res := goServer(t, &Config{Keys: Keys{"alice": interopKey}}, func(c *Conn) error {
				if c.didHRR != (tc.name == "hrr") {
					return fmt.Errorf("HelloRetryRequest sent: %v", c.didHRR)
				}
				return pp(c)
			})
			p := startPeer(t, ossl, "s_client", "-connect", "127.0.0.1:"+port, "-psk", hex.EncodeToString(interopKey),
				"-psk_identity", "alice", "-tls1_3", "-ciphersuites", tc.suites, "-groups", tc.groups)
			io.WriteString(p.stdin, "hello from openssl\n")
			p.waitOutput(t, "hello from go")
			p.stdin.Close()
			if err := getResult(t, res); err != nil {
				t.Fatalf("Go server: %v", err)
			}
			p.wait(t)
		})
	}
	t.Run("wrong-key", func(t *testing.T) {
		port, res := goServer(t, &Config{Keys: Keys{"alice": interopKey}}, pingPong("x", "y"))
		p := startPeer(t, ossl, "s_client", "-connect", "127.0.0.1:"+port, "-psk", strings.Repeat("cd", 32), "-psk_identity", "alice", "-tls1_3")
		err := getResult(t, res)
		if err == nil || !strings.Contains(err.Error(), `PSK binder mismatch: wrong key for identity "alice"`) {
			t.Fatalf("server error %v", err)
		}
		p.stdin.Close()
		p.wait(t)
		if out := p.output(); !strings.Contains(out, "decrypt error") {
			t.Fatalf("openssl output lacks the alert:\n%s", out)
		}
	})
}

func TestInteropOpenSSLServer(t *testing.T) {
	ossl := needTool(t, "openssl", "openssl")
	port := strconv.Itoa(testnet.FreePort(t))
	p := startPeer(t, ossl, "s_server", "-accept", "127.0.0.1:"+port, "-psk", hex.EncodeToString(interopKey),
		"-psk_identity", "alice", "-nocert", "-tls1_3", "-rev", "-groups", "P-384:X25519")
	rev := func(s string) string {
		b := []byte(s)
		for i, j := 0, len(b)-1; i < j; i, j = i+1, j-1 {
			b[i], b[j] = b[j], b[i]
		}
		return string(b)
	}
	t.Run("data", func(t *testing.T) {
		raw := dialRetry(t, p, port)
		defer raw.Close()
		c := Client(raw, &Config{Keys: Keys{"alice": interopKey}, Identity: "alice"})
		if err := c.Handshake(); err != nil {
			t.Fatalf("handshake with openssl s_server: %v", err)
		}
		echoLines(t, c, 50, rev)
		c.Close()
	})
	t.Run("hrr", func(t *testing.T) {
		raw := dialRetry(t, p, port)
		defer raw.Close()
		// our key share is secp256r1, which the server does not take
		c := Client(raw, &Config{Keys: Keys{"alice": interopKey}, Identity: "alice", Groups: []uint16{GroupSecp256r1, GroupSecp384r1}})
		if err := c.Handshake(); err != nil {
			t.Fatalf("handshake with openssl s_server: %v", err)
		}
		if !c.didHRR {
			t.Fatal("no HelloRetryRequest")
		}
		echoLines(t, c, 5, rev)
		c.Close()
	})
	t.Run("wrong-key", func(t *testing.T) {
		raw := dialRetry(t, p, port)
		defer raw.Close()
		c := Client(raw, &Config{Keys: Keys{"alice": bytes.Repeat([]byte{2}, 32)}, Identity: "alice"})
		err := c.Handshake()
		var ae *AlertError
		// OpenSSL answers a bad binder with illegal_parameter
		if !errors.As(err, &ae) || !ae.Received || ae.Alert != alertIllegalParameter || !strings.Contains(err.Error(), "wrong key, or unknown identity") {
			t.Fatalf("handshake error %v, want received illegal_parameter", err)
		}
	})
}
