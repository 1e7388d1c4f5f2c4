package tlspsk

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

var testKeys = Keys{"alice": bytes.Repeat([]byte{0x11}, 32), "bob": []byte("0123456789abcdef")}

// pipe returns a connected TCP loopback pair (real sockets, CloseWrite works).
func pipe(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ch <- nil
			return
		}
		ch <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-ch
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// handshakePair runs both handshakes and returns both errors.
func handshakePair(t testing.TB, ccfg, scfg *Config) (*Conn, *Conn, error, error) {
	a, b := pipe(t)
	cl := Client(a, ccfg)
	sv := Server(b, nil, scfg)
	var serr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); serr = sv.Handshake() }()
	cerr := cl.Handshake()
	if cerr != nil {
		a.Close()
	}
	wg.Wait()
	if serr != nil {
		b.Close()
	}
	return cl, sv, cerr, serr
}

func TestHandshakeSuitesGroups(t *testing.T) {
	for _, suite := range []uint16{TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256} {
		for _, g := range defaultGroups {
			for _, hrr := range []bool{false, true} {
				name := CipherSuiteName(suite) + "/" + GroupName(g)
				ccfg := &Config{Keys: testKeys, Identity: "alice", CipherSuites: []uint16{suite}, Groups: []uint16{g}}
				scfg := &Config{Keys: testKeys}
				if hrr {
					name += "/HRR"
					// the client's key share is for a group the server refuses
					other := GroupX25519
					if g == GroupX25519 {
						other = GroupSecp384r1
					}
					ccfg.Groups = []uint16{other, g}
					scfg.Groups = []uint16{g}
				}
				t.Run(name, func(t *testing.T) {
					cl, sv, cerr, serr := handshakePair(t, ccfg, scfg)
					if cerr != nil || serr != nil {
						t.Fatalf("client: %v, server: %v", cerr, serr)
					}
					if cl.CipherSuite() != CipherSuiteName(suite) || sv.CipherSuite() != CipherSuiteName(suite) {
						t.Fatalf("suites %s %s", cl.CipherSuite(), sv.CipherSuite())
					}
					if sv.Identity() != "alice" || cl.Identity() != "alice" {
						t.Fatalf("identity %q", sv.Identity())
					}
					exchange(t, cl, sv, 100000)
				})
			}
		}
	}
}

// exchange sends n random bytes each way at once and checks them.
func exchange(t testing.TB, a, b *Conn, n int) {
	t.Helper()
	da, db := make([]byte, n), make([]byte, n)
	rand.Read(da)
	rand.Read(db)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	send := func(c *Conn, d []byte) {
		defer wg.Done()
		if _, err := c.Write(d); err != nil {
			errs <- err
		}
	}
	recv := func(c *Conn, want []byte) {
		defer wg.Done()
		got := make([]byte, len(want))
		if _, err := io.ReadFull(c, got); err != nil {
			errs <- err
			return
		}
		if !bytes.Equal(got, want) {
			errs <- errors.New("data mismatch")
		}
	}
	wg.Add(4)
	go send(a, da)
	go send(b, db)
	go recv(a, db)
	go recv(b, da)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestKeyUpdateAndClose(t *testing.T) {
	cl, sv, cerr, serr := handshakePair(t, &Config{Keys: testKeys, Identity: "bob"}, &Config{Keys: testKeys})
	if cerr != nil || serr != nil {
		t.Fatalf("client: %v, server: %v", cerr, serr)
	}
	exchange(t, cl, sv, 1000)
	if err := cl.keyUpdate(true); err != nil {
		t.Fatal(err)
	}
	exchange(t, cl, sv, 50000)
	if err := sv.keyUpdate(false); err != nil {
		t.Fatal(err)
	}
	exchange(t, cl, sv, 50000)
	if err := cl.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 10)
	if n, err := sv.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("after close_notify: %d %v", n, err)
	}
	// the other direction still works
	go sv.Write([]byte("after"))
	if _, err := io.ReadFull(cl, buf[:5]); err != nil || string(buf[:5]) != "after" {
		t.Fatalf("half-close: %q %v", buf[:5], err)
	}
	if _, err := cl.Write([]byte("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("write after CloseWrite: %v", err)
	}
	_ = time.Second
}

