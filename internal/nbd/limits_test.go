package nbd

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/device"
)

// startTCPServer serves the exports on 127.0.0.1 (an in-process listener
// on a port the kernel picks, kept open for the test) with limits l.
func startTCPServer(t testing.TB, l Limits, setup func(*Server), exports ...Export) (*Server, string, *syncBuf) {
	t.Helper()
	logs := &syncBuf{}
	srv := NewServer(slog.New(slog.NewTextHandler(logs, nil)))
	srv.Limits = l
	if setup != nil {
		setup(srv)
	}
	for _, e := range exports {
		mustOK(t, srv.AddExport(e))
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	mustOK(t, err)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return srv, ln.Addr().String(), logs
}

// dialFrom connects to addr from the local IP address from (another
// address of the loopback network: another client machine).
func dialFrom(t testing.TB, from, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	nc, err := d.Dial("tcp", addr)
	mustOK(t, err)
	return nc
}

// openExport negotiates export "v" over nc.
func openExport(t testing.TB, nc net.Conn, opts ClientOptions) *Client {
	t.Helper()
	opts.Export = "v"
	c, err := NewClient(nc, opts)
	if err != nil {
		nc.Close()
		t.Fatalf("client from %s: %v", nc.LocalAddr(), err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// flood opens n connections from 127.0.0.1 that send nothing.
func flood(t testing.TB, addr string, n int) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, 0, n)
	t.Cleanup(func() {
		for _, nc := range conns {
			if nc != nil {
				nc.Close()
			}
		}
	})
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.1")}}
	for i := 0; i < n; i++ {
		nc, err := d.Dial("tcp", addr)
		if err != nil {
			// closed by the server before the dial returned
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatal(err)
			}
			nc = nil
		}
		conns = append(conns, nc)
	}
	return conns
}

// closedAtOnce reports whether the server closed nc without a word
// (instead of greeting it).
func closedAtOnce(nc net.Conn) bool {
	if nc == nil {
		return true // reset before the dial returned
	}
	nc.SetReadDeadline(time.Now().Add(3 * time.Second))
	var b [1]byte
	_, err := nc.Read(b[:])
	return err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
}

func waitNegotiating(t testing.TB, srv *Server, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for srv.Negotiating() != want {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections in negotiation, want %d", srv.Negotiating(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A flood of idle connections from one IP address holds at most
// MaxNegotiatingPerIP slots; the rest are closed at once, logged a few
// times only. A client from another address still negotiates, a client
// already in transmission keeps being served, and the slots are free
// again once the flood ends.
func TestNegotiationLimitPerIP(t *testing.T) {
	const perIP, n = 8, 200
	srv, addr, logs := startTCPServer(t, Limits{HandshakeTimeout: 8 * time.Second, MaxNegotiatingPerIP: perIP}, nil,
		Export{Name: "v", Device: device.NewMemory(1 << 20)})
	established := openExport(t, dialFrom(t, "127.0.0.2", addr), ClientOptions{})

	// the established client reads all through the flood
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var reads int
	var readErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 4096)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if readErr = established.ReadAt(buf, 0); readErr != nil {
				return
			}
			reads++
		}
	}()

	start := time.Now()
	conns := flood(t, addr, n)
	waitNegotiating(t, srv, perIP)
	refused := 0
	for _, nc := range conns[perIP:] {
		if closedAtOnce(nc) {
			refused++
		}
	}
	if refused != n-perIP {
		t.Fatalf("%d of %d connections beyond the limit were closed at once", refused, n-perIP)
	}
	t.Logf("flood of %d idle connections: %d in negotiation, %d closed at once, in %v", n, srv.Negotiating(), refused, time.Since(start).Round(time.Millisecond))

	// another client machine gets in and reads
	other := openExport(t, dialFrom(t, "127.0.0.3", addr), ClientOptions{})
	roundTrip(t, other)
	// the flooding address does not
	if !closedAtOnce(flood(t, addr, 1)[0]) {
		t.Fatal("the flooding address got one more connection")
	}

	close(stop)
	wg.Wait()
	if readErr != nil || reads == 0 {
		t.Fatalf("established client during the flood: %d reads, err %v", reads, readErr)
	}
	lines := strings.Count(logs.String(), "too many connections in negotiation")
	if lines == 0 || lines > 2 {
		t.Fatalf("%d log lines for %d refusals, want 1 or 2:\n%s", lines, n-perIP+1, logs)
	}
	if !strings.Contains(logs.String(), "the limit per IP address") {
		t.Fatalf("the log does not say which limit:\n%s", logs)
	}

	// the flood ends: its slots are free again
	for _, nc := range conns {
		if nc != nil {
			nc.Close()
		}
	}
	waitNegotiating(t, srv, 0)
	roundTrip(t, openExport(t, dialFrom(t, "127.0.0.1", addr), ClientOptions{}))
}

