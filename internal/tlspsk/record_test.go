package tlspsk

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"testing"
	"time"
)

// recordPair returns a reading Conn over input and a halfConn that seals
// records for it, both on the same traffic secret.
func recordPair(t *testing.T, input *bytes.Buffer) (*Conn, *halfConn) {
	t.Helper()
	s := suiteByID(TLS_AES_128_GCM_SHA256)
	secret := bytes.Repeat([]byte{7}, 32)
	c := &Conn{r: input, cfg: &Config{}}
	if err := c.in.setSecret(s, secret); err != nil {
		t.Fatal(err)
	}
	c.hsDone.Store(true)
	var w halfConn
	w.setSecret(s, secret)
	return c, &w
}

// sealInner protects an arbitrary inner plaintext (content || type || zeros).
func sealInner(h *halfConn, inner []byte) []byte {
	n := len(inner) + aeadOverhead
	hdr := []byte{recordApplicationData, 3, 3, byte(n >> 8), byte(n)}
	out := h.aead.Seal(append([]byte{}, hdr...), h.makeNonce(), inner, hdr)
	h.seq++
	return out
}

func TestRecordInner(t *testing.T) {
	for _, tc := range []struct {
		name  string
		inner []byte
		want  string // data read, or the error
	}{
		{"plain", []byte("hello\x17"), "hello"},
		{"padded", append([]byte("hello\x17"), make([]byte, 300)...), "hello"},
		{"max", append(bytes.Repeat([]byte{'x'}, maxPlaintext), 23), string(bytes.Repeat([]byte{'x'}, maxPlaintext))},
		{"max-padded", append(append(bytes.Repeat([]byte{'x'}, maxPlaintext-10), 23), make([]byte, 200)...), string(bytes.Repeat([]byte{'x'}, maxPlaintext-10))},
		{"overflow", append(bytes.Repeat([]byte{'x'}, maxPlaintext+1), 23), "record plaintext of 16385 bytes is too long"},
		{"ciphertext-overflow", append(bytes.Repeat([]byte{'x'}, maxPlaintext), append([]byte{23}, make([]byte, 300)...)...), "record of 16701 bytes is too long"},
		{"all-zero", make([]byte, 20), "encrypted record without content type"},
		{"bad-type", []byte("x\x63"), "unexpected inner content type 99"},
		{"empty-alert", []byte{21}, "empty alert record"},
		{"close-notify", []byte{1, 0, 21}, "EOF"},
		{"fatal-alert", []byte{2, 40, 21}, "peer sent alert handshake_failure"},
		{"key-update-not-last", []byte{24, 0, 0, 1, 0, 24, 0, 0, 1, 0, 22}, "KeyUpdate not at the end of a record"},
		{"bad-key-update", []byte{24, 0, 0, 1, 5, 22}, "malformed KeyUpdate"},
		{"server-handshake-msg", []byte{2, 0, 0, 0, 22}, "unexpected handshake message 2 after the handshake"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var in bytes.Buffer
			c, w := recordPair(t, &in)
			c.conn = nopConn{}
			in.Write(sealInner(w, tc.inner))
			got, err := io.ReadAll(c)
			if err != nil {
				if !bytes.Contains([]byte(err.Error()), []byte(tc.want)) {
					t.Fatalf("error %v, want %q", err, tc.want)
				}
				return
			}
			if tc.want == "EOF" {
				if len(got) != 0 {
					t.Fatalf("read %q before close_notify", got)
				}
				return
			}
			if string(got) != tc.want {
				t.Fatalf("read %d bytes, want %d", len(got), len(tc.want))
			}
		})
	}
}

// nopConn is a net.Conn that swallows writes (the alerts a failing reader sends).
type nopConn struct{ net.Conn }

func (nopConn) Write(b []byte) (int, error)      { return len(b), nil }
func (nopConn) Close() error                     { return nil }
func (nopConn) SetWriteDeadline(time.Time) error { return nil }

// recorder keeps what the writer sends, to check the record sizes.
type recorder struct {
	nopConn
	buf bytes.Buffer
}

func (r *recorder) Write(b []byte) (int, error) { return r.buf.Write(b) }

func TestWriteRecordSizes(t *testing.T) {
	s := suiteByID(TLS_AES_128_GCM_SHA256)
	rec := &recorder{}
	c := &Conn{conn: rec, cfg: &Config{}}
	c.hsDone.Store(true)
	c.out.setSecret(s, bytes.Repeat([]byte{9}, 32))
	var in bytes.Buffer
	rd, _ := recordPair(t, &in)
	rd.in.setSecret(s, bytes.Repeat([]byte{9}, 32))
	var all []byte
	for _, n := range []int{0, 1, maxPlaintext - 1, maxPlaintext, maxPlaintext + 1, 1 << 20, 3*maxPlaintext + 5} {
		d := make([]byte, n)
		rand.Read(d)
		if w, err := c.Write(d); w != n || err != nil {
			t.Fatalf("Write(%d) = %d, %v", n, w, err)
		}
		all = append(all, d...)
	}
	// every record is a full 16 KiB except the last of each Write
	b := rec.buf.Bytes()
	records := 0
	for len(b) > 0 {
		n := int(b[3])<<8 | int(b[4])
		if n > maxPlaintext+1+aeadOverhead {
			t.Fatalf("record of %d bytes", n)
		}
		b = b[5+n:]
		records++
	}
	if want := 0 + 1 + 1 + 1 + 2 + 64 + 4; records != want {
		t.Errorf("%d records, want %d", records, want)
	}
	in.Write(rec.buf.Bytes())
	rd.conn = nopConn{}
	got := make([]byte, len(all))
	if _, err := io.ReadFull(rd, got); err != nil || !bytes.Equal(got, all) {
		t.Fatalf("read back: %v, equal %v", err, bytes.Equal(got, all))
	}
}

func TestBigTransferConcurrent(t *testing.T) {
	cl, sv, cerr, serr := handshakePair(t, &Config{Keys: testKeys, Identity: "alice"}, &Config{Keys: testKeys})
	if cerr != nil || serr != nil {
		t.Fatal(cerr, serr)
	}
	exchange(t, cl, sv, 16<<20)
}

// TestPlaintextAlertAfterHandshake: once the handshake is done every record
// is protected; a plaintext close_notify (which anyone on the path can
// inject) must not read as the peer's clean end of the stream.
func TestPlaintextAlertAfterHandshake(t *testing.T) {
	for _, tc := range []struct {
		name   string
		record []byte
	}{
		{"close_notify", []byte{21, 3, 3, 0, 2, 1, 0}},
		{"user_canceled", []byte{21, 3, 3, 0, 2, 1, 90}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var in bytes.Buffer
			c, w := recordPair(t, &in)
			c.conn = nopConn{}
			in.Write(sealInner(w, []byte("hello\x17")))
			in.Write(tc.record)
			in.Write(sealInner(w, []byte("injected after\x17")))
			got, err := io.ReadAll(c)
			if err == nil || !bytes.Contains([]byte(err.Error()), []byte("unprotected alert")) {
				t.Fatalf("read %q, error %v: want the unprotected alert refused", got, err)
			}
			if string(got) != "hello" {
				t.Fatalf("read %q before the error", got)
			}
		})
	}
}
