package store

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hacs/hacs/internal/device"
)

// SnapshotInfo describes one snapshot of a volume.
type SnapshotInfo struct {
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
	// Pinned is the space the snapshot's own layer occupies (allocated
	// bytes): roughly what deleting it gives back, less what must move up.
	Pinned int64 `json:"pinned"`
}

// mergeSyncBytes: a snapshot deletion makes what it copied durable, then
// frees the source range, every this many bytes copied (so a deletion
// needs little free space).
const mergeSyncBytes = 64 << 20

func (v *Volume) checkWritable() error {
	if v.closed.Load() {
		return device.ErrClosed
	}
	if v.readOnly {
		return fmt.Errorf("volume %s is open read-only: %w", v.name, syscall.EPERM)
	}
	return nil
}

// commit writes m as the volume's manifest, atomically and durably.
func (v *Volume) commit(m manifest) error {
	data, err := encodeManifest(&m)
	if err != nil {
		return err
	}
	if err := writeAtomic(filepath.Join(v.dir, manifestName), data); err != nil {
		return fmt.Errorf("volume %s: %w", v.name, err)
	}
	v.man = m
	return nil
}

// newLayer creates an empty layer file of the volume's size, durable, not
// yet in the manifest.
func (v *Volume) newLayer() (*layer, error) {
	id := v.man.NextID
	file := layerFileName(id)
	path := filepath.Join(v.dir, file)
	os.Remove(path) // a leftover of an interrupted operation
	dev, err := device.OpenFile(path, v.size.Load(), false)
	if err == nil {
		if err = dev.Flush(); err != nil {
			dev.Close()
			os.Remove(path)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("volume %s: new layer: %w", v.name, normalizeSpace(err))
	}
	return &layer{meta: manifestLayer{ID: id, File: file, Created: now()}, dev: dev, path: path}, nil
}

func (l *layer) discard() {
	l.dev.Close()
	os.Remove(l.path)
}

func (v *Volume) freeSlot() uint8 {
	for s := 1; s <= maxSlots; s++ {
		if v.slots[s] == nil {
			return uint8(s)
		}
	}
	return 0
}

// findSnapshot returns the chain index of a (not deleting) snapshot.
func (v *Volume) findSnapshot(name string) (int, error) {
	for i, l := range v.chain[:len(v.chain)-1] {
		if l.meta.Snapshot == name && !l.meta.Deleting {
			return i, nil
		}
	}
	return -1, fmt.Errorf("volume %s has no snapshot %q: %w", v.name, name, fs.ErrNotExist)
}

// busy tells whether an open snapshot device reads layer l.
func (v *Volume) busy(l *layer) *Snapshot {
	for s := range v.views {
		for _, x := range s.layers {
			if x == l {
				return s
			}
		}
	}
	return nil
}

// Snapshot freezes the head as snapshot name and continues on a new empty
// head. It is crash-consistent: the snapshot holds every write completed
// before the call, and is durable when it returns.
func (v *Volume) Snapshot(name string) error {
	if err := checkName("snapshot", name); err != nil {
		return err
	}
	v.admin.Lock()
	defer v.admin.Unlock()
	if err := v.checkWritable(); err != nil {
		return err
	}
	for _, l := range v.chain {
		if l.meta.Snapshot == name {
			return fmt.Errorf("volume %s: snapshot %q already exists: %w", v.name, name, fs.ErrExist)
		}
	}
	slot := v.freeSlot()
	if slot == 0 {
		return fmt.Errorf("volume %s: too many snapshots (at most %d): %w", v.name, maxSlots, syscall.ENOSPC)
	}
	old := v.top
	if err := old.dev.Flush(); err != nil { // most of the sync, before I/O stops
		return err
	}
	nl, err := v.newLayer()
	if err != nil {
		return err
	}
	m := v.man.clone()
	m.NextID = nl.meta.ID + 1
	top := &m.Layers[len(m.Layers)-1]
	top.Snapshot, top.Frozen = name, now()
	m.Layers = append(m.Layers, nl.meta)

	v.flushMu.Lock()
	v.lockAll()
	err = old.dev.Flush()
	if err == nil {
		err = v.commit(m)
	}
	if err != nil {
		v.unlockAll()
		v.flushMu.Unlock()
		nl.discard()
		return err
	}
	old.meta = m.Layers[len(m.Layers)-2]
	old.slot = slot
	v.slots[slot] = old
	v.base.foldHead(v.bits, slot)
	v.bits = newHeadMap(v.size.Load() >> blockShift)
	v.chain = append(v.chain, nl)
	v.top = nl
	v.head.Store(nl)
	v.unlockAll()
	v.flushMu.Unlock()
	return nil
}

// Snapshots lists the volume's snapshots, oldest first.
func (v *Volume) Snapshots() []SnapshotInfo {
	v.admin.Lock()
	defer v.admin.Unlock()
	var out []SnapshotInfo
	for _, l := range v.chain[:len(v.chain)-1] {
		if l.meta.Deleting {
			continue
		}
		out = append(out, SnapshotInfo{Name: l.meta.Snapshot, Created: l.meta.Frozen, Pinned: allocated(l.path)})
	}
	return out
}

// allocated returns the bytes a file occupies on disk.
func allocated(path string) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0
	}
	return st.Blocks * 512
}

