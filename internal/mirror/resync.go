package mirror

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"iter"
	"slices"
	"time"

	"github.com/hacs/hacs/internal/device"
)

// resyncBatch is how many chunks one copy step moves (1 MiB).
const resyncBatch = 16

// startResync launches the goroutine that reconnects an out-of-sync replica
// and catches it up, unless one already runs.
func (m *Mirror) startResync(l *leg) {
	if m.ctx.Err() != nil || l.resyncing.Swap(true) {
		return
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer l.resyncing.Store(false)
		m.resyncLoop(l)
	}()
}

func (m *Mirror) sleep(d time.Duration) bool {
	select {
	case <-m.ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

func (m *Mirror) resyncLoop(l *leg) {
	for m.ctx.Err() == nil && !m.fenced.Load() && !l.removed.Load() {
		m.mu.RLock()
		connected := l.dev != nil
		m.mu.RUnlock()
		if !connected {
			dctx, cancel := context.WithTimeout(m.ctx, m.cfg.Timeout)
			dev, err := m.dial(dctx, l)
			cancel()
			if err != nil {
				if isStale(err) {
					m.fence(fmt.Sprintf("replica %s refused our epoch: %v", l.ID, err))
					return
				}
				m.mu.Lock()
				l.lastErr = err.Error()
				m.mu.Unlock()
				if !m.sleep(m.cfg.RetryInterval) {
					return
				}
				continue
			}
			m.mu.Lock()
			if l.removed.Load() {
				m.mu.Unlock()
				dev.Close()
				return
			}
			l.dev = dev
			l.state = Resyncing
			l.resyncStart = time.Now()
			l.resyncTotal.Store(int64(l.dirty.len()+l.suspect.len()) * ChunkSize)
			l.resyncDone.Store(0)
			l.resyncSent.Store(0)
			m.mu.Unlock()
			m.event(l.ID, "resync-started", fmt.Sprintf("%d bytes written while it was away to copy, %d bytes to compare by checksum",
				int64(l.dirty.len())*ChunkSize, int64(l.suspect.len())*ChunkSize))
		}
		// Known-dirty chunks first, so that comparing the suspect ones
		// afterwards finds them equal instead of sending them twice.
		err := m.copyDirty(l, l.dirty, false)
		if err == nil {
			err = m.copyDirty(l, l.suspect, true)
		}
		if err == nil {
			err = m.promote(l)
		}
		if err == nil {
			return
		}
		if errors.Is(err, errNotDone) {
			continue
		}
		if isStale(err) {
			m.fence(fmt.Sprintf("replica %s refused our epoch: %v", l.ID, err))
			return
		}
		if m.ctx.Err() != nil || l.removed.Load() {
			return
		}
		if errors.Is(err, errStoreWait) {
			// Caught up; only the store did not answer: try again.
			if !m.sleep(m.cfg.RetryInterval) {
				return
			}
			continue
		}
		m.mu.Lock()
		if l.listed {
			// The store may list it: only a fenced update takes it out.
			if derr := m.dropLocked([]*leg{l}, err); derr != nil {
				m.mu.Unlock()
				if !m.sleep(m.cfg.RetryInterval) {
					return
				}
				continue
			}
		}
		if l.state == Resyncing {
			l.state = Outdated
		}
		if l.dev != nil {
			l.dev.Close()
			l.dev = nil
		}
		l.lastErr = err.Error()
		m.mu.Unlock()
		m.event(l.ID, "resync-interrupted", err.Error())
		if !m.sleep(m.cfg.RetryInterval) {
			return
		}
	}
}

var (
	errNotDone   = errors.New("more to copy")
	errLeft      = errors.New("replica left resync")
	errStoreWait = errors.New("caught up, waiting for the cluster store to record it in sync")
)

// promote makes a caught-up replica in-sync again. The store update runs
// without mu, so that I/O, status and stopping the mirror do not wait for
// the cluster store: meanwhile the replica is listed (the store may already
// hold it), keeps receiving every write, and a failure of it goes through a
// fenced store update like that of an in-sync replica (dropLocked), which
// also makes the promotion give up (gen). The in-sync set thus grows only
// through the store, and no write is acknowledged that a replica the store
// may list lacks.
func (m *Mirror) promote(l *leg) error {
	// What the resync copied becomes durable first (under the read lock:
	// I/O goes on meanwhile; writes reach the replica anyway).
	m.mu.RLock()
	if l.state != Resyncing || l.dev == nil {
		m.mu.RUnlock()
		return errLeft
	}
	f := m.fanout([]*leg{l}, func(d device.Device) error { return d.Flush() })
	m.mu.RUnlock()
	if len(f) > 0 {
		return f[0].err
	}
	m.mu.Lock()
	if l.state != Resyncing || l.dev == nil {
		m.mu.Unlock()
		return errLeft
	}
	if l.dirty.len() > 0 || l.suspect.len() > 0 {
		m.mu.Unlock()
		return errNotDone
	}
	saved := m.al.dirty[l.ID]
	delete(m.al.dirty, l.ID)
	if f := m.commitLocked(m.targetsLocked()); len(f) > 0 {
		m.al.dirty[l.ID] = saved
		for _, r := range f {
			if r.l == l {
				m.mu.Unlock()
				return r.err
			}
		}
		if err := m.dropLocked(legsOf(f), errors.New("metadata write failed")); err != nil {
			m.mu.Unlock()
			return err
		}
	}
	gen := l.gen
	if !l.listed {
		l.listed = true
		m.setWant(append(m.wantIDs(), l.ID))
	}
	m.mu.Unlock()

	err := m.storeInSync()

	m.mu.Lock()
	defer m.mu.Unlock()
	if l.gen != gen || l.state != Resyncing || l.removed.Load() {
		return errLeft // dropped meanwhile, through the store
	}
	if err != nil {
		// The store may or may not hold it now: it stays listed, in
		// resync, receiving writes, and the promotion is tried again.
		if m.al.dirty[l.ID] == nil {
			m.al.dirty[l.ID] = saved
		}
		l.lastErr = err.Error()
		return fmt.Errorf("%w: %w", errStoreWait, err)
	}
	l.state = InSync
	l.lastErr = ""
	ids := m.inSyncIDs()
	el := time.Since(l.resyncStart).Round(time.Millisecond)
	m.event(l.ID, "resync-finished", fmt.Sprintf("in sync again after %v: checked %d bytes, sent %d bytes; in sync now: %v",
		el, l.resyncDone.Load(), l.resyncSent.Load(), ids))
	return nil
}

// copyDirty copies the chunks of bm from the read source to l (comparing
// checksums first with compare), while new writes reach l too; stripe locks
// order the two.
func (m *Mirror) copyDirty(l *leg, bm *bitmap, compare bool) error {
	buf := make([]byte, resyncBatch*ChunkSize)
	pos := 0
	start := time.Now()
	var moved int64
	for {
		if err := m.ctx.Err(); err != nil {
			return err
		}
		lo, hi, ok := bm.nextRun(pos, resyncBatch)
		if !ok {
			if pos == 0 {
				return nil
			}
			pos = 0
			continue
		}
		pos = hi
		m.mu.RLock()
		if l.state != Resyncing || l.dev == nil {
			m.mu.RUnlock()
			return errors.New("replica left resync")
		}
		src := m.sourceLocked()
		if src == nil {
			m.mu.RUnlock()
			return ErrNoQuorm
		}
		m.lockStripes(lo, hi, false)
		off := int64(lo) * ChunkSize
		n := min(int64(hi)*ChunkSize, m.size) - off
		sent, err := m.copyRange(src, l, off, n, buf, compare)
		if err == nil {
			bm.clearRange(lo, hi)
		}
		m.unlockStripes(lo, hi, false)
		m.mu.RUnlock()
		if err != nil {
			return err
		}
		l.resyncDone.Add(n)
		l.resyncSent.Add(sent)
		moved += n
		if rate := m.cfg.ResyncRate; rate > 0 {
			want := time.Duration(float64(moved) / float64(rate) * float64(time.Second))
			if d := want - time.Since(start); d > 0 && !m.sleep(d) {
				return m.ctx.Err()
			}
		}
	}
}

// call runs op on one leg with the replica timeout.
func (m *Mirror) call(l *leg, op func(device.Device) error) error {
	if f := m.fanout([]*leg{l}, op); len(f) > 0 {
		return fmt.Errorf("replica %s: %w", l.ID, f[0].err)
	}
	return nil
}

// copyRange makes dst's [off, off+n) equal to src's and returns the bytes
// sent. With compare, only chunks whose checksums differ are sent.
func (m *Mirror) copyRange(src, dst *leg, off, n int64, buf []byte, compare bool) (int64, error) {
	if !compare {
		return m.copyChunks(src, dst, off, n, buf)
	}
	ss := make([]byte, device.ChecksumLen(n))
	ds := make([]byte, len(ss))
	if err := m.call(src, func(d device.Device) error { return device.ChecksumsOf(d, off, n, ss) }); err != nil {
		return 0, err
	}
	if err := m.call(dst, func(d device.Device) error { return device.ChecksumsOf(d, off, n, ds) }); err != nil {
		return 0, err
	}
	var sent int64
	for co, cn := range differingChunks(ss, ds, off, n) {
		s, err := m.copyChunks(src, dst, co, cn, buf)
		if err != nil {
			return sent, err
		}
		sent += s
	}
	return sent, nil
}

func (m *Mirror) copyChunks(src, dst *leg, off, n int64, buf []byte) (int64, error) {
	p := buf[:n]
	if err := m.call(src, func(d device.Device) error { return d.ReadAt(p, off) }); err != nil {
		return 0, err
	}
	if device.IsZero(p) { // holes are not sent
		return 0, m.call(dst, func(d device.Device) error { return d.WriteZeroes(off, n, 0) })
	}
	return n, m.call(dst, func(d device.Device) error { return d.WriteAt(p, off, false) })
}

// reconcile makes the given regions of l equal to src (crash recovery of
// the writes an old primary had in flight) and returns the bytes sent.
func (m *Mirror) reconcile(src, l *leg, regions []uint32) (int64, error) {
	buf := make([]byte, resyncBatch*ChunkSize)
	var sent int64
	for _, r := range regions {
		off := int64(r) * RegionSize
		if off >= m.size {
			continue
		}
		n := min(int64(RegionSize), m.size-off)
		for done := int64(0); done < n; done += resyncBatch * ChunkSize {
			s, err := m.copyRange(src, l, off+done, min(resyncBatch*ChunkSize, n-done), buf, true)
			sent += s
			if err != nil {
				return sent, err
			}
		}
	}
	if len(regions) > 0 {
		return sent, m.call(l, func(d device.Device) error { return d.Flush() })
	}
	return sent, nil
}

// Difference is a range where a replica differs from the primary's source.
type Difference struct {
	Replica string `json:"replica"`
	Offset  int64  `json:"offset"`
	Length  int64  `json:"length"`
}

// VerifyReport is the result of Verify.
type VerifyReport struct {
	Source      string       `json:"source"`
	Compared    []string     `json:"compared"`
	Bytes       int64        `json:"bytes"`
	Differences []Difference `json:"differences"`
	Repaired    int64        `json:"repaired_bytes"`
}

// Verify compares every in-sync replica with the read source by checksums,
// chunk by chunk, while I/O continues; with repair it copies the source's
// data over every difference. progress, if set, is called with bytes done.
func (m *Mirror) Verify(ctx context.Context, repair bool, progress func(done, total int64)) (VerifyReport, error) {
	var rep VerifyReport
	buf := make([]byte, resyncBatch*ChunkSize)
	const span = 64 * ChunkSize
	for off := int64(0); off < m.size; off += span {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		if m.fenced.Load() {
			return rep, ErrFenced
		}
		n := min(span, m.size-off)
		m.mu.RLock()
		src := m.sourceLocked()
		if src == nil {
			m.mu.RUnlock()
			return rep, ErrNoQuorm
		}
		var others []*leg
		for _, l := range m.legs {
			if l != src && l.state == InSync && l.dev != nil {
				others = append(others, l)
			}
		}
		c0, c1 := m.chunkRange(off, n)
		m.lockStripes(c0, c1, false)
		err := m.verifySpan(src, others, off, n, repair, buf, &rep)
		m.unlockStripes(c0, c1, false)
		m.mu.RUnlock()
		if err != nil {
			return rep, err
		}
		rep.Source = src.ID
		rep.Compared = nil
		for _, l := range others {
			rep.Compared = append(rep.Compared, l.ID)
		}
		rep.Bytes += n
		if progress != nil {
			progress(rep.Bytes, m.size)
		}
	}
	return rep, nil
}

func (m *Mirror) verifySpan(src *leg, others []*leg, off, n int64, repair bool, buf []byte, rep *VerifyReport) error {
	ss := make([]byte, device.ChecksumLen(n))
	if err := m.call(src, func(d device.Device) error { return device.ChecksumsOf(d, off, n, ss) }); err != nil {
		return err
	}
	ds := make([]byte, len(ss))
	for _, l := range others {
		if err := m.call(l, func(d device.Device) error { return device.ChecksumsOf(d, off, n, ds) }); err != nil {
			return err
		}
		for co, cn := range differingChunks(ss, ds, off, n) {
			if k := len(rep.Differences) - 1; k >= 0 && rep.Differences[k].Replica == l.ID && rep.Differences[k].Offset+rep.Differences[k].Length == co {
				rep.Differences[k].Length += cn
			} else {
				rep.Differences = append(rep.Differences, Difference{Replica: l.ID, Offset: co, Length: cn})
			}
			if repair {
				if _, err := m.copyChunks(src, l, co, cn, buf); err != nil {
					return err
				}
				rep.Repaired += cn
			}
		}
	}
	return nil
}

// InSync lists the replicas currently in sync.
func (m *Mirror) InSync() []string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return slices.Clone(m.inSyncIDs())
}

// differingChunks yields the offset and length of each chunk of
// [off, off+n) whose checksums differ between ss and ds (one
// device.ChecksumSize checksum a ChunkSize chunk, as device.ChecksumsOf
// gives them).
func differingChunks(ss, ds []byte, off, n int64) iter.Seq2[int64, int64] {
	return func(yield func(int64, int64) bool) {
		for i := 0; i*device.ChecksumSize < len(ss); i++ {
			a, b := i*device.ChecksumSize, (i+1)*device.ChecksumSize
			if bytes.Equal(ss[a:b], ds[a:b]) {
				continue
			}
			co := off + int64(i)*ChunkSize
			if !yield(co, min(ChunkSize, off+n-co)) {
				return
			}
		}
	}
}
