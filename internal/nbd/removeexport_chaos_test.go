package nbd

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/device"
)

// stuckWrites is a device whose writes block until release is closed (a
// mirror write waiting for an unreachable replica and cluster store).
type stuckWrites struct {
	device.Device
	started chan struct{}
	release chan struct{}
	once    sync.Once
}

func (d *stuckWrites) WriteAt(p []byte, off int64, fua bool) error {
	d.once.Do(func() { close(d.started) })
	<-d.release
	return d.Device.WriteAt(p, off, fua)
}

// TestRemoveExportStopsEveryConnectionAtOnce is the regression test of a
// finding of the fault-injection suite (issue 9; seed 1795311838312565599,
// round 5: the DC and primary n1 of cv0 isolated). RemoveExport must stop
// serving every connection of the export when it is called, not one after
// another: the agent removes the export of a primary that lost its lease
// (self-fence), and a connection with a request stuck in the mirror (a
// replica timed out, the in-sync update waits for the unreachable store, up
// to StoreTimeout) kept the export's other connections open and served
// — reads from the stale local replica after the new primary took over —
// until the stuck request ended (2.8 s past the new primary's start in the
// run that found it).
//
// Fixed: RemoveExport closes every victim first, then waits for them all.
func TestRemoveExportStopsEveryConnectionAtOnce(t *testing.T) {
	srv, sock := startServer(t)
	// The server walks an export's connections in map order: eight
	// clients, one of them stuck, five times over, show the bug whatever
	// that order.
	for attempt := 0; attempt < 5; attempt++ {
		dev := &stuckWrites{Device: device.NewMemory(1 << 20), started: make(chan struct{}), release: make(chan struct{})}
		defer close(dev.release)
		name := fmt.Sprintf("v%d", attempt)
		if err := srv.AddExport(Export{Name: name, Device: dev}); err != nil {
			t.Fatal(err)
		}
		var cs []*Client
		for i := 0; i < 8; i++ {
			c := dialT(t, sock, ClientOptions{Export: name})
			if err := c.ReadAt(make([]byte, 4096), 0); err != nil {
				t.Fatal(err)
			}
			cs = append(cs, c)
		}
		go cs[0].WriteAt(make([]byte, 4096), 0, false)
		<-dev.started
		removed := make(chan struct{})
		go func() { srv.RemoveExport(name); close(removed) }()
		time.Sleep(200 * time.Millisecond) // RemoveExport has begun
		// The export is gone: no other connection may be served.
		for i, c := range cs[1:] {
			err := c.ReadAt(make([]byte, 4096), 4096)
			select {
			case <-removed:
				t.Fatal("RemoveExport returned while a request was still being served")
			default:
			}
			if err == nil {
				t.Fatalf("attempt %d: connection %d of the removed export %s was still served while another connection's request was stuck", attempt, i+1, name)
			}
		}
	}
}

// TestRemovedExportCannotBeSelected: a client that looked an export up
// before RemoveExport and selects it after (its handshake racing the
// removal) is refused, so no request is taken after RemoveExport cut the
// export's clients off (the time the agent reports as stopped_at).
func TestRemovedExportCannotBeSelected(t *testing.T) {
	srv := NewServer(nil)
	if err := srv.AddExport(Export{Name: "vol", Device: device.NewMemory(1 << 20)}); err != nil {
		t.Fatal(err)
	}
	e, err := srv.open("vol")
	if err != nil {
		t.Fatal(err)
	}
	srv.RemoveExport("vol")
	c := &serverConn{srv: srv}
	if err := c.selectExport(e); err == nil || c.export != nil {
		t.Fatalf("a removed export was selected (err %v)", err)
	}
}

// TestCutExportDoesNotWaitForStuckRequests: CutExport (the agent's
// self-fence on losing its lease) cuts every client of the export off at
// once and returns while a request is still stuck in the device; the
// stuck request's reply never reaches its client, and ExportNames no
// longer lists the export.
func TestCutExportDoesNotWaitForStuckRequests(t *testing.T) {
	srv, sock := startServer(t)
	dev := &stuckWrites{Device: device.NewMemory(1 << 20), started: make(chan struct{}), release: make(chan struct{})}
	if err := srv.AddExport(Export{Name: "vol", Device: dev}); err != nil {
		t.Fatal(err)
	}
	stuck := dialT(t, sock, ClientOptions{Export: "vol"})
	other := dialT(t, sock, ClientOptions{Export: "vol"})
	mustOK(t, other.ReadAt(make([]byte, 4096), 0))
	wrote := make(chan error, 1)
	go func() { wrote <- stuck.WriteAt(make([]byte, 4096), 0, false) }()
	<-dev.started
	cut := make(chan struct{})
	go func() { srv.CutExport("vol"); close(cut) }()
	select {
	case <-cut:
	case <-time.After(5 * time.Second):
		t.Fatal("CutExport waited for a request stuck in the device")
	}
	if names := srv.ExportNames(); len(names) != 0 {
		t.Fatalf("ExportNames after the cut: %v", names)
	}
	if err := other.ReadAt(make([]byte, 4096), 0); err == nil {
		t.Fatal("a client of the cut export was still served")
	}
	close(dev.release)
	if err := <-wrote; err == nil {
		t.Fatal("the stuck write was acknowledged after its export was cut off")
	}
}