// DeleteSnapshot deletes a snapshot online: its blocks that the layer above
// lacks are merged into that layer, then it leaves the manifest. Once the
// deletion is recorded (first step) it completes, if need be when the
// volume is next opened.
func (v *Volume) DeleteSnapshot(name string) error {
	v.admin.Lock()
	defer v.admin.Unlock()
	if err := v.checkWritable(); err != nil {
		return err
	}
	k, err := v.findSnapshot(name)
	if err != nil {
		return err
	}
	if s := v.busy(v.chain[k]); s != nil {
		return fmt.Errorf("volume %s: snapshot %q is read through the open snapshot device %q; close it first: %w", v.name, name, s.name, syscall.EBUSY)
	}
	m := v.man.clone()
	m.Layers[k].Deleting = true
	if err := v.commit(m); err != nil {
		return err
	}
	v.chain[k].meta.Deleting = true
	return v.finishDeletes()
}

// finishDeletes completes every recorded snapshot deletion, bottom up.
func (v *Volume) finishDeletes() error {
	for {
		k := -1
		for i, l := range v.chain[:len(v.chain)-1] {
			if l.meta.Deleting && v.busy(l) == nil {
				k = i
				break
			}
		}
		if k < 0 {
			return nil
		}
		if err := v.mergeUp(k); err != nil {
			return fmt.Errorf("volume %s: deleting snapshot %q: %w (the deletion resumes with the next delete or open)", v.name, v.chain[k].meta.Snapshot, err)
		}
	}
}

// mergeUp moves the blocks of frozen layer k that layer k+1 lacks into
// layer k+1 and removes layer k. Every step keeps all remaining views (the
// head and the snapshots above k) unchanged, so a crash anywhere is safe
// and the merge can simply run again.
func (v *Volume) mergeUp(k int) error {
	L, U := v.chain[k], v.chain[k+1]
	uHead := U == v.top
	size := v.size.Load()
	below, err := buildIndex(v.chain[:k], size)
	if err != nil {
		return err
	}
	// Which blocks L and a frozen U hold comes from their files: the
	// base index only knows the topmost frozen layer of each block.
	var lHas, uHas *baseMap
	if !uHead {
		if lHas, err = buildIndex([]*layer{{slot: 1, dev: L.dev, path: L.path}}, size); err != nil {
			return err
		}
		if uHas, err = buildIndex([]*layer{{slot: 1, dev: U.dev, path: U.path}}, size); err != nil {
			return err
		}
	}
	buf := make([]byte, granuleSize)
	var pending int64
	punchFrom := int64(0)
	release := func(end int64) error {
		if err := U.dev.Flush(); err != nil {
			return err
		}
		// Only after the copies are durable may the source go.
		if end > punchFrom {
			L.dev.Trim(punchFrom, end-punchFrom)
		}
		punchFrom, pending = end, 0
		return nil
	}
	for gOff := int64(0); gOff < size; gOff += granuleSize {
		gEnd := min(gOff+granuleSize, size)
		if v.base.chunks[(gOff>>blockShift)>>chunkShift] == nil {
			continue
		}
		s := v.stripeOf(gOff)
		s.Lock()
		n, err := v.mergeGranule(L, U, uHead, below, lHas, uHas, gOff, gEnd, buf)
		s.Unlock()
		if err != nil {
			return err
		}
		if pending += n; pending >= mergeSyncBytes {
			if err := release(gEnd); err != nil {
				return err
			}
		}
	}
	if err := release(size); err != nil {
		return err
	}
	m := v.man.clone()
	m.Layers = append(m.Layers[:k:k], m.Layers[k+1:]...)
	if err := v.commit(m); err != nil {
		return err
	}
	v.lockAll()
	v.chain = append(v.chain[:k:k], v.chain[k+1:]...)
	v.slots[L.slot] = nil
	v.unlockAll()
	L.discard()
	return nil
}

