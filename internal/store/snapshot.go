package store

import (
	"fmt"
	"sync"
	"syscall"
	"time"

	"github.com/hacs/hacs/internal/device"
)

// Snapshot is a read-only device over one snapshot of a volume. While it is
// open, operations that would change what it reads (deleting it or an
// older snapshot, reverting past it, shrinking) fail with EBUSY.
type Snapshot struct {
	vol     *Volume
	name    string
	created time.Time
	layers  []*layer // the snapshot's chain, bottom first
	idx     *baseMap // block -> 1 + index in layers; 0: zeroes
	size    int64

	mu     sync.RWMutex
	closed bool
}

// OpenSnapshot opens snapshot name as a read-only device.
func (v *Volume) OpenSnapshot(name string) (*Snapshot, error) {
	v.admin.Lock()
	defer v.admin.Unlock()
	if v.closed.Load() {
		return nil, device.ErrClosed
	}
	k, err := v.findSnapshot(name)
	if err != nil {
		return nil, err
	}
	s := &Snapshot{vol: v, name: name, created: v.chain[k].meta.Frozen, size: v.size.Load()}
	s.layers = append(s.layers, v.chain[:k+1]...)
	s.idx = newBaseMap(s.size >> blockShift)
	for i, l := range s.layers {
		if err := scanExtents(l, s.size, func(b0, b1 int64) { s.idx.setRange(b0, b1, uint8(i+1)) }); err != nil {
			return nil, err
		}
	}
	v.views[s] = struct{}{}
	return s, nil
}

// Name is the snapshot's name.
func (s *Snapshot) Name() string { return s.name }

// Created is when the snapshot was taken.
func (s *Snapshot) Created() time.Time { return s.created }

// Size implements device.Device.
func (s *Snapshot) Size() int64 { return s.size }

// Capabilities implements device.Device.
func (s *Snapshot) Capabilities() device.Capabilities {
	return device.Capabilities{ReadOnly: true, Flush: true, FUA: true, Extents: true, MultiConn: true}
}

func (s *Snapshot) src(b int64) *layer {
	if i := s.idx.get(b); i != 0 {
		return s.layers[i-1]
	}
	return nil
}

// ReadAt implements device.Device.
func (s *Snapshot) ReadAt(p []byte, off int64) error {
	n := int64(len(p))
	if err := device.CheckRange(off, n, s.size); err != nil {
		return err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return device.ErrClosed
	}
	return readLayers(p, off, s.src)
}

// Extents implements device.Device.
func (s *Snapshot) Extents(off, length int64) ([]device.Extent, error) {
	if err := device.CheckRange(off, length, s.size); err != nil {
		return nil, err
	}
	if length == 0 {
		return nil, fmt.Errorf("extents: zero length: %w", syscall.EINVAL)
	}
	var out []device.Extent
	end := off + length
	for pos := off; pos < end && len(out) < maxExtents; {
		b := pos >> blockShift
		var next int64
		var fl uint32
		if s.idx.chunks[b>>chunkShift] == nil {
			next, fl = (b>>chunkShift+1)<<(chunkShift+blockShift), device.ExtentHole|device.ExtentZero
		} else {
			has := s.idx.get(b) != 0
			if !has {
				fl = device.ExtentHole | device.ExtentZero
			}
			next = (b + 1) << blockShift
			for next < end && next>>(chunkShift+blockShift) == b>>chunkShift && (s.idx.get(next>>blockShift) != 0) == has {
				next += blockSize
			}
		}
		next = min(next, end)
		if k := len(out) - 1; k >= 0 && out[k].Flags == fl {
			out[k].Length += next - pos
		} else {
			out = append(out, device.Extent{Length: next - pos, Flags: fl})
		}
		pos = next
	}
	return out, nil
}

// WriteAt implements device.Device: snapshots are read-only.
func (s *Snapshot) WriteAt(p []byte, off int64, fua bool) error { return device.ErrReadOnly }

// Trim implements device.Device: snapshots are read-only.
func (s *Snapshot) Trim(off, length int64) error { return device.ErrReadOnly }

// WriteZeroes implements device.Device: snapshots are read-only.
func (s *Snapshot) WriteZeroes(off, length int64, flags device.ZeroFlags) error {
	return device.ErrReadOnly
}

// Flush implements device.Device (snapshots are durable already).
func (s *Snapshot) Flush() error { return nil }

func (s *Snapshot) markClosed() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
}

// Close implements device.Device.
func (s *Snapshot) Close() error {
	s.vol.admin.Lock()
	delete(s.vol.views, s)
	s.vol.admin.Unlock()
	s.markClosed()
	return nil
}
