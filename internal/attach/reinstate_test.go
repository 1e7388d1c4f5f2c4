package attach

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/device"
	"github.com/hacs/hacs/internal/nbd"
)

// heldWrite holds the first write whose data starts with 'O' in the
// device until release is closed, and records the first byte of every
// write executed, in order.
type heldWrite struct {
	device.Device
	once    sync.Once
	entered chan struct{}
	release chan struct{}

	mu     sync.Mutex
	writes []byte
}

func (d *heldWrite) WriteAt(p []byte, off int64, fua bool) error {
	held := false
	if p[0] == 'O' {
		d.once.Do(func() { held = true })
	}
	if held {
		close(d.entered)
		<-d.release
	}
	err := d.Device.WriteAt(p, off, fua)
	d.mu.Lock()
	d.writes = append(d.writes, p[0])
	d.mu.Unlock()
	return err
}

func (d *heldWrite) executed() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return string(d.writes)
}

// TestFollowerReinstatesItsSession: the follower leaves a connection while
// one of its writes is executing inside the server and reconnects to the
// SAME server (what a client-cut or a timeout does). Its new connection
// names its session with a newer generation, so the server lets it start
// only once the old write has ended: the write sent again and a newer
// write then land after it, and the block ends with the newer write
// (internal/nbd TestSessionReinstatementLostWrite shows the lost write
// without reinstatement).
func TestFollowerReinstatesItsSession(t *testing.T) {
	const size, blockB = 1 << 20, 4 * device.BlockSize
	dev := &heldWrite{Device: device.NewMemory(size), entered: make(chan struct{}), release: make(chan struct{})}
	srv := nbd.NewServer(quiet)
	if err := srv.AddExport(nbd.Export{Name: "vol", Device: dev}); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(shortDir(t), "export.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	target := Target{Network: "unix", Addr: sock, Export: "vol", Epoch: 1}
	f, err := NewFollower(context.Background(), func(context.Context) (Target, error) { return target, nil }, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	released := false
	defer func() { // before the server's Close, which waits for the held write
		if !released {
			close(dev.release)
		}
	}()

	wOld := bytes.Repeat([]byte{'O'}, device.BlockSize)
	wNew := bytes.Repeat([]byte{'N'}, device.BlockSize)
	oldDone := make(chan error, 1)
	go func() { oldDone <- f.WriteAt(wOld, blockB, false) }()
	<-dev.entered
	f.mu.Lock()
	c := f.cur
	f.mu.Unlock()
	c.Abort() // the follower leaves the connection; W_old is in the server

	select {
	case err := <-oldDone:
		t.Fatalf("W_old completed (err %v) while its first copy was still executing on the connection left", err)
	case <-time.After(300 * time.Millisecond):
	}
	close(dev.release)
	released = true
	select {
	case err := <-oldDone:
		if err != nil {
			t.Fatalf("W_old sent again: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("W_old not completed after its first copy ended")
	}
	if err := f.WriteAt(wNew, blockB, false); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, device.BlockSize)
	if err := f.ReadAt(got, blockB); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, wNew) {
		t.Fatalf("block holds %q..., want the newer write N (writes executed: %q)", got[:4], dev.executed())
	}
	if got, want := dev.executed(), "OON"; got != want {
		t.Fatalf("writes executed in order %q, want %q (the first W_old, its copy, W_new)", got, want)
	}
	if n := f.Failovers(); n != 1 {
		t.Fatalf("failovers = %d, want 1", n)
	}
}