// mergeGranule merges one granule of L into U. Call with its stripe held
// for writing.
func (v *Volume) mergeGranule(L, U *layer, uHead bool, below, lHas, uHas *baseMap, gOff, gEnd int64, buf []byte) (int64, error) {
	b0, b1 := gOff>>blockShift, gEnd>>blockShift
	// candidate: L holds the block and U lacks it.
	cand := func(b int64) bool {
		if uHead {
			return v.base.get(b) == L.slot && !v.bits.test(b)
		}
		return lHas.get(b) != 0 && uHas.get(b) == 0
	}
	any := false
	for b := b0; b < b1 && !any; b++ {
		any = v.base.get(b) == L.slot || cand(b)
	}
	if !any {
		return 0, nil
	}
	buf = buf[:gEnd-gOff]
	if err := L.dev.ReadAt(buf, gOff); err != nil {
		return 0, err
	}
	blk := func(b int64) []byte { return buf[(b-b0)<<blockShift : (b-b0+1)<<blockShift] }
	// A block is copied unless U has it already, or it reads as zeroes
	// and nothing below it would show through.
	doCopy := func(b int64) bool {
		return cand(b) && (below.get(b) != 0 || !device.IsZero(blk(b)))
	}
	var copied int64
	for b := b0; b < b1; {
		if !doCopy(b) {
			b++
			continue
		}
		e := b + 1
		for e < b1 && doCopy(e) {
			e++
		}
		if err := U.dev.WriteAt(buf[(b-b0)<<blockShift:(e-b0)<<blockShift], b<<blockShift, false); err != nil {
			return copied, err
		}
		if uHead {
			v.bits.setRange(b, e-1)
		}
		copied += (e - b) << blockShift
		b = e
	}
	for b := b0; b < b1; b++ {
		if v.base.get(b) != L.slot {
			continue
		}
		nb := below.get(b)
		if !uHead && doCopy(b) {
			nb = U.slot
		}
		v.base.set(b, nb)
	}
	return copied, nil
}

// Revert makes the head read exactly like snapshot name again: the head
// (and, with force, every newer snapshot) is discarded and replaced by an
// empty head above the snapshot. Without force, newer snapshots make it
// fail.
func (v *Volume) Revert(name string, force bool) error {
	v.admin.Lock()
	defer v.admin.Unlock()
	if err := v.checkWritable(); err != nil {
		return err
	}
	k, err := v.findSnapshot(name)
	if err != nil {
		return err
	}
	var newer []string
	for _, l := range v.chain[k+1 : len(v.chain)-1] {
		if !l.meta.Deleting {
			newer = append(newer, l.meta.Snapshot)
		}
	}
	if len(newer) > 0 && !force {
		return fmt.Errorf("volume %s: reverting to %q would discard the newer snapshots %s; force it to go on: %w", v.name, name, strings.Join(newer, ", "), syscall.EEXIST)
	}
	dropped := v.chain[k+1:]
	for _, l := range dropped {
		if s := v.busy(l); s != nil {
			return fmt.Errorf("volume %s: the open snapshot device %q reads a layer the revert discards; close it first: %w", v.name, s.name, syscall.EBUSY)
		}
	}
	nb := v.base
	if len(dropped) > 1 {
		if nb, err = buildIndex(v.chain[:k+1], v.size.Load()); err != nil {
			return err
		}
	}
	nl, err := v.newLayer()
	if err != nil {
		return err
	}
	m := v.man.clone()
	m.NextID = nl.meta.ID + 1
	m.Layers = append(m.Layers[:k+1:k+1], nl.meta)
	if err := v.commit(m); err != nil {
		nl.discard()
		return err
	}
	v.flushMu.Lock()
	v.lockAll()
	for _, l := range dropped {
		if l.slot != 0 {
			v.slots[l.slot] = nil
		}
	}
	v.chain = append(v.chain[:k+1:k+1], nl)
	v.base = nb
	v.bits = newHeadMap(v.size.Load() >> blockShift)
	v.top = nl
	v.head.Store(nl)
	v.unlockAll()
	v.flushMu.Unlock()
	for _, l := range dropped {
		l.discard()
	}
	return nil
}

