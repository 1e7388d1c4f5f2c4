package test

import (
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// A flood of idle connections to `hacs serve` from one address holds only
// --max-negotiating-per-ip slots (the rest are closed at once, logged
// once), while nbdinfo (libnbd) from another address still gets the
// export and a client already in transmission keeps reading.
func TestServeNegotiationFlood(t *testing.T) {
	requireTools(t, "nbdinfo")
	const perIP, n = 16, 300
	s := startServe(t, serveOpts{name: "vm1", tcp: true, args: []string{"--max-negotiating-per-ip", "16", "--handshake-timeout", "20s"}})
	established := s.dial(t)
	want := bytes.Repeat([]byte("flood"), 1000)
	if err := established.WriteAt(want[:4096], 0, false); err != nil {
		t.Fatal(err)
	}

	// the flood, from 127.0.0.2
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	greeted, closed := 0, 0
	var conns []net.Conn
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	start := time.Now()
	for i := 0; i < n; i++ {
		nc, err := d.Dial("tcp", s.addr)
		if err != nil {
			closed++ // reset before the dial returned
			continue
		}
		conns = append(conns, nc)
	}
	for _, nc := range conns {
		nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(nc, make([]byte, 18)); err == nil {
			greeted++
		} else {
			closed++
		}
	}
	t.Logf("flood of %d idle connections from one address: %d greeted (in negotiation), %d closed at once, in %v", n, greeted, closed, time.Since(start).Round(time.Millisecond))
	if greeted != perIP || closed != n-perIP {
		t.Fatalf("%d connections greeted and %d closed, want %d and %d", greeted, closed, perIP, n-perIP)
	}

	// during the flood: nbdinfo from 127.0.0.1, and the established client
	out := nbdinfo(t, s.uri())
	if len(out.Exports) != 1 || out.Exports[0].Size != 64*mib {
		t.Fatalf("nbdinfo during the flood: %+v", out)
	}
	got := make([]byte, 4096)
	if err := established.ReadAt(got, 0); err != nil || !bytes.Equal(got, want[:4096]) {
		t.Fatalf("established client during the flood: err %v, same data %v", err, bytes.Equal(got, want[:4096]))
	}
	logs := s.out.String()
	if c := strings.Count(logs, "too many connections in negotiation"); c < 1 || c > 2 {
		t.Fatalf("%d log lines for %d refusals, want 1 or 2:\n%s", c, n-perIP, clip(logs))
	}
}
