package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hacs/hacs/internal/device"
)

// layer is one sparse file of a volume's chain.
type layer struct {
	meta manifestLayer
	slot uint8 // base-index slot of a frozen layer; 0 for the head
	dev  *device.File
	path string
}

// stripe is one lock of the striped lock table, padded to a cache line so
// that neighbouring stripes do not share one.
type stripe struct {
	sync.RWMutex
	_ [64 - 24]byte
}

// Volume is a thin volume of a pool: a device.Device whose head is
// writable, with snapshots below it. It is safe for concurrent use.
type Volume struct {
	pool     *Pool
	name     string
	dir      string
	readOnly bool
	lockFile *os.File

	size   atomic.Int64
	closed atomic.Bool
	head   atomic.Pointer[layer] // for Flush; the I/O path reads top

	stripes [nStripes]stripe

	// Guarded by the stripes: read with any covering stripe held, replaced
	// only with all stripes held for writing.
	top   *layer
	bits  *headMap
	base  *baseMap
	slots [maxSlots + 1]*layer

	// flushMu keeps the head from being swapped or closed under Flush.
	flushMu sync.RWMutex

	// admin serialises metadata operations (snapshot, delete, revert,
	// resize, clone, close). chain and man change only with admin held and,
	// for chain, all stripes held too.
	admin sync.Mutex
	chain []*layer // bottom first, head last
	man   manifest // as last committed
	views map[*Snapshot]struct{}
}

// Options tune OpenVolume.
type Options struct {
	// ReadOnly refuses writes and metadata changes; pending snapshot
	// deletions are not resumed.
	ReadOnly bool
}

var copyBufs = sync.Pool{New: func() any { return new([blockSize]byte) }}

// openVolume opens the volume in dir. The caller has validated the name.
func openVolume(p *Pool, name, dir string, opt Options) (_ *Volume, err error) {
	lf, err := lockVolumeDir(dir)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			lf.Close()
		}
	}()
	m, err := readManifest(dir, name)
	if err != nil {
		return nil, err
	}
	v := &Volume{pool: p, name: name, dir: dir, readOnly: opt.ReadOnly, lockFile: lf, man: *m, views: map[*Snapshot]struct{}{}}
	defer func() {
		if err != nil {
			for _, l := range v.chain {
				l.dev.Close()
			}
		}
	}()
	used := map[string]bool{}
	nextSlot := uint8(1)
	for i, ml := range m.Layers {
		path := filepath.Join(dir, ml.File)
		used[ml.File] = true
		st, err := os.Stat(path)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("volume %s: manifest %s names layer file %s, which is missing", name, filepath.Join(dir, manifestName), path)
			}
			return nil, fmt.Errorf("volume %s: %w", name, err)
		}
		if !st.Mode().IsRegular() {
			return nil, fmt.Errorf("volume %s: layer file %s is not a regular file", name, path)
		}
		if st.Size() < m.Size {
			return nil, fmt.Errorf("volume %s: layer file %s is %d bytes, shorter than the volume size %d in %s", name, path, st.Size(), m.Size, filepath.Join(dir, manifestName))
		}
		if st.Size() > m.Size && !opt.ReadOnly {
			// An interrupted resize: the manifest decides.
			if err := os.Truncate(path, m.Size); err != nil {
				return nil, fmt.Errorf("volume %s: %w", name, err)
			}
		}
		dev, err := device.OpenFile(path, 0, opt.ReadOnly)
		if err != nil {
			return nil, fmt.Errorf("volume %s: %w", name, err)
		}
		l := &layer{meta: ml, dev: dev, path: path}
		if i < len(m.Layers)-1 {
			l.slot = nextSlot
			nextSlot++
			v.slots[l.slot] = l
		}
		v.chain = append(v.chain, l)
	}
	v.top = v.chain[len(v.chain)-1]
	v.head.Store(v.top)
	v.size.Store(m.Size)
	if v.base, err = buildIndex(v.chain[:len(v.chain)-1], m.Size); err != nil {
		return nil, fmt.Errorf("volume %s: %w", name, err)
	}
	if v.bits, err = scanHead(v.top, m.Size); err != nil {
		return nil, fmt.Errorf("volume %s: %w", name, err)
	}
	if !opt.ReadOnly {
		// Layer files the manifest does not name are leftovers of an
		// operation a crash interrupted before (or after) its commit.
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if layerFileRE.MatchString(e.Name()) && !used[e.Name()] {
				os.Remove(filepath.Join(dir, e.Name()))
			}
		}
		os.Remove(filepath.Join(dir, manifestName+".tmp"))
		// Resume interrupted snapshot deletions. A failure (say, a full
		// filesystem) leaves the volume fully usable; the next delete
		// retries.
		v.admin.Lock()
		v.finishDeletes()
		v.admin.Unlock()
	}
	return v, nil
}

