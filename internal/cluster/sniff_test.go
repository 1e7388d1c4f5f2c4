package cluster

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"
)

// TestSniffConnKeepsDeadline: the plaintext sniffing of the API listener
// must not lift the deadline the HTTP server sets for the TLS handshake, or
// a client that sends one byte of a ClientHello and stalls holds its
// connection (and a goroutine) forever.
func TestSniffConnKeepsDeadline(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	sl := sniffListener{Listener: ln, log: slog.New(slog.NewTextHandler(io.Discard, nil)), what: "API"}
	cli, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	srv, err := sl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	// the handshake deadline, as net/http sets it
	srv.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	cli.Write([]byte{0x16}) // the first byte of a TLS record, then nothing
	buf := make([]byte, 16)
	if n, err := srv.Read(buf); n != 1 || err != nil {
		t.Fatalf("first read: %d %v", n, err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := srv.Read(buf)
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("stalled read ended with %v, want the deadline", err)
		}
	case <-time.After(3 * time.Second):
		srv.Close()
		t.Fatal("a stalled client is still waited for 3 s after the 300 ms deadline: the sniffing lifted it")
	}
}
