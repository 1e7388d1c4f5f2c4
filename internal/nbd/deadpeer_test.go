package nbd

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hacs/hacs/internal/device"
)

// slowDev answers reads after a delay: a live server whose device is slow
// (a primary waiting for a replica or the cluster store).
type slowDev struct {
	device.Device
	delay time.Duration
}

func (d *slowDev) ReadAt(p []byte, off int64) error {
	time.Sleep(d.delay)
	return d.Device.ReadAt(p, off)
}

// TestDeadPeerDialerOptions: the socket options behind
// ClientOptions.DeadPeerTimeout (test/TestNBDDeadPeerTimeout checks that
// a silent peer is then left).
func TestDeadPeerDialerOptions(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0") // kept open until the end: this test's own peer
	mustOK(t, err)
	defer ln.Close()
	for _, tc := range []struct {
		timeout       time.Duration
		userTimeoutMS int
		keepalive     int
		idle          int // seconds (the kernel's unit; rounded up)
	}{
		{timeout: 0, userTimeoutMS: 0},
		{timeout: 5 * time.Second, userTimeoutMS: 5000, keepalive: 1, idle: 1},
		{timeout: 20 * time.Second, userTimeoutMS: 20000, keepalive: 1, idle: 4},
	} {
		nc, err := deadPeerDialer(tc.timeout).Dial("tcp", ln.Addr().String())
		mustOK(t, err)
		rc, err := nc.(*net.TCPConn).SyscallConn()
		mustOK(t, err)
		var ut, ka, idle int
		var gerr error
		rc.Control(func(fd uintptr) {
			if ut, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT); gerr != nil {
				return
			}
			if ka, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE); gerr != nil {
				return
			}
			idle, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
		})
		nc.Close()
		mustOK(t, gerr)
		if ut != tc.userTimeoutMS {
			t.Errorf("timeout %v: TCP_USER_TIMEOUT %d ms, want %d", tc.timeout, ut, tc.userTimeoutMS)
		}
		if tc.timeout > 0 && (ka != tc.keepalive || idle != tc.idle) {
			t.Errorf("timeout %v: SO_KEEPALIVE %d, TCP_KEEPIDLE %d s; want %d, %d", tc.timeout, ka, idle, tc.keepalive, tc.idle)
		}
	}
}

// TestDeadPeerTimeoutKeepsSlowPeer: a request that a live server takes
// longer than DeadPeerTimeout to answer is not failed (its kernel
// acknowledges the request and the keepalive probes), and an idle
// connection stays up.
func TestDeadPeerTimeoutKeepsSlowPeer(t *testing.T) {
	srv := NewServer(slog.New(slog.NewTextHandler(io.Discard, nil)))
	mustOK(t, srv.AddExport(Export{Name: "vol", Device: &slowDev{Device: device.NewMemory(1 << 20), delay: 2 * time.Second}}))
	ln, err := net.Listen("tcp", "127.0.0.1:0") // kept open until the end: this test's own server
	mustOK(t, err)
	go srv.Serve(ln)
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, "tcp", ln.Addr().String(), ClientOptions{Export: "vol", DeadPeerTimeout: 500 * time.Millisecond})
	mustOK(t, err)
	defer c.Close()
	buf := make([]byte, 4096)
	if err := c.ReadAt(buf, 0); err != nil {
		t.Fatalf("a read the server answers after 2 s, with DeadPeerTimeout 500ms: %v", err)
	}
	time.Sleep(time.Second) // idle, past the timeout
	if err := c.ReadAt(buf, 0); err != nil {
		t.Fatalf("a read after 1 s idle: %v", err)
	}
}
