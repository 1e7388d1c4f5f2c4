package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/hacs/hacs/internal/device"
)

func newPool(t testing.TB) *Pool {
	t.Helper()
	p, err := CreatePool(filepath.Join(t.TempDir(), "pool"), PoolOptions{Overcommit: 100})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func newVolume(t testing.TB, p *Pool, name string, size int64) *Volume {
	t.Helper()
	if err := p.CreateVolume(name, size); err != nil {
		t.Fatal(err)
	}
	v, err := p.OpenVolume(name, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

// fill returns a deterministic non-zero pattern.
func pattern(seed int64, n int) []byte {
	p := make([]byte, n)
	r := rand.New(rand.NewSource(seed))
	r.Read(p)
	for i := range p {
		if p[i] == 0 {
			p[i] = 1
		}
	}
	return p
}

func readAll(t testing.TB, d device.Device) []byte {
	t.Helper()
	b := make([]byte, d.Size())
	if err := d.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// sameAs compares two devices block by block and names the first
// differing block.
func sameAs(t testing.TB, what string, got, want device.Device) {
	t.Helper()
	if got.Size() != want.Size() {
		t.Fatalf("%s: size %d, want %d", what, got.Size(), want.Size())
	}
	g, w := readAll(t, got), readAll(t, want)
	for off := 0; off < len(g); off += blockSize {
		e := min(off+blockSize, len(g))
		if !bytes.Equal(g[off:e], w[off:e]) {
			i := off
			for g[i] == w[i] {
				i++
			}
			t.Fatalf("%s: block %d differs (first at byte %d: got %#x want %#x)", what, off/blockSize, i, g[i], w[i])
		}
	}
	checkExtents(t, what, got)
}

// checkExtents verifies that extents cover the device and that what they
// report as holes/zero reads as zeroes.
func checkExtents(t testing.TB, what string, d device.Device) {
	t.Helper()
	data := readAll(t, d)
	for pos := int64(0); pos < d.Size(); {
		ext, err := d.Extents(pos, d.Size()-pos)
		if err != nil {
			t.Fatalf("%s: extents: %v", what, err)
		}
		if len(ext) == 0 {
			t.Fatalf("%s: no extents at %d", what, pos)
		}
		for _, e := range ext {
			if e.Length <= 0 {
				t.Fatalf("%s: empty extent at %d", what, pos)
			}
			if e.Flags&device.ExtentZero != 0 && !device.IsZero(data[pos:pos+e.Length]) {
				t.Fatalf("%s: extent [%d,+%d) flagged zero but has data", what, pos, e.Length)
			}
			pos += e.Length
		}
	}
}

func snapModel(t testing.TB, m *device.Memory) *device.Memory {
	c := device.NewMemory(m.Size())
	b := readAll(t, m)
	for off := 0; off < len(b); off += blockSize {
		if !device.IsZero(b[off : off+blockSize]) {
			c.WriteAt(b[off:off+blockSize], int64(off), false)
		}
	}
	return c
}

func TestUnalignedIOAcrossBlocksAndLayers(t *testing.T) {
	const size = 1 << 20
	type op struct {
		snap     string // take a snapshot first
		off, len int64
		zero     bool
	}
	cases := []struct {
		name string
		ops  []op
	}{
		{"single byte", []op{{off: 5, len: 1}}},
		{"across 4k boundary", []op{{off: 4090, len: 20}}},
		{"sub-block then neighbours", []op{{off: 0, len: 8192}, {snap: "s1", off: 4000, len: 200}, {off: 4100, len: 10}}},
		{"partial over lower layer", []op{{off: 0, len: 3 * 4096}, {snap: "s1", off: 512, len: 512}, {off: 8192 + 100, len: 4096}}},
		{"spanning many blocks unaligned", []op{{off: 100, len: 100000}, {snap: "a", off: 50000, len: 70001}, {snap: "b", off: 3, len: 9000}}},
		{"zero partial over lower", []op{{off: 0, len: 65536}, {snap: "s", off: 1000, len: 10000, zero: true}}},
		{"zero whole blocks over lower and none", []op{{off: 8192, len: 8192}, {snap: "s", off: 0, len: 65536, zero: true}, {off: 4096, len: 100}}},
		{"last byte", []op{{off: size - 1, len: 1}, {snap: "s", off: size - 4097, len: 4097}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := newPool(t)
			v := newVolume(t, p, "v", size)
			model := device.NewMemory(size)
			snaps := map[string]*device.Memory{}
			for i, o := range tc.ops {
				if o.snap != "" {
					if err := v.Snapshot(o.snap); err != nil {
						t.Fatal(err)
					}
					snaps[o.snap] = snapModel(t, model)
				}
				if o.zero {
					if err := v.WriteZeroes(o.off, o.len, 0); err != nil {
						t.Fatal(err)
					}
					model.WriteZeroes(o.off, o.len, 0)
				} else {
					data := pattern(int64(i), int(o.len))
					if err := v.WriteAt(data, o.off, false); err != nil {
						t.Fatal(err)
					}
					model.WriteAt(data, o.off, false)
				}
				sameAs(t, "head", v, model)
				// unaligned reads across layer boundaries
				for _, r := range [][2]int64{{o.off - 3, o.len + 7}, {o.off + 1, 4096}, {0, 3}} {
					off, n := max(r[0], 0), r[1]
					n = min(n, size-off)
					got, want := make([]byte, n), make([]byte, n)
					if err := v.ReadAt(got, off); err != nil {
						t.Fatal(err)
					}
					model.ReadAt(want, off)
					if !bytes.Equal(got, want) {
						t.Fatalf("read [%d,+%d) differs", off, n)
					}
				}
			}
			for name, m := range snaps {
				s, err := v.OpenSnapshot(name)
				if err != nil {
					t.Fatal(err)
				}
				sameAs(t, "snapshot "+name, s, m)
				s.Close()
			}
			// and the same after reopening
			v.Close()
			v2, err := p.OpenVolume("v", Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer v2.Close()
			sameAs(t, "head after reopen", v2, model)
		})
	}
}

func TestRangeAndErrors(t *testing.T) {
	p := newPool(t)
	v := newVolume(t, p, "v", 64<<10)
	if err := v.WriteAt(make([]byte, 10), 64<<10-5, false); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write past end: %v, want ENOSPC", err)
	}
	if err := v.ReadAt(make([]byte, 10), 64<<10-5); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("read past end: %v, want EINVAL", err)
	}
	if _, err := p.OpenVolume("v", Options{}); !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("second open: %v, want EBUSY", err)
	}
	if err := v.Snapshot("bad/name"); err == nil {
		t.Fatal("bad snapshot name accepted")
	}
	if err := v.Snapshot("s"); err != nil {
		t.Fatal(err)
	}
	if err := v.Snapshot("s"); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("duplicate snapshot: %v", err)
	}
	if err := v.DeleteSnapshot("nope"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("delete missing: %v", err)
	}
	s, err := v.OpenSnapshot("s")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.WriteAt([]byte{1}, 0, false); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("snapshot write: %v", err)
	}
	if err := v.DeleteSnapshot("s"); !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("delete open snapshot: %v", err)
	}
	s.Close()
	if err := v.Resize(32<<10, false); err == nil || !strings.Contains(err.Error(), "force") {
		t.Fatalf("shrink without force: %v", err)
	}
	if err := v.WriteZeroes(0, 4096, device.ZeroFast); err != nil {
		t.Fatalf("fast zero with nothing below: %v", err)
	}
	v.WriteAt(pattern(1, 4096), 0, false)
	v.Snapshot("t")
	if err := v.WriteZeroes(0, 4096, device.ZeroFast); !errors.Is(err, syscall.ENOTSUP) {
		t.Fatalf("fast zero over snapshot data: %v, want ENOTSUP", err)
	}
	if err := p.DeleteVolume("v"); !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("delete open volume: %v", err)
	}
	v.Close()
	if err := v.ReadAt(make([]byte, 1), 0); !errors.Is(err, syscall.ESHUTDOWN) {
		t.Fatalf("read after close: %v", err)
	}
	if err := p.DeleteVolume("v"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.OpenVolume("v", Options{}); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("open deleted: %v", err)
	}
}

func TestOvercommit(t *testing.T) {
	p, err := CreatePool(filepath.Join(t.TempDir(), "pool"), PoolOptions{Overcommit: 1.5})
	if err != nil {
		t.Fatal(err)
	}
	st, err := p.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Capacity <= 0 || st.Limit != int64(float64(st.Capacity)*1.5) {
		t.Fatalf("stats %+v", st)
	}
	big := (st.Limit/2)&^(blockSize-1) + blockSize
	if err := p.CreateVolume("a", big); err != nil {
		t.Fatal(err)
	}
	err = p.CreateVolume("b", big)
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "overcommit 1.50") {
		t.Fatalf("create past limit: %v", err)
	}
	t.Log(err)
	v, err := p.OpenVolume("a", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if err := v.Resize(big*2, false); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("grow past limit: %v", err)
	}
	// reopening the pool keeps the ratio
	p2, err := OpenPool(p.Dir())
	if err != nil || p2.Overcommit() != 1.5 {
		t.Fatalf("reopen: %v %v", p2, err)
	}
}

func TestSnapshotDeleteRevertClone(t *testing.T) {
	const size = 2 << 20
	type step struct {
		op   string // write, trim, snap, del, revert, revertf, clone, reopen, grow, shrink
		arg  string
		off  int64
		n    int64
		fail bool
	}
	W := func(off, n int64) step { return step{op: "write", off: off, n: n} }
	cases := []struct {
		name  string
		steps []step
	}{
		{"delete oldest", []step{W(0, 65536), {op: "snap", arg: "a"}, W(4096, 8192), {op: "snap", arg: "b"}, W(100, 10), {op: "del", arg: "a"}}},
		{"delete newest into head", []step{W(0, 65536), {op: "snap", arg: "a"}, W(4096, 100), {op: "del", arg: "a"}, W(0, 3)}},
		{"delete middle", []step{W(0, 1<<20), {op: "snap", arg: "a"}, W(8192, 1<<19), {op: "snap", arg: "b"}, {op: "trim", off: 0, n: 1 << 20}, {op: "snap", arg: "c"}, W(77, 5000), {op: "del", arg: "b"}, {op: "del", arg: "c"}, {op: "del", arg: "a"}}},
		{"trim over snapshot then delete", []step{W(0, 1<<20), {op: "snap", arg: "a"}, {op: "trim", off: 4096, n: 1 << 19}, {op: "del", arg: "a"}, {op: "reopen"}}},
		{"revert", []step{W(0, 65536), {op: "snap", arg: "a"}, W(0, 1<<20), {op: "revert", arg: "a"}, W(5, 5)}},
		{"revert needs force", []step{W(0, 4096), {op: "snap", arg: "a"}, W(0, 8192), {op: "snap", arg: "b"}, {op: "revert", arg: "a", fail: true}, {op: "revertf", arg: "a"}, {op: "reopen"}}},
		{"clone", []step{W(0, 65536), {op: "trim", off: 4096, n: 4096}, {op: "snap", arg: "a"}, W(0, 1<<20), {op: "clone", arg: "a"}}},
		{"grow and shrink", []step{W(0, 65536), {op: "snap", arg: "a"}, {op: "grow", n: 4 << 20}, W(3<<20, 65536), {op: "snap", arg: "b"}, {op: "reopen"}, {op: "shrink", n: 1 << 20}, {op: "reopen"}}},
		{"many snapshots", func() []step {
			var s []step
			for i := 0; i < 25; i++ {
				s = append(s, W(int64(i)*40000, 70000), step{op: "snap", arg: fmt.Sprint("s", i)})
			}
			s = append(s, step{op: "reopen"})
			for i := 0; i < 25; i += 2 {
				s = append(s, step{op: "del", arg: fmt.Sprint("s", i)})
			}
			return s
		}()},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := newPool(t)
			v := newVolume(t, p, "v", size)
			model := device.NewMemory(size)
			snaps := map[string]*device.Memory{}
			for i, s := range tc.steps {
				var err error
				switch s.op {
				case "write":
					d := pattern(int64(i)+100, int(s.n))
					err = v.WriteAt(d, s.off, false)
					model.WriteAt(d, s.off, false)
				case "trim":
					err = v.Trim(s.off, s.n)
					model.Trim(s.off, s.n)
				case "snap":
					err = v.Snapshot(s.arg)
					snaps[s.arg] = snapModel(t, model)
				case "del":
					err = v.DeleteSnapshot(s.arg)
					delete(snaps, s.arg)
				case "revert", "revertf":
					err = v.Revert(s.arg, s.op == "revertf")
					if err == nil {
						model = snapModel(t, snaps[s.arg])
						// newer snapshots are gone
						var names []string
						for _, si := range v.Snapshots() {
							names = append(names, si.Name)
						}
						for n := range snaps {
							if !strings.Contains(" "+strings.Join(names, " ")+" ", " "+n+" ") {
								delete(snaps, n)
							}
						}
					}
				case "clone":
					// the progress goes forward, up to the snapshot's size
					var last, total int64 = -1, -1
					err = v.CloneProgress(s.arg, "c", func(done, all int64) {
						if done < last || done > all || (total >= 0 && all != total) {
							t.Errorf("clone progress %d of %d after %d of %d", done, all, last, total)
						}
						last, total = done, all
					})
					if err == nil && (last != total || total != snaps[s.arg].Size()) {
						t.Errorf("clone progress ended at %d of %d (snapshot of %d bytes)", last, total, snaps[s.arg].Size())
					}
					if err == nil {
						c, err := p.OpenVolume("c", Options{})
						if err != nil {
							t.Fatal(err)
						}
						sameAs(t, "clone", c, snaps[s.arg])
						// the clone is sparse: no more allocated than data
						c.Close()
					}
				case "reopen":
					v.Close()
					v, err = p.OpenVolume("v", Options{})
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { v.Close() })
				case "grow", "shrink":
					err = v.Resize(s.n, s.op == "shrink")
					model.Resize(s.n)
					for _, m := range snaps {
						m.Resize(s.n)
					}
				}
				if s.fail != (err != nil) {
					t.Fatalf("step %d %s %s: err %v, want failure %v", i, s.op, s.arg, err, s.fail)
				}
				sameAs(t, fmt.Sprintf("head after step %d (%s %s)", i, s.op, s.arg), v, model)
				if (s.op == "write" || s.op == "trim" || s.op == "snap" || len(snaps) > 8) && i != len(tc.steps)-1 {
					continue
				}
				for name, m := range snaps {
					sv, err := v.OpenSnapshot(name)
					if err != nil {
						t.Fatal(err)
					}
					if sv.Size() == m.Size() {
						sameAs(t, fmt.Sprintf("snapshot %s after step %d", name, i), sv, m)
					}
					sv.Close()
				}
				if len(v.Snapshots()) != len(snaps) {
					t.Fatalf("step %d: %d snapshots listed, model has %d", i, len(v.Snapshots()), len(snaps))
				}
			}
			// deleted snapshots leave no files behind
			files, _ := filepath.Glob(filepath.Join(p.Dir(), "volumes", "v", "layer-*"))
			if len(files) != len(snaps)+1 {
				t.Fatalf("%d layer files for %d snapshots", len(files), len(snaps))
			}
		})
	}
}

func TestSnapshotInfo(t *testing.T) {
	p := newPool(t)
	v := newVolume(t, p, "v", 1<<20)
	v.WriteAt(pattern(1, 65536), 0, false)
	if err := v.Snapshot("a"); err != nil {
		t.Fatal(err)
	}
	l := v.Snapshots()
	if len(l) != 1 || l[0].Name != "a" || l[0].Created.IsZero() || l[0].Pinned < 65536 {
		t.Fatalf("snapshots %+v", l)
	}
	vols, err := p.Volumes()
	if err != nil || len(vols) != 1 || vols[0].Snapshots != 1 || vols[0].Size != 1<<20 || vols[0].Used < 65536 {
		t.Fatalf("volumes %+v %v", vols, err)
	}
}

func TestRandomOpsVsModel(t *testing.T) {
	const size = 2 << 20
	seeds := []int64{1, 2, 3}
	for _, seed := range seeds {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			t.Parallel()
			r := rand.New(rand.NewSource(seed))
			p := newPool(t)
			v := newVolume(t, p, "v", size)
			model := device.NewMemory(size)
			snaps := map[string]*device.Memory{}
			var order []string
			nsnap := 0
			for i := 0; i < 300; i++ {
				off := r.Int63n(size)
				n := min(size-off, 1+r.Int63n(3*blockSize))
				if r.Intn(3) == 0 {
					off &^= blockMask
					n = min(size-off, (1+r.Int63n(16))*blockSize)
				}
				k := r.Intn(100)
				if os.Getenv("STORE_DEBUG") != "" {
					t.Logf("op %d k=%d off=%d n=%d", i, k, off, n)
				}
				switch {
				case k < 55:
					d := pattern(r.Int63(), int(n))
					if err := v.WriteAt(d, off, r.Intn(10) == 0); err != nil {
						t.Fatal(err)
					}
					model.WriteAt(d, off, false)
				case k < 63:
					if err := v.Trim(off, n); err != nil {
						t.Fatal(err)
					}
					model.Trim(off, n)
				case k < 70:
					fl := device.ZeroFlags(r.Intn(2)) * device.ZeroNoHole
					if err := v.WriteZeroes(off, n, fl); err != nil {
						t.Fatal(err)
					}
					model.WriteZeroes(off, n, 0)
				case k < 80:
					name := fmt.Sprint("s", nsnap)
					nsnap++
					if err := v.Snapshot(name); err != nil {
						t.Fatal(err)
					}
					snaps[name] = snapModel(t, model)
					order = append(order, name)
				case k < 88 && len(order) > 0:
					j := r.Intn(len(order))
					if err := v.DeleteSnapshot(order[j]); err != nil {
						t.Fatal(err)
					}
					delete(snaps, order[j])
					order = append(order[:j], order[j+1:]...)
				case k < 91 && len(order) > 0:
					j := r.Intn(len(order))
					if err := v.Revert(order[j], true); err != nil {
						t.Fatal(err)
					}
					model = snapModel(t, snaps[order[j]])
					for _, n := range order[j+1:] {
						delete(snaps, n)
					}
					order = order[:j+1]
				case k < 94:
					v.Close()
					var err error
					if v, err = p.OpenVolume("v", Options{}); err != nil {
						t.Fatal(err)
					}
				case k < 96:
					if err := v.Flush(); err != nil {
						t.Fatal(err)
					}
				default:
					got, want := make([]byte, n), make([]byte, n)
					if err := v.ReadAt(got, off); err != nil {
						t.Fatal(err)
					}
					model.ReadAt(want, off)
					if !bytes.Equal(got, want) {
						t.Fatalf("op %d: read [%d,+%d) differs", i, off, n)
					}
				}
				if i%50 == 49 || os.Getenv("STORE_DEBUG") != "" {
					sameAs(t, fmt.Sprint("head at op ", i), v, model)
					for _, name := range order {
						s, err := v.OpenSnapshot(name)
						if err != nil {
							t.Fatal(err)
						}
						sameAs(t, fmt.Sprint("snapshot ", name, " at op ", i), s, snaps[name])
						s.Close()
					}
				}
			}
			sameAs(t, "head", v, model)
			for _, name := range order {
				s, err := v.OpenSnapshot(name)
				if err != nil {
					t.Fatal(err)
				}
				sameAs(t, "snapshot "+name, s, snaps[name])
				s.Close()
			}
			v.Close()
		})
	}
}

// TestConcurrent runs writers of disjoint sub-block ranges (neighbours in
// the same 4 KiB blocks) against snapshots, deletions and readers.
func TestConcurrent(t *testing.T) {
	const size = 1 << 20
	p := newPool(t)
	v := newVolume(t, p, "v", size)
	base := pattern(7, size)
	if err := v.WriteAt(base, 0, false); err != nil {
		t.Fatal(err)
	}
	const writers = 8
	const piece = 512
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errc := make(chan error, 100)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := rand.New(rand.NewSource(int64(w)))
			for i := 0; i < 300; i++ {
				// writer w owns the w-th 512-byte piece of every block
				b := r.Int63n(size / blockSize)
				off := b*blockSize + int64(w)*piece
				d := pattern(int64(w*1000+i), piece)
				if err := v.WriteAt(d, off, false); err != nil {
					errc <- err
					return
				}
				copy(base[off:], d) // disjoint per writer: no race
			}
		}(w)
	}
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		buf := make([]byte, 65536)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := v.ReadAt(buf, rand.Int63n(size-65536)); err != nil {
				errc <- err
				return
			}
		}
	}()
	done := make(chan struct{})
	go func() {
		for i := 0; ; i++ {
			select {
			case <-done:
				close(stop)
				return
			default:
			}
			if err := v.Snapshot(fmt.Sprint("c", i)); err != nil {
				errc <- err
			}
			if i%2 == 1 {
				if err := v.DeleteSnapshot(fmt.Sprint("c", i-1)); err != nil {
					errc <- err
				}
			}
		}
	}()
	wg.Wait()
	close(done)
	<-stop
	<-readerDone
	select {
	case err := <-errc:
		t.Fatal(err)
	default:
	}
	got := readAll(t, v)
	if !bytes.Equal(got, base) {
		t.Fatal("content differs after concurrent writes and snapshots")
	}
}

func TestCorruptManifest(t *testing.T) {
	p := newPool(t)
	v := newVolume(t, p, "v", 1<<20)
	v.Snapshot("s")
	v.Close()
	dir := filepath.Join(p.Dir(), "volumes", "v")
	mpath := filepath.Join(dir, manifestName)
	orig, err := os.ReadFile(mpath)
	if err != nil {
		t.Fatal(err)
	}
	reseal := func(edit func(m *manifest)) []byte {
		var m manifest
		if err := json.Unmarshal(orig, &m); err != nil {
			t.Fatal(err)
		}
		edit(&m)
		b, err := encodeManifest(&m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cases := []struct {
		name    string
		content []byte
		remove  string // a layer file to remove
		short   bool
		want    string
	}{
		{name: "bad JSON", content: orig[:len(orig)/2], want: "bad JSON"},
		{name: "not JSON", content: []byte("\x00\x01garbage"), want: "bad JSON"},
		{name: "empty", content: []byte{}, want: "bad JSON"},
		{name: "checksum", content: bytes.Replace(orig, []byte(`"size": 1048576`), []byte(`"size": 2097152`), 1), want: "checksum mismatch"},
		{name: "foreign", content: []byte(`{"format":"qcow2","version":3}`), want: "not a hacs volume manifest"},
		{name: "version", content: reseal(func(m *manifest) { m.Version = 9 }), want: "unknown format version 9"},
		{name: "other name", content: reseal(func(m *manifest) { m.Name = "w" }), want: `names volume "w"`},
		{name: "bad size", content: reseal(func(m *manifest) { m.Size = 1000 }), want: "invalid size"},
		{name: "head is snapshot", content: reseal(func(m *manifest) { m.Layers[1].Snapshot = "x" }), want: "must be the writable head"},
		{name: "path in file", content: reseal(func(m *manifest) { m.Layers[0].File = "../x.img" }), want: "invalid file name"},
		{name: "missing layer", remove: layerFileName(1), want: "which is missing"},
		{name: "short layer", short: true, want: "shorter than the volume size"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			content := orig
			if tc.content != nil {
				content = tc.content
			}
			if err := os.WriteFile(mpath, content, 0o600); err != nil {
				t.Fatal(err)
			}
			defer os.WriteFile(mpath, orig, 0o600)
			if tc.remove != "" {
				lp := filepath.Join(dir, tc.remove)
				os.Rename(lp, lp+".bak")
				defer os.Rename(lp+".bak", lp)
			}
			if tc.short {
				lp := filepath.Join(dir, layerFileName(1))
				os.Truncate(lp, 4096)
				defer os.Truncate(lp, 1<<20)
			}
			_, err := p.OpenVolume("v", Options{})
			if err == nil {
				t.Fatal("open succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), dir) {
				t.Fatalf("error %q does not name the file and %q", err, tc.want)
			}
			t.Log(err)
		})
	}
	// intact again: opens, and the files are untouched by the failures
	v, err = p.OpenVolume("v", Options{})
	if err != nil {
		t.Fatal(err)
	}
	v.Close()
	// a corrupt pool.json
	os.WriteFile(filepath.Join(p.Dir(), poolConfigName), []byte(`{"format":"hacs-pool","version":1,"overcommit":2,"checksum":"sha256:00"}`), 0o600)
	if _, err := OpenPool(p.Dir()); err == nil || !strings.Contains(err.Error(), "checksum mismatch") {
		t.Fatalf("corrupt pool.json: %v", err)
	}
}
