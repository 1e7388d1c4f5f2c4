package mirror

import (
	"errors"
	"fmt"

	"github.com/hacs/hacs/internal/device"
)

// Quiesce stops the volume's writes at one point of its write stream, makes
// every in-sync replica durable, and runs fn with the replicas that hold
// every write acknowledged so far (and nothing else): a snapshot taken by fn
// on each of them is the same point on every one. Writes wait (they are not
// failed) until fn returns; reads of the primary wait too. Replicas whose
// flush fails are left out of the list and dropped afterwards.
func (m *Mirror) Quiesce(fn func(inSync []string) error) error {
	if m.fenced.Load() {
		return ErrFenced
	}
	// The lock order of every writer: mu (shared), then the stripes.
	m.mu.RLock()
	if m.fenced.Load() {
		m.mu.RUnlock()
		return ErrFenced
	}
	for i := range m.stripes {
		m.stripes[i].Lock()
	}
	var legs []*leg
	for _, l := range m.legs {
		if l.state == InSync && l.dev != nil {
			legs = append(legs, l)
		}
	}
	failed := m.fanout(legs, func(d device.Device) error { return d.Flush() })
	var ids []string
	for _, l := range legs {
		if !func() bool {
			for _, f := range failed {
				if f.l == l {
					return true
				}
			}
			return false
		}() {
			ids = append(ids, l.ID)
		}
	}
	var err error
	if len(ids) == 0 {
		err = fmt.Errorf("volume %s: no in-sync replica could be flushed: %w", m.cfg.Volume, ErrNoQuorm)
	} else {
		err = fn(ids)
	}
	for i := range m.stripes {
		m.stripes[i].Unlock()
	}
	m.mu.RUnlock()
	if ferr := m.handleFailures(failed); ferr != nil && err == nil {
		err = ferr
	}
	return err
}

// ResizeReplica changes a replica device from a volume of oldSize bytes to
// one of newSize bytes: the metadata record (activity log, out-of-sync
// regions) moves to the new end, and the bytes between the old and the new
// end read as zeroes. resize sets the device's size. It is meant for a
// replica no primary uses, and is idempotent: a device of
// ReplicaSize(newSize) already is left alone.
func ResizeReplica(dev device.Device, resize func(int64) error, oldSize, newSize int64) error {
	if oldSize <= 0 || newSize <= 0 {
		return fmt.Errorf("resize replica: sizes must be positive (%d, %d)", oldSize, newSize)
	}
	switch dev.Size() {
	case ReplicaSize(newSize):
		return nil
	case ReplicaSize(oldSize):
	default:
		return fmt.Errorf("resize replica: device has %d bytes, expected %d (a volume of %d bytes) or %d (%d bytes)",
			dev.Size(), ReplicaSize(oldSize), oldSize, ReplicaSize(newSize), newSize)
	}
	rec, err := readMeta(dev, oldSize)
	if errors.Is(err, errNoMeta) {
		rec = nil
	} else if err != nil {
		return err
	}
	if err := resize(ReplicaSize(newSize)); err != nil {
		return err
	}
	// What follows the data (the old metadata when growing, old data when
	// shrinking) becomes zeroes: the grown data and the new metadata area.
	from := min(oldSize, newSize)
	if err := dev.WriteZeroes(from, ReplicaSize(newSize)-from, 0); err != nil {
		return fmt.Errorf("resize replica: clearing [%d, %d): %w", from, ReplicaSize(newSize), err)
	}
	if rec != nil {
		nreg := uint32(Regions(newSize))
		var al []uint32
		for _, r := range rec.AL {
			if r < nreg {
				al = append(al, r)
			}
		}
		rec.AL = al
		rec.Size = newSize
		rec.Seq++
		buf, err := rec.encode(newSize)
		if err != nil {
			return err
		}
		if err := dev.WriteAt(buf, slotOffset(newSize, rec.Seq), true); err != nil {
			return err
		}
	}
	return dev.Flush()
}

// ResetMeta clears a replica's metadata record, as for a new replica whose
// in-sync peers are identical to it (a reverted snapshot or a clone taken at
// one quiesced point of the write stream): no region is hot, and a replica
// outside the in-sync set has an unknown history (it is compared in full).
func ResetMeta(dev device.Device, size int64) error {
	if dev.Size() != ReplicaSize(size) {
		return fmt.Errorf("reset metadata: device has %d bytes, expected %d", dev.Size(), ReplicaSize(size))
	}
	if err := dev.WriteZeroes(size, MetaSize(size), 0); err != nil {
		return err
	}
	return dev.Flush()
}