// Resize grows the volume online. Shrinking discards data past the new end
// (in the head and in every snapshot) and is refused unless forced.
func (v *Volume) Resize(size int64, force bool) error {
	v.admin.Lock()
	defer v.admin.Unlock()
	if err := v.checkWritable(); err != nil {
		return err
	}
	if size <= 0 || size%blockSize != 0 {
		return fmt.Errorf("volume %s: invalid size %d: must be a positive multiple of %d: %w", v.name, size, blockSize, syscall.EINVAL)
	}
	old := v.size.Load()
	if size == old {
		return nil
	}
	m := v.man.clone()
	m.Size = size
	if size > old {
		if err := v.pool.checkPromise("growing volume "+v.name, size-old); err != nil {
			return err
		}
		for _, l := range v.chain {
			if err := l.dev.Resize(size); err != nil {
				return err
			}
			if err := l.dev.Flush(); err != nil {
				return err
			}
		}
		if err := v.commit(m); err != nil {
			return err
		}
		v.lockAll()
		v.bits = v.bits.resized(size >> blockShift)
		v.base = v.base.resized(size >> blockShift)
		v.size.Store(size)
		v.unlockAll()
		return nil
	}
	if !force {
		return fmt.Errorf("volume %s: shrinking from %d to %d bytes discards the data past the new end, in the head and in every snapshot; force it to go on: %w", v.name, old, size, syscall.EINVAL)
	}
	if len(v.views) > 0 {
		return fmt.Errorf("volume %s: snapshot devices are open; close them before shrinking: %w", v.name, syscall.EBUSY)
	}
	if err := v.commit(m); err != nil {
		return err
	}
	v.flushMu.Lock()
	v.lockAll()
	defer func() {
		v.unlockAll()
		v.flushMu.Unlock()
	}()
	v.size.Store(size)
	v.bits = v.bits.resized(size >> blockShift)
	v.base = v.base.resized(size >> blockShift)
	for _, l := range v.chain {
		if err := l.dev.Resize(size); err != nil {
			return err
		}
	}
	return nil
}

// Clone creates volume newName in the same pool with the content of
// snapshot, copied sparsely (holes and zero blocks are not written).
func (v *Volume) Clone(snapshot, newName string) error {
	return v.CloneProgress(snapshot, newName, nil)
}

// CloneProgress is Clone, calling progress (when not nil) with the bytes
// of the snapshot gone through so far and its size, as the copy advances.
func (v *Volume) CloneProgress(snapshot, newName string, progress func(done, total int64)) error {
	s, err := v.OpenSnapshot(snapshot)
	if err != nil {
		return err
	}
	defer s.Close()
	return v.pool.createVolume(newName, s.Size(), func(dst *device.File) error { return copySparse(s, dst, progress) })
}

// copySparse copies the data of src into dst, skipping holes and blocks of
// zeroes; progress (when not nil) hears of each step.
func copySparse(src device.Device, dst *device.File, progress func(done, total int64)) error {
	size := src.Size()
	if progress == nil {
		progress = func(int64, int64) {}
	}
	progress(0, size)
	buf := make([]byte, granuleSize)
	for pos := int64(0); pos < size; {
		ext, err := src.Extents(pos, size-pos)
		if err != nil {
			return err
		}
		for _, e := range ext {
			if e.Flags&device.ExtentHole == 0 {
				for q := pos; q < pos+e.Length; {
					n := min(int64(len(buf)), pos+e.Length-q)
					if err := src.ReadAt(buf[:n], q); err != nil {
						return err
					}
					if err := writeNonZero(dst, buf[:n], q); err != nil {
						return err
					}
					q += n
					progress(q, size)
				}
			}
			pos += e.Length
			progress(pos, size)
		}
	}
	return dst.Flush()
}

func writeNonZero(dst *device.File, p []byte, off int64) error {
	for i := 0; i < len(p); {
		n := min(blockSize, len(p)-i)
		if device.IsZero(p[i : i+n]) {
			i += n
			continue
		}
		j := i + n
		for j < len(p) && !device.IsZero(p[j:min(j+blockSize, len(p))]) {
			j = min(j+blockSize, len(p))
		}
		if err := dst.WriteAt(p[i:j], off+int64(i), false); err != nil {
			return err
		}
		i = j
	}
	return nil
}