// lockVolumeDir takes the volume's exclusive lock (flock), so that two
// processes, or two opens in one process, never drive the same volume.
func lockVolumeDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, "lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock volume: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("volume %s is already open (by this or another process): %w", dir, syscall.EBUSY)
		}
		return nil, fmt.Errorf("lock volume %s: %w", dir, err)
	}
	return f, nil
}

// scanExtents calls fn for every data run [off, off+n) of a layer file, in
// whole blocks (a partly allocated block counts as present).
func scanExtents(l *layer, size int64, fn func(b0, b1 int64)) error {
	for pos := int64(0); pos < size; {
		ext, err := l.dev.Extents(pos, size-pos)
		if err != nil {
			return fmt.Errorf("scan %s: %w", l.path, err)
		}
		for _, e := range ext {
			if e.Flags&device.ExtentHole == 0 && e.Length > 0 {
				fn(pos>>blockShift, (pos+e.Length-1)>>blockShift)
			}
			pos += e.Length
		}
		if len(ext) == 0 {
			break
		}
	}
	return nil
}

// buildIndex maps every block to the topmost of the given frozen layers
// (bottom first) that holds it.
func buildIndex(layers []*layer, size int64) (*baseMap, error) {
	m := newBaseMap(size >> blockShift)
	for _, l := range layers {
		if err := scanExtents(l, size, func(b0, b1 int64) { m.setRange(b0, b1, l.slot) }); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func scanHead(l *layer, size int64) (*headMap, error) {
	h := newHeadMap(size >> blockShift)
	err := scanExtents(l, size, func(b0, b1 int64) { h.setRange(b0, b1) })
	return h, err
}

// --- stripe locks ---

func stripeSpan(off, n int64) (lo, hi int, wrap bool) {
	if n < 1 {
		n = 1
	}
	g0, g1 := off>>granuleShift, (off+n-1)>>granuleShift
	if g1-g0+1 >= nStripes {
		return 0, nStripes - 1, false
	}
	lo, hi = int(g0&stripeMask), int(g1&stripeMask)
	return lo, hi, lo > hi
}

// eachStripe applies fn to the stripes of [off, off+n), in ascending order
// (so that every locker takes them in the same order).
func (v *Volume) eachStripe(off, n int64, fn func(*sync.RWMutex)) {
	lo, hi, wrap := stripeSpan(off, n)
	if wrap {
		for i := 0; i <= hi; i++ {
			fn(&v.stripes[i].RWMutex)
		}
		hi = nStripes - 1
	}
	for i := lo; i <= hi; i++ {
		fn(&v.stripes[i].RWMutex)
	}
}

// rlock takes the stripes of [off, off+n) shared (reads, extents).
func (v *Volume) rlock(off, n int64)   { v.eachStripe(off, n, (*sync.RWMutex).RLock) }
func (v *Volume) runlock(off, n int64) { v.eachStripe(off, n, (*sync.RWMutex).RUnlock) }

// wlock takes the stripes of [off, off+n) exclusively: writes, trims and
// zeroes hold them so that a concurrent read of the same block sees the old
// content or the new, never a mix (the page cache gives no atomicity
// between a pread and a pwrite of the same page).
func (v *Volume) wlock(off, n int64)   { v.eachStripe(off, n, (*sync.RWMutex).Lock) }
func (v *Volume) wunlock(off, n int64) { v.eachStripe(off, n, (*sync.RWMutex).Unlock) }

func (v *Volume) lockAll() {
	for i := range v.stripes {
		v.stripes[i].Lock()
	}
}

func (v *Volume) unlockAll() {
	for i := range v.stripes {
		v.stripes[i].Unlock()
	}
}

func (v *Volume) stripeOf(off int64) *stripe {
	return &v.stripes[(off>>granuleShift)&stripeMask]
}

// --- device.Device ---

// Name is the volume's name in its pool.
func (v *Volume) Name() string { return v.name }

// Size implements device.Device.
func (v *Volume) Size() int64 { return v.size.Load() }

// Capabilities implements device.Device.
func (v *Volume) Capabilities() device.Capabilities {
	return device.Capabilities{
		ReadOnly: v.readOnly, Flush: true, FUA: true, Trim: true, Zero: true,
		FastZero: true, Extents: true, MultiConn: true,
	}
}

// source returns the layer block b is read from (nil: zeroes). Call with
// the block's stripe held.
func (v *Volume) source(b int64) *layer {
	if v.bits.test(b) {
		return v.top
	}
	if s := v.base.get(b); s != 0 {
		return v.slots[s]
	}
	return nil
}

// ReadAt implements device.Device.
func (v *Volume) ReadAt(p []byte, off int64) error {
	n := int64(len(p))
	if err := device.CheckRange(off, n, v.size.Load()); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	v.rlock(off, n)
	defer v.runlock(off, n)
	if v.closed.Load() {
		return device.ErrClosed
	}
	return readLayers(p, off, v.source)
}

// readLayers reads [off, off+len(p)) block run by block run from the layer
// that source names for each block (nil: a hole, reads as zeroes).
func readLayers(p []byte, off int64, source func(block int64) *layer) error {
	end := off + int64(len(p))
	for pos := off; pos < end; {
		src := source(pos >> blockShift)
		next := (pos>>blockShift + 1) << blockShift
		for next < end && source(next>>blockShift) == src {
			next += blockSize
		}
		stop := min(next, end)
		buf := p[pos-off : stop-off]
		if src == nil {
			clear(buf)
		} else if err := src.dev.ReadAt(buf, pos); err != nil {
			return err
		}
		pos = stop
	}
	return nil
}

// needsCopyUp tells whether a partial write to block b must first copy
// the block's older content into the head. Call with b's stripe held.
func (v *Volume) needsCopyUp(b int64) bool {
	return !v.bits.test(b) && v.base.get(b) != 0
}

// WriteAt implements device.Device.
func (v *Volume) WriteAt(p []byte, off int64, fua bool) error {
	if v.readOnly {
		return device.ErrReadOnly
	}
	n := int64(len(p))
	if err := device.CheckRange(off, n, v.size.Load()); err != nil {
		return fmt.Errorf("write: %w: %w", err, device.ErrNoSpace)
	}
	if n > 0 {
		if err := v.write(p, off); err != nil {
			return err
		}
	}
	if fua {
		return v.Flush()
	}
	return nil
}

func (v *Volume) write(p []byte, off int64) error {
	n := int64(len(p))
	end := off + n
	first, last := off>>blockShift, (end-1)>>blockShift
	headPartial := off&blockMask != 0 || (first == last && end&blockMask != 0)
	tailPartial := end&blockMask != 0 && last != first
	v.wlock(off, n)
	if v.closed.Load() {
		v.wunlock(off, n)
		return device.ErrClosed
	}
	if !(headPartial && v.needsCopyUp(first)) && !(tailPartial && v.needsCopyUp(last)) {
		err := v.writeHead(p, off)
		v.wunlock(off, n)
		return err
	}
	v.wunlock(off, n)
	// Slow path: a partial block whose data lives below the head.
	a, z := off, end
	if headPartial {
		a = min((first+1)<<blockShift, end)
		if err := v.writePartial(p[:a-off], off); err != nil {
			return err
		}
	}
	if tailPartial {
		z = last << blockShift
		if err := v.writePartial(p[z-off:], z); err != nil {
			return err
		}
	}
	if z > a {
		v.wlock(a, z-a)
		defer v.wunlock(a, z-a)
		if v.closed.Load() {
			return device.ErrClosed
		}
		return v.writeHead(p[a-off:z-off], a)
	}
	return nil
}

// writeHead writes p into the head at off and marks the blocks present.
// Partial blocks in p need no copy-up. Call with the stripes held.
func (v *Volume) writeHead(p []byte, off int64) error {
	end := off + int64(len(p))
	if err := v.top.dev.WriteAt(p, off, false); err != nil {
		v.undoFullBlocks(off, end)
		return err
	}
	v.bits.setRange(off>>blockShift, (end-1)>>blockShift)
	return nil
}

// undoFullBlocks punches the whole blocks of a failed write that were not
// in the head but exist below, so that a half-written block never hides
// its older content (after a crash the allocation is the index).
func (v *Volume) undoFullBlocks(off, end int64) {
	for b := (off + blockMask) >> blockShift; (b+1)<<blockShift <= end; b++ {
		if v.needsCopyUp(b) {
			v.top.dev.Trim(b<<blockShift, blockSize)
		}
	}
}

// writePartial writes p (inside one block) at off, copying the block up
// from below when needed, under the stripe's write lock.
func (v *Volume) writePartial(p []byte, off int64) error {
	b := off >> blockShift
	s := v.stripeOf(off)
	s.Lock()
	defer s.Unlock()
	if v.closed.Load() {
		return device.ErrClosed
	}
	if !v.needsCopyUp(b) {
		return v.writeHead(p, off)
	}
	buf := copyBufs.Get().(*[blockSize]byte)
	defer copyBufs.Put(buf)
	bOff := b << blockShift
	if err := v.slots[v.base.get(b)].dev.ReadAt(buf[:], bOff); err != nil {
		return err
	}
	copy(buf[off-bOff:], p)
	if err := v.top.dev.WriteAt(buf[:], bOff, false); err != nil {
		v.top.dev.Trim(bOff, blockSize)
		return err
	}
	v.bits.setRange(b, b)
	return nil
}

// Flush implements device.Device: fdatasync of the head. Everything else
// (snapshot, delete, revert, resize) is durable when its call returns.
func (v *Volume) Flush() error {
	if v.readOnly {
		return nil
	}
	v.flushMu.RLock()
	defer v.flushMu.RUnlock()
	if v.closed.Load() {
		return device.ErrClosed
	}
	return v.head.Load().dev.Flush()
}

// Trim implements device.Device. Trimmed blocks read as zeroes: the head
// punches holes where no snapshot holds the block and stores zeroes where
// one does (a hole there would reveal the snapshot's data).
func (v *Volume) Trim(off, length int64) error {
	if v.readOnly {
		return device.ErrReadOnly
	}
	if err := device.CheckRange(off, length, v.size.Load()); err != nil {
		return err
	}
	return v.zero(off, length, 0)
}

// WriteZeroes implements device.Device.
func (v *Volume) WriteZeroes(off, length int64, flags device.ZeroFlags) error {
	if v.readOnly {
		return device.ErrReadOnly
	}
	if err := device.CheckRange(off, length, v.size.Load()); err != nil {
		return fmt.Errorf("write zeroes: %w: %w", err, device.ErrNoSpace)
	}
	return v.zero(off, length, flags)
}

func (v *Volume) zero(off, length int64, flags device.ZeroFlags) error {
	if length == 0 {
		return nil
	}
	end := off + length
	a := min((off+blockMask)&^blockMask, end)
	z := max(end&^blockMask, a)
	if flags&device.ZeroFast != 0 && z > a {
		v.rlock(a, z-a)
		slow := false
		for b := a >> blockShift; b < z>>blockShift && !slow; b++ {
			if v.base.chunks[b>>chunkShift] == nil {
				b |= chunkMask
				continue
			}
			slow = v.base.get(b) != 0
		}
		v.runlock(a, z-a)
		if slow {
			return device.ErrUnsupported
		}
	}
	if off < a {
		if err := v.zeroPartial(off, a); err != nil {
			return err
		}
	}
	if z < end && z >= a {
		if err := v.zeroPartial(max(z, a), end); err != nil {
			return err
		}
	}
	if z <= a {
		return nil
	}
	v.wlock(a, z-a)
	defer v.wunlock(a, z-a)
	if v.closed.Load() {
		return device.ErrClosed
	}
	// Runs of blocks with nothing below are punched (or zeroed in place
	// with ZeroNoHole); runs with data below get real zeroes.
	for pos := a; pos < z; {
		b := pos >> blockShift
		below := v.base.get(b) != 0
		next := pos + blockSize
		for next < z {
			nb := next >> blockShift
			if v.base.chunks[nb>>chunkShift] == nil {
				if below {
					break
				}
				next = min(z, (nb>>chunkShift+1)<<(chunkShift+blockShift))
				continue
			}
			if (v.base.get(nb) != 0) != below {
				break
			}
			next += blockSize
		}
		var err error
		if below {
			for q := pos; q < next && err == nil; {
				zb := device.ZeroBuf(next - q)
				err = v.writeHead(zb, q)
				q += int64(len(zb))
			}
		} else {
			err = v.top.dev.WriteZeroes(pos, next-pos, flags&device.ZeroNoHole)
		}
		if err != nil {
			return err
		}
		pos = next
	}
	return nil
}

// zeroPartial zeroes [off, end) inside one block.
func (v *Volume) zeroPartial(off, end int64) error {
	b := off >> blockShift
	s := v.stripeOf(off)
	s.RLock()
	if v.closed.Load() {
		s.RUnlock()
		return device.ErrClosed
	}
	if !v.bits.test(b) && v.base.get(b) == 0 {
		s.RUnlock()
		return nil // reads as zeroes already
	}
	s.RUnlock()
	return v.writePartial(device.ZeroBuf(end-off), off)
}

// maxExtents bounds one Extents answer; callers ask again for the rest.
const maxExtents = 1 << 16

// Extents implements device.Device. Blocks served by a snapshot layer are
// data; elsewhere the head file's own allocation map answers.
func (v *Volume) Extents(off, length int64) ([]device.Extent, error) {
	if err := device.CheckRange(off, length, v.size.Load()); err != nil {
		return nil, err
	}
	if length == 0 {
		return nil, fmt.Errorf("extents: zero length: %w", syscall.EINVAL)
	}
	v.rlock(off, length)
	defer v.runlock(off, length)
	if v.closed.Load() {
		return nil, device.ErrClosed
	}
	lowerOnly := func(b int64) bool { return !v.bits.test(b) && v.base.get(b) != 0 }
	var out []device.Extent
	add := func(n int64, fl uint32) {
		if k := len(out) - 1; k >= 0 && out[k].Flags == fl {
			out[k].Length += n
		} else {
			out = append(out, device.Extent{Length: n, Flags: fl})
		}
	}
	end := off + length
	for pos := off; pos < end && len(out) < maxExtents; {
		b := pos >> blockShift
		var next int64
		lower := false
		if v.base.chunks[b>>chunkShift] == nil {
			next = (b>>chunkShift + 1) << (chunkShift + blockShift)
		} else {
			lower = lowerOnly(b)
			next = (b + 1) << blockShift
			for next < end && next>>(chunkShift+blockShift) == b>>chunkShift && lowerOnly(next>>blockShift) == lower {
				next += blockSize
			}
		}
		next = min(next, end)
		if lower {
			add(next-pos, 0)
		} else {
			for q := pos; q < next; {
				ext, err := v.top.dev.Extents(q, next-q)
				if err != nil {
					return nil, err
				}
				if len(ext) == 0 {
					add(next-q, 0)
					break
				}
				for _, e := range ext {
					e.Length = min(e.Length, next-q)
					add(e.Length, e.Flags)
					q += e.Length
					if q >= next {
						break
					}
				}
			}
		}
		pos = next
	}
	return out, nil
}

// Close implements device.Device. Open snapshot devices are closed too.
func (v *Volume) Close() error {
	v.admin.Lock()
	defer v.admin.Unlock()
	if v.closed.Load() {
		return nil
	}
	for s := range v.views {
		s.markClosed()
	}
	v.views = nil
	v.flushMu.Lock()
	v.lockAll()
	v.closed.Store(true)
	v.unlockAll()
	v.flushMu.Unlock()
	var first error
	for _, l := range v.chain {
		if err := l.dev.Close(); err != nil && first == nil {
			first = err
		}
	}
	v.lockFile.Close()
	return first
}

// normalizeSpace maps quota and file-size errors onto ENOSPC.
func normalizeSpace(err error) error { return device.NormalizeSpace(err) }

func now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }
