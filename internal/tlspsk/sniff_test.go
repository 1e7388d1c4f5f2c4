package tlspsk

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/testnet"
)

// captureHello returns the first flight a client writes.
func captureHello(t testing.TB, client func(net.Conn)) []byte {
	t.Helper()
	a, b := net.Pipe()
	go func() { client(a); a.Close() }()
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	var got []byte
	buf := make([]byte, 65536)
	for {
		n, err := b.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil || len(got) > 5 && len(got) >= 5+int(got[3])<<8|int(got[4]) {
			break
		}
	}
	b.Close()
	return got
}

func pskHello(t testing.TB) []byte {
	return captureHello(t, func(c net.Conn) { Client(c, &Config{Keys: testKeys, Identity: "alice"}).Handshake() })
}

func x509Hello(t testing.TB) []byte {
	return captureHello(t, func(c net.Conn) { tls.Client(c, &tls.Config{ServerName: "x"}).Handshake() })
}

// oneByteReader returns one byte per Read, to check Sniff reads no further
// than the hello's records.
type countingReader struct {
	r    io.Reader
	read int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.read += n
	return n, err
}

func TestSniff(t *testing.T) {
	psk := pskHello(t)
	x509 := x509Hello(t)
	// the same PSK hello split over three records, as a peer may send it
	var split []byte
	body := psk[5:]
	for i, part := range [][]byte{body[:3], body[3:100], body[100:]} {
		_ = i
		split = append(split, 22, 3, 1, byte(len(part)>>8), byte(len(part)))
		split = append(split, part...)
	}
	trailer := []byte("NEXT-BYTES")
	for _, tc := range []struct {
		name string
		in   []byte
		info ClientHelloInfo
		err  string
	}{
		{"psk", psk, ClientHelloInfo{OffersPSK: true, Identities: []string{"alice"}, TLS13: true}, ""},
		{"psk-split", split, ClientHelloInfo{OffersPSK: true, Identities: []string{"alice"}, TLS13: true}, ""},
		{"x509", x509, ClientHelloInfo{TLS13: true}, ""},
		{"plaintext", []byte("NBDMAGIC\x00\x00\x42\x02\x81\x86\x12\x53"), ClientHelloInfo{}, "not a TLS handshake"},
		{"truncated", psk[:50], ClientHelloInfo{}, "unexpected EOF"},
		{"no-hello", nil, ClientHelloInfo{}, "not a TLS handshake"},
		{"not-hello", []byte{22, 3, 1, 0, 4, 2, 0, 0, 0}, ClientHelloInfo{}, "not ClientHello"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &countingReader{r: io.MultiReader(bytes.NewReader(tc.in), bytes.NewReader(trailer))}
			raw, info, err := Sniff(r)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				if tc.name == "plaintext" && !errors.Is(err, ErrNotTLS) {
					t.Fatalf("error %v does not wrap ErrNotTLS", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(raw, tc.in) || r.read != len(tc.in) {
				t.Fatalf("read %d bytes, returned %d, want exactly the %d of the hello", r.read, len(raw), len(tc.in))
			}
			if info.OffersPSK != tc.info.OffersPSK || info.TLS13 != tc.info.TLS13 || strings.Join(info.Identities, ",") != strings.Join(tc.info.Identities, ",") {
				t.Fatalf("info %+v, want %+v", info, tc.info)
			}
		})
	}
}

// Sniff then Server with the sniffed bytes as prefix: the handshake works.
func TestSniffThenServer(t *testing.T) {
	a, b := pipe(t)
	cl := Client(a, &Config{Keys: testKeys, Identity: "alice"})
	done := make(chan error, 1)
	go func() {
		raw, info, err := Sniff(b)
		if err != nil || !info.OffersPSK {
			done <- err
			return
		}
		sv := Server(b, raw, &Config{Keys: testKeys})
		if err := sv.Handshake(); err != nil {
			done <- err
			return
		}
		_, err = io.Copy(sv, sv) // echo
		done <- err
	}()
	if _, err := cl.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(cl, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("%q %v", buf, err)
	}
	cl.CloseWrite()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestLoadKeys(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(s), 0o600)
		return p
	}
	k := "000102030405060708090a0b0c0d0e0f"
	keys, err := LoadKeys(write("ok", "# comment\n\nalice:"+k[:30]+"ff\nbob:"+k+"\r\nuser:with:colons:"+k+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if k, _ := keys.Lookup("alice"); !bytes.Equal(k, []byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0xff}) || len(keys) != 3 {
		t.Fatalf("keys %v", keys)
	}
	if _, ok := keys.Lookup("user:with:colons"); !ok {
		t.Fatal("identity with colons not found")
	}
	for _, tc := range []struct{ name, content, err string }{
		{"no-colon", "alice\n", "bad-no-colon:1: want \"identity:hexkey\""},
		{"not-hex", "# x\nalice:zz\n", `bad-not-hex:2: key for identity "alice" is not hex`},
		{"empty-key", "alice:\n", `empty key for identity "alice"`},
		{"empty-identity", ":00\n", "empty identity"},
		{"duplicate", "a:" + k + "\na:" + k + "\n", `bad-duplicate:2: identity "a" listed twice`},
		// a short key is guessed from one recorded handshake (or online)
		{"short-key", "alice:0102ff\n", `bad-short-key:1: the key of identity "alice" has 3 bytes: want at least 16`},
		{"empty-file", "\n# nothing\n", "no keys"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadKeys(write("bad-"+tc.name, tc.content))
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("error %v, want %q", err, tc.err)
			}
		})
	}
	if _, err := LoadKeys(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

// A key file written by GnuTLS's psktool loads, and gnutls-serv accepts the
// key we read from it.
func TestLoadKeysPsktool(t *testing.T) {
	tool := needTool(t, "psktool", "gnutls-bin")
	path := filepath.Join(t.TempDir(), "keys.psk")
	for _, u := range []string{"alice", "bob"} {
		if out, err := exec.Command(tool, "-u", u, "-p", path).CombinedOutput(); err != nil {
			t.Fatalf("psktool: %v\n%s", err, out)
		}
	}
	keys, err := LoadKeys(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 || len(keys["alice"]) != 32 || len(keys["bob"]) != 32 {
		t.Fatalf("keys from psktool: %d identities", len(keys))
	}
	serv := needTool(t, "gnutls-serv", "gnutls-bin")
	port := strconv.Itoa(testnet.FreePort(t))
	p := startPeer(t, serv, "--echo", "--pskpasswd", path, "--priority", gnutlsPSKPriority, "-p", port, "--nodb", "-a")
	raw := dialRetry(t, p, port)
	defer raw.Close()
	c := Client(raw, &Config{Keys: keys, Identity: "bob"})
	if err := c.Handshake(); err != nil {
		t.Fatalf("handshake with gnutls-serv using psktool's file: %v", err)
	}
	echoLines(t, c, 3, func(s string) string { return s })
}
