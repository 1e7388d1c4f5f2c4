package replica

import (
	"bytes"
	"errors"
	"path/filepath"
	"sync"
	"testing"

	"github.com/hacs/hacs/internal/device"
	"github.com/hacs/hacs/internal/store"
)

func TestEpochFencing(t *testing.T) {
	for _, kind := range []string{"files", "pool"} {
		t.Run(kind, func(t *testing.T) {
			dir := t.TempDir()
			var op Opener = DirOpener{Dir: filepath.Join(dir, "data")}
			if kind == "pool" {
				p, err := store.OpenOrCreatePool(filepath.Join(dir, "pool"), store.PoolOptions{})
				if err != nil {
					t.Fatal(err)
				}
				op = PoolOpener{Pool: p}
			}
			h, err := NewHost(filepath.Join(dir, "state"), op)
			if err != nil {
				t.Fatal(err)
			}
			old, err := h.Acquire("vol", 3, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			if err := old.WriteAt([]byte("old"), 0, false); err != nil {
				t.Fatal(err)
			}
			// Requests of the old primary in flight while the new one
			// arrives finish first; later ones are refused.
			var wg sync.WaitGroup
			for i := 0; i < 8; i++ {
				wg.Add(1)
				go func() { defer wg.Done(); old.WriteAt([]byte("old"), 4096, false) }()
			}
			newer, err := h.Acquire("vol", 4, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			wg.Wait()
			if err := old.WriteAt([]byte("stale"), 0, false); !errors.Is(err, ErrStaleEpoch) {
				t.Fatalf("old epoch write: %v", err)
			}
			if _, err := h.Acquire("vol", 3, 0); !errors.Is(err, ErrStaleEpoch) {
				t.Fatalf("old epoch acquire: %v", err)
			}
			got := make([]byte, 3)
			if err := newer.ReadAt(got, 0); err != nil || !bytes.Equal(got, []byte("old")) {
				t.Fatalf("read %q %v", got, err)
			}
			old.Close()
			newer.Close()
			// The fence survives a restart of the host.
			h2, err := NewHost(filepath.Join(dir, "state"), op)
			if err != nil {
				t.Fatal(err)
			}
			if e, _ := h2.Epoch("vol"); e != 4 {
				t.Fatalf("epoch after restart %d", e)
			}
			if _, err := h2.Acquire("vol", 3, 0); !errors.Is(err, ErrStaleEpoch) {
				t.Fatalf("old epoch after restart: %v", err)
			}
			if _, err := h2.Acquire("vol", 4, 2<<20); err == nil {
				t.Fatal("size mismatch accepted")
			}
		})
	}
}

func TestExportNames(t *testing.T) {
	v, e, s, err := ParseExportName(ExportName("db-1", 7, 4096))
	if err != nil || v != "db-1" || e != 7 || s != 4096 {
		t.Fatalf("%q %d %d %v", v, e, s, err)
	}
	for _, bad := range []string{"vol", "vol@x@1", "vol@1@-5", "a@1@2@3"} {
		if _, _, _, err := ParseExportName(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if ValidName("../etc") == nil || ValidName(".hidden") == nil || ValidName("") == nil {
		t.Fatal("bad names accepted")
	}
}

// TestUse: an administrative use shares the device a primary has open;
// with a fence it shuts out the earlier handles like a newer primary, and
// an older fence is refused; a missing replica is not created.
func TestUse(t *testing.T) {
	dir := t.TempDir()
	p, err := store.OpenOrCreatePool(filepath.Join(dir, "pool"), store.PoolOptions{})
	if err != nil {
		t.Fatal(err)
	}
	h, err := NewHost(filepath.Join(dir, "state"), PoolOpener{Pool: p})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Use("nope", 0, func(device.Device) error { return nil }); err == nil {
		t.Fatal("Use created a missing replica")
	}
	hd, err := h.Acquire("vol", 2, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if err := hd.WriteAt([]byte("data"), 0, false); err != nil {
		t.Fatal(err)
	}
	snap := func(d device.Device) error { return d.(*store.Volume).Snapshot("s1") }
	if err := h.Use("vol", 0, snap); err != nil {
		t.Fatal(err)
	}
	if err := hd.WriteAt([]byte("more"), 0, false); err != nil {
		t.Fatalf("a use without fence cut the primary off: %v", err)
	}
	if err := h.Use("vol", 1, func(device.Device) error { return nil }); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("older fence: %v", err)
	}
	if err := h.Use("vol", 2, func(d device.Device) error { return d.(*store.Volume).Revert("s1", false) }); err != nil {
		t.Fatal(err)
	}
	if err := hd.WriteAt([]byte("late"), 0, false); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("a write of the fenced handle after the revert: %v", err)
	}
	hd.Close()
	hd2, err := h.Acquire("vol", 2, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer hd2.Close()
	got := make([]byte, 4)
	if err := hd2.ReadAt(got, 0); err != nil || string(got) != "data" {
		t.Fatalf("after revert: %q %v", got, err)
	}
}