// The server-wide limit holds against many addresses; connections that
// finish negotiating give their slot back, so more clients than the limit
// can be in transmission at once.
func TestNegotiationLimitServerWide(t *testing.T) {
	const max = 4
	srv, addr, logs := startTCPServer(t, Limits{HandshakeTimeout: 8 * time.Second, MaxNegotiating: max}, nil,
		Export{Name: "v", Device: device.NewMemory(1 << 20)})
	var clients []*Client
	for i := 0; i < 3*max; i++ {
		clients = append(clients, openExport(t, dialFrom(t, "127.0.0.2", addr), ClientOptions{}))
	}
	// (the server frees a slot just after its last answer: wait for it)
	waitNegotiating(t, srv, 0)
	idle := flood(t, addr, max)
	waitNegotiating(t, srv, max)
	if !closedAtOnce(flood(t, addr, 1)[0]) {
		t.Fatal("a connection from the flooding address beyond the server-wide limit was not closed")
	}
	if nc, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.4")}}).Dial("tcp", addr); err == nil && !closedAtOnce(nc) {
		t.Fatal("a connection from another address beyond the server-wide limit was not closed")
	}
	if !strings.Contains(logs.String(), "the limit (MaxNegotiating)") {
		t.Fatalf("the log does not say which limit:\n%s", logs)
	}
	for _, c := range clients {
		roundTrip(t, c)
	}
	// one idle connection negotiates after all: the next client gets its slot
	openExport(t, idle[0], ClientOptions{})
	waitNegotiating(t, srv, max-1)
	roundTrip(t, openExport(t, dialFrom(t, "127.0.0.4", addr), ClientOptions{}))
}

// dribble sends b one byte every gap until it is sent or the server hangs
// up; it returns how long the server let it go on.
func dribble(nc net.Conn, b []byte, gap time.Duration) (time.Duration, error) {
	start := time.Now()
	for i := range b {
		if _, err := nc.Write(b[i : i+1]); err != nil {
			return time.Since(start), err
		}
		time.Sleep(gap)
	}
	return time.Since(start), nil
}

// A client that sends its options (or its TLS hello) a byte at a time
// does not extend the negotiation deadline: it is cut when
// HandshakeTimeout has passed since it connected, and its slot is freed.
func TestNegotiationDeadlineSlowLoris(t *testing.T) {
	const timeout = time.Second
	p := newTestPKI(t, "ca")
	slowHello := func(t *testing.T, nc net.Conn) {
		r := &raw{t: t, nc: nc}
		r.greet(clientFixedNewstyle | clientNoZeroes)
		r.opt(optStartTLS, nil)
		if typ, _ := r.optReply(optStartTLS); typ != repAck {
			t.Fatalf("STARTTLS answered %d", typ)
		}
		// a TLS record header announcing a large ClientHello, then its
		// body byte by byte
		hello := append([]byte{22, 3, 1, 0x02, 0x00}, bytes.Repeat([]byte{1}, 512)...)
		dribble(nc, hello, 50*time.Millisecond)
	}
	slowOption := func(t *testing.T, nc net.Conn) {
		r := &raw{t: t, nc: nc}
		r.greet(clientFixedNewstyle | clientNoZeroes)
		// an NBD_OPT_INFO announcing 1000 bytes, sent one by one
		b := binary.BigEndian.AppendUint64(nil, magicOpt)
		b = binary.BigEndian.AppendUint32(b, optInfo)
		b = binary.BigEndian.AppendUint32(b, 1000)
		dribble(nc, append(b, make([]byte, 1000)...), 50*time.Millisecond)
	}
	cases := []struct {
		name string
		tls  *tls.Config
		psk  bool
		slow func(*testing.T, net.Conn)
	}{
		{"plaintext option", nil, false, slowOption},
		{"TLS hello (x509)", p.serverConfig(true), false, slowHello},
		{"TLS hello (x509 and PSK)", p.serverConfig(true), true, slowHello},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv, addr, logs := startTCPServer(t, Limits{HandshakeTimeout: timeout}, func(srv *Server) {
				if tc.tls != nil {
					srv.TLSConfig, srv.TLSPolicy = tc.tls, TLSAllowed
				}
				if tc.psk {
					srv.PSKKeys = pskClient("alice", bytes.Repeat([]byte{7}, 32)).Keys
				}
			}, Export{Name: "v", Device: device.NewMemory(1 << 20)})
			nc := dialFrom(t, "127.0.0.1", addr)
			defer nc.Close()
			start := time.Now()
			tc.slow(t, nc)
			// the server hung up: what is left to read ends
			nc.SetReadDeadline(time.Now().Add(5 * time.Second))
			io.Copy(io.Discard, nc)
			cut := time.Since(start)
			if cut < timeout-100*time.Millisecond || cut > timeout+1500*time.Millisecond {
				t.Fatalf("slow client cut after %v, want about %v", cut, timeout)
			}
			t.Logf("cut after %v", cut.Round(time.Millisecond))
			waitNegotiating(t, srv, 0)
			waitLog(t, logs, "negotiation not done within the handshake timeout")
		})
	}
}

// MaxConnsPerExport refuses one more client of a full export with a
// policy error, and admits it again once a client left.
func TestMaxConnsPerExport(t *testing.T) {
	_, addr, logs := startTCPServer(t, Limits{MaxConnsPerExport: 2}, nil,
		Export{Name: "v", Device: device.NewMemory(1 << 20)}, Export{Name: "w", Device: device.NewMemory(1 << 20)})
	dial := func(export string) (*Client, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return Dial(ctx, "tcp", addr, ClientOptions{Export: export})
	}
	a, err := dial("v")
	mustOK(t, err)
	b, err := dial("v")
	mustOK(t, err)
	defer b.Close()
	if _, err := dial("v"); err == nil || !strings.Contains(err.Error(), "limit per export") {
		t.Fatalf("third client of a full export: err %v, want the limit per export", err)
	}
	w, err := dial("w") // another export is not full
	mustOK(t, err)
	w.Close()
	a.Close()
	var c *Client
	for i := 0; i < 100; i++ { // the server sees a leave a moment later
		if c, err = dial("v"); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	mustOK(t, err)
	roundTrip(t, c)
	c.Close()
	if !strings.Contains(logs.String(), "limit per export") {
		t.Fatalf("the refusal is not logged:\n%s", logs)
	}
}
