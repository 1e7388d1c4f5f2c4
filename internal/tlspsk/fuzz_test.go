package tlspsk

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// FuzzSniff: Sniff never panics, never reads past what it returns, and what
// it accepts parses as a ClientHello.
func FuzzSniff(f *testing.F) {
	f.Add(pskHello(f))
	f.Add(x509Hello(f))
	f.Add([]byte("NBDMAGIC"))
	f.Add([]byte{22, 3, 1, 0, 4, 1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		raw, info, err := Sniff(r)
		if len(raw) != len(in)-r.Len() {
			t.Fatalf("returned %d bytes, read %d", len(raw), len(in)-r.Len())
		}
		if !bytes.Equal(raw, in[:len(raw)]) {
			t.Fatal("returned bytes differ from those read")
		}
		if err == nil && len(info.Identities) > 0 && !info.OffersPSK {
			t.Fatal("identities without a PSK offer")
		}
	})
}

// fuzzConn feeds a fixed input as the peer's bytes and swallows writes.
type fuzzConn struct {
	r io.Reader
}

func (c *fuzzConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *fuzzConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *fuzzConn) Close() error                     { return nil }
func (c *fuzzConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *fuzzConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *fuzzConn) SetDeadline(time.Time) error      { return nil }
func (c *fuzzConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fuzzConn) SetWriteDeadline(time.Time) error { return nil }

// fuzzRand is a fixed "random" source so runs are reproducible.
type fuzzRand struct{}

func (fuzzRand) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(i*7 + 1)
	}
	return len(p), nil
}

// FuzzServerHandshake feeds arbitrary bytes as the client's flight(s) to a
// server handshake: it must fail cleanly (or succeed), never panic or hang.
// The seeds are a real client's first flight, one that makes the server
// send a HelloRetryRequest, and one with a known binder, so the fuzzer
// reaches the code after the binder check.
func FuzzServerHandshake(f *testing.F) {
	f.Add(pskHello(f))
	f.Add(captureHello(f, func(c net.Conn) {
		Client(c, &Config{Keys: testKeys, Identity: "alice", Groups: []uint16{GroupSecp384r1, GroupX25519}}).Handshake()
	}))
	f.Add(x509Hello(f))
	f.Add(append(pskHello(f), 20, 3, 3, 0, 1, 1, 23, 3, 3, 0, 20, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20))
	f.Fuzz(func(t *testing.T, in []byte) {
		cfg := &Config{Keys: testKeys, Rand: fuzzRand{}, Groups: []uint16{GroupX25519, GroupSecp256r1}}
		c := Server(&fuzzConn{r: bytes.NewReader(in)}, nil, cfg)
		err := c.Handshake()
		if err == nil {
			// cannot happen without the client's Finished key; if it does,
			// reading must still be safe
			c.Read(make([]byte, 10))
		}
	})
}

// teeConn records what is read from it.
type teeConn struct {
	net.Conn
	got bytes.Buffer
}

func (c *teeConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.got.Write(p[:n])
	return n, err
}

// serverFlight returns what a real server sent to a client whose randomness
// is fuzzRand (so its session id is the same in the fuzz runs).
func serverFlight(f *testing.F, ccfg, scfg *Config) []byte {
	a, b := pipe(f)
	tc := &teeConn{Conn: a}
	go Server(b, nil, scfg).Handshake()
	if err := Client(tc, ccfg).Handshake(); err != nil {
		f.Fatal(err)
	}
	a.Close()
	return tc.got.Bytes()
}

// FuzzClientHandshake feeds arbitrary bytes as the server's flight(s) to a
// client handshake. Seeds: a real server's answer, with and without a
// HelloRetryRequest.
func FuzzClientHandshake(f *testing.F) {
	cfg := func(groups ...uint16) *Config {
		return &Config{Keys: testKeys, Identity: "alice", Rand: fuzzRand{}, Groups: groups}
	}
	f.Add(serverFlight(f, cfg(GroupSecp384r1, GroupX25519), &Config{Keys: testKeys}))
	f.Add(serverFlight(f, cfg(GroupSecp384r1, GroupX25519), &Config{Keys: testKeys, Groups: []uint16{GroupX25519}}))
	f.Add([]byte{21, 3, 3, 0, 2, 2, 51})
	f.Fuzz(func(t *testing.T, in []byte) {
		c := Client(&fuzzConn{r: bytes.NewReader(in)}, cfg(GroupSecp384r1, GroupX25519))
		if c.Handshake() == nil {
			c.Read(make([]byte, 10))
		}
	})
}
