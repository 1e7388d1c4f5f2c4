package test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hacs/hacs/internal/device"
	"github.com/hacs/hacs/internal/nbd"
)

// inNetns runs fn on an OS thread that entered the network namespace ns,
// so that the sockets fn creates live there. The thread is thrown away
// afterwards (it stays locked).
func inNetns(t *testing.T, ns string, fn func()) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		f, err := os.Open("/var/run/netns/" + ns)
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		fn()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatalf("entering network namespace %s: %v", ns, err)
	}
}

// TestNBDDeadPeerTimeout: an NBD client with DeadPeerTimeout fails a
// connection whose peer stopped acknowledging (every packet dropped, as in
// a partition that also ate the reset of a connection the server closed),
// instead of waiting on TCP's retransmission back-off for minutes. The
// follower of hacs volume attach uses it to leave such a connection to a
// primary the cluster still names (the chaos runs lost up to 13 s to it).
func TestNBDDeadPeerTimeout(t *testing.T) {
	requireRoot(t, "a network namespace and iptables")
	requireTools(t, "ip", "iptables")
	b := make([]byte, 3)
	rand.Read(b)
	ns := "hacs-" + hex.EncodeToString(b) + "-deadpeer"
	mustRun(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { runCmdTimeout(t, 10*time.Second, "ip", "netns", "del", ns) })
	mustRun(t, "ip", "-n", ns, "link", "set", "lo", "up")

	srv := nbd.NewServer(nil)
	if err := srv.AddExport(nbd.Export{Name: "vol", Device: device.NewMemory(1 << 20)}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	const timeout = 2 * time.Second
	var c *nbd.Client
	inNetns(t, ns, func() {
		ln, err := net.Listen("tcp", "127.0.0.1:10809") // the namespace's own loopback: no one else's port
		if err != nil {
			t.Error(err)
			return
		}
		go srv.Serve(ln)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err = nbd.Dial(ctx, "tcp", ln.Addr().String(), nbd.ClientOptions{Export: "vol", DeadPeerTimeout: timeout})
		if err != nil {
			t.Error(err)
		}
	})
	if c == nil {
		t.FailNow()
	}
	defer c.Close()
	buf := make([]byte, 4096)
	if err := c.ReadAt(buf, 0); err != nil {
		t.Fatalf("read before the cut: %v", err)
	}
	// Every packet dropped from now on: the request below is never
	// acknowledged, nor answered.
	for _, chain := range []string{"INPUT", "OUTPUT"} {
		mustRun(t, "ip", "netns", "exec", ns, "iptables", "-A", chain, "-j", "DROP")
	}
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- c.ReadAt(buf, 0) }()
	select {
	case err := <-done:
		took := time.Since(start)
		if err == nil {
			t.Fatal("a read through a cut connection succeeded")
		}
		if took < timeout/2 {
			t.Errorf("the read failed after %v, before the dead-peer timeout %v could have passed: %v", took, timeout, err)
		}
		t.Logf("the read failed %v after the cut: %v", took.Round(time.Millisecond), err)
	case <-time.After(4 * timeout):
		t.Fatalf("a read through a connection whose peer is silent still waits %v after the cut (DeadPeerTimeout %v)", 4*timeout, timeout)
	}
}