// The writer moves to a new key on its own after keyUpdateAfter records.
func TestAutomaticKeyUpdate(t *testing.T) {
	old := keyUpdateAfter
	keyUpdateAfter = 10
	defer func() { keyUpdateAfter = old }()
	cl, sv, cerr, serr := handshakePair(t, &Config{Keys: testKeys, Identity: "alice"}, &Config{Keys: testKeys})
	if cerr != nil || serr != nil {
		t.Fatal(cerr, serr)
	}
	exchange(t, cl, sv, 100*maxPlaintext) // 100 records each way
	if sv.peerKeyUpdates < 9 || cl.peerKeyUpdates < 9 {
		t.Fatalf("KeyUpdates received: server %d, client %d; want >= 9", sv.peerKeyUpdates, cl.peerKeyUpdates)
	}
}

// A handshake waiting for a silent peer ends when its context does.
func TestHandshakeContext(t *testing.T) {
	_, b := pipe(t)
	sv := Server(b, nil, &Config{Keys: testKeys})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := sv.HandshakeContext(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Fatalf("error %v after %v", err, time.Since(start))
	}
	if err2 := sv.Handshake(); err2 != err {
		t.Fatalf("second Handshake: %v", err2)
	}
	// HandshakeTimeout does the same
	_, b2 := pipe(t)
	err = Server(b2, nil, &Config{Keys: testKeys, HandshakeTimeout: 100 * time.Millisecond}).Handshake()
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("HandshakeTimeout: %v", err)
	}
}

// A client ignores NewSessionTicket (no resumption); a server refuses one.
func TestNewSessionTicketIgnored(t *testing.T) {
	cl, sv, cerr, serr := handshakePair(t, &Config{Keys: testKeys, Identity: "alice"}, &Config{Keys: testKeys})
	if cerr != nil || serr != nil {
		t.Fatal(cerr, serr)
	}
	// lifetime, age_add, nonce<0..255>, ticket<1..2^16-1>, extensions<0..2^16-2>
	body := []byte{0, 0, 0x1c, 0x20, 1, 2, 3, 4, 1, 0, 0, 3, 't', 'k', 't', 0, 0}
	nst := handshakeMsg(typeNewSessionTicket, body)
	sv.wmu.Lock()
	sv.outBuf = sv.appendRecord(sv.outBuf[:0], recordHandshake, nst)
	sv.flush(sv.outBuf)
	sv.wmu.Unlock()
	exchange(t, cl, sv, 1000)

	cl.wmu.Lock()
	cl.outBuf = cl.appendRecord(cl.outBuf[:0], recordHandshake, nst)
	cl.flush(cl.outBuf)
	cl.wmu.Unlock()
	_, err := sv.Read(make([]byte, 1))
	wantAlert(t, "server", err, alertUnexpectedMessage, false, "client sent NewSessionTicket")
}

// A client offering 0-RTT: the server does not accept it (no early_data in
// EncryptedExtensions), skips the early records and completes the handshake,
// also after a HelloRetryRequest.
func TestEarlyDataRefused(t *testing.T) {
	var early []byte
	for _, n := range []int{100, 16000, 5} {
		junk := make([]byte, n+aeadOverhead)
		rand.Read(junk)
		early = append(early, recordApplicationData, 3, 3, byte(len(junk)>>8), byte(len(junk)))
		early = append(early, junk...)
	}
	for _, hrr := range []bool{false, true} {
		a, b := pipe(t)
		ccfg := &Config{Keys: testKeys, Identity: "alice"}
		scfg := &Config{Keys: testKeys}
		if hrr {
			ccfg.Groups = []uint16{GroupSecp384r1, GroupX25519}
			scfg.Groups = []uint16{GroupX25519}
		}
		cl, sv := Client(a, ccfg), Server(b, nil, scfg)
		cl.testEarlyData = early
		errc := make(chan error, 1)
		go func() { errc <- sv.Handshake() }()
		if err := cl.Handshake(); err != nil {
			t.Fatalf("hrr %v: client: %v", hrr, err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("hrr %v: server: %v", hrr, err)
		}
		if sv.didHRR != hrr {
			t.Fatalf("HRR %v, want %v", sv.didHRR, hrr)
		}
		exchange(t, cl, sv, 5000)
	}
}
