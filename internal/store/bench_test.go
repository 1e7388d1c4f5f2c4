package store

import (
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hacs/hacs/internal/device"
)

const benchSize = 256 << 20

var (
	benchMu   sync.Mutex
	benchDevs = map[string]device.Device{}
	benchDir  string
)

// benchDevice returns (building once per process) a fully written device:
// a plain device.File, or a pool volume with n snapshots below its head.
// With snapshots, the data is spread over the layers: the base holds all
// of it and each snapshot layer a random 5% of the blocks.
func benchDevice(b *testing.B, kind string, snaps int) device.Device {
	benchMu.Lock()
	defer benchMu.Unlock()
	key := fmt.Sprint(kind, snaps)
	if d := benchDevs[key]; d != nil {
		return d
	}
	if benchDir == "" {
		var err error
		if benchDir, err = os.MkdirTemp("", "hacs-store-bench-"); err != nil {
			b.Fatal(err)
		}
	}
	var d device.Device
	var v *Volume
	if kind == "file" || kind == "file4k" {
		f, err := device.OpenFile(filepath.Join(benchDir, kind+".img"), benchSize, false)
		if err != nil {
			b.Fatal(err)
		}
		d = f
	} else {
		p, err := OpenOrCreatePool(filepath.Join(benchDir, "pool"), PoolOptions{Overcommit: 100})
		if err != nil {
			b.Fatal(err)
		}
		name := fmt.Sprint("v", snaps)
		if err := p.CreateVolume(name, benchSize); err != nil {
			b.Fatal(err)
		}
		if v, err = p.OpenVolume(name, Options{}); err != nil {
			b.Fatal(err)
		}
		d = v
	}
	buf := pattern(1, 1<<20)
	wsize := int64(len(buf))
	if kind == "file4k" {
		// Written 4 KiB at a time, like the snapshot layers: the page
		// cache then holds small folios, which the kernel reads slower
		// than the large ones of a sequentially written file.
		wsize = blockSize
	}
	for off := int64(0); off < benchSize; off += wsize {
		if err := d.WriteAt(buf[:wsize], off, false); err != nil {
			b.Fatal(err)
		}
	}
	r := rand.New(rand.NewSource(2))
	for i := 0; i < snaps; i++ {
		if err := v.Snapshot(fmt.Sprint("s", i)); err != nil {
			b.Fatal(err)
		}
		for j := 0; j < benchSize/blockSize/20; j++ {
			if err := d.WriteAt(buf[:blockSize], r.Int63n(benchSize/blockSize)*blockSize, false); err != nil {
				b.Fatal(err)
			}
		}
	}
	if v != nil && snaps > 0 {
		// the head starts empty, as right after a snapshot
		if err := v.Snapshot("last"); err != nil {
			b.Fatal(err)
		}
	}
	d.Flush()
	benchDevs[key] = d
	return d
}

// benchRandom runs 4 KiB random reads or writes with 32 requests in
// flight (32 goroutines), like an NBD client at queue depth 32.
func benchRandom(b *testing.B, d device.Device, write bool) {
	b.SetBytes(blockSize)
	b.SetParallelism((32 + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	var seed atomic.Int64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		r := rand.New(rand.NewSource(seed.Add(1)))
		buf := pattern(seed.Load(), blockSize)
		for pb.Next() {
			off := r.Int63n(benchSize/blockSize) * blockSize
			var err error
			if write {
				err = d.WriteAt(buf, off, false)
			} else {
				err = d.ReadAt(buf, off)
			}
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func benchKinds(b *testing.B, write bool) {
	for _, k := range []struct {
		name  string
		kind  string
		snaps int
	}{{"file", "file", 0}, {"file-4k-written", "file4k", 0}, {"volume-0snap", "volume", 0}, {"volume-20snap", "volume", 20}} {
		b.Run(k.name, func(b *testing.B) {
			benchRandom(b, benchDevice(b, k.kind, k.snaps), write)
		})
	}
}

func BenchmarkRandRead4k(b *testing.B)  { benchKinds(b, false) }
func BenchmarkRandWrite4k(b *testing.B) { benchKinds(b, true) }
