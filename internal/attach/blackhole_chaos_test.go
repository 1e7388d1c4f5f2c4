package attach

import (
	"context"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/device"
	"github.com/hacs/hacs/internal/nbd"
)

// silent is a device that stops answering once mute is closed: what a
// client sees of a primary whose machine vanished or whose packets are
// dropped (no reset, no error, no reply).
type silent struct {
	device.Device
	mute    chan struct{}
	release chan struct{}
}

func (d *silent) wait() {
	select {
	case <-d.mute:
		<-d.release
	default:
	}
}

func (d *silent) ReadAt(p []byte, off int64) error {
	d.wait()
	return d.Device.ReadAt(p, off)
}

func (d *silent) WriteAt(p []byte, off int64, fua bool) error {
	d.wait()
	return d.Device.WriteAt(p, off, fua)
}

// TestFollowerLeavesSilentPrimary is the regression test of a finding of
// the fault-injection suite (issue 9; seed 1795311838312565599, round 12:
// the primary of cv1 isolated with iptables DROP). The cluster named a new
// primary 5 s into the isolation, but both clients' attach processes kept
// waiting on their request to the old, silent primary until the isolation
// healed and its TCP connection was reset (15 s of pause); a primary that
// stays silent (a machine that lost power, a partition that lasts) would
// hold them for TCP's retransmission timeout, about 15 minutes, far past
// --max-pause. The follower must re-send a request to the new primary once
// the cluster names one, whether or not the old connection fails.
//
// Fixed: the follower's watchdog asks the cluster when requests stall and
// leaves a silent primary the cluster no longer names.
func TestFollowerLeavesSilentPrimary(t *testing.T) {
	dir := shortDir(t)
	const size = 1 << 20
	oldDev := &silent{Device: device.NewMemory(size), mute: make(chan struct{}), release: make(chan struct{})}
	defer close(oldDev.release)
	newDev := device.NewMemory(size)
	serve := func(name string, d device.Device) string {
		srv := nbd.NewServer(quiet)
		if err := srv.AddExport(nbd.Export{Name: "vol", Device: d}); err != nil {
			t.Fatal(err)
		}
		sock := filepath.Join(dir, name+".sock")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		return sock
	}
	oldSock, newSock := serve("old", oldDev), serve("new", newDev)
	var moved atomic.Bool
	resolve := func(ctx context.Context) (Target, error) {
		if moved.Load() {
			return Target{Network: "unix", Addr: newSock, Export: "vol", Epoch: 2}, nil
		}
		return Target{Network: "unix", Addr: oldSock, Export: "vol", Epoch: 1}, nil
	}
	f, err := NewFollower(context.Background(), resolve, quiet)
	if err != nil {
		t.Fatal(err)
	}
	f.MaxPause = 30 * time.Second
	defer func() { go f.Close() }() // (Close flushes, which may hang on the old primary)
	buf := make([]byte, 4096)
	if err := f.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	// The primary falls silent; the cluster names a new one.
	close(oldDev.mute)
	moved.Store(true)
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- f.ReadAt(buf, 0) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("read after the move: %v", err)
		}
		t.Logf("the read went to the new primary after %v", time.Since(start).Round(time.Millisecond))
	case <-time.After(15 * time.Second):
		t.Fatal("a read still waits for the silent old primary 15 s after the cluster named a new one")
	}
}
