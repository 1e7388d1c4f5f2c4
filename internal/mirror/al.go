package mirror

import (
	"sort"
	"sync"
	"sync/atomic"

	"github.com/hacs/hacs/internal/device"
)

// activityLog tracks the hot regions: a region must be recorded in the
// metadata of every target replica before the first write into it. Writers
// check a lock-free bitmap; a miss commits a new record (group commit: one
// writer commits for every region waiting), evicting cold regions with no
// write in flight when the log is full.
type activityLog struct {
	mu         sync.Mutex
	cond       *sync.Cond
	hot        map[uint32]bool // committed or being committed
	pending    map[uint32]bool // wanted by waiters of the running commit
	committing bool
	seq        uint64
	// dirty records, per replica out of sync, the regions it misses beyond
	// the activity log (regions evicted while it was out).
	dirty map[string]map[uint32]bool

	bits     []atomic.Uint64 // committed hot regions, read without locks
	inflight []atomic.Int32
	lastUse  []atomic.Uint64
	tick     atomic.Uint64
}

func (a *activityLog) init(regions int) {
	a.cond = sync.NewCond(&a.mu)
	a.hot = map[uint32]bool{}
	a.pending = map[uint32]bool{}
	a.dirty = map[string]map[uint32]bool{}
	a.bits = make([]atomic.Uint64, (regions+63)/64)
	a.inflight = make([]atomic.Int32, regions)
	a.lastUse = make([]atomic.Uint64, regions)
}

// begin marks a write in flight in regions [r0, r1] (before checking hot,
// so eviction never races with it).
func (a *activityLog) begin(r0, r1 uint32) {
	t := a.tick.Add(1)
	for r := r0; r <= r1; r++ {
		a.inflight[r].Add(1)
		a.lastUse[r].Store(t)
	}
}

func (a *activityLog) end(r0, r1 uint32) {
	for r := r0; r <= r1; r++ {
		a.inflight[r].Add(-1)
	}
}

func (a *activityLog) allHot(r0, r1 uint32) bool {
	for r := r0; r <= r1; r++ {
		if a.bits[r/64].Load()&(1<<(r%64)) == 0 {
			return false
		}
	}
	return true
}

func (a *activityLog) setHot(r uint32) {
	a.hot[r] = true
	a.bits[r/64].Or(1 << (r % 64))
}

// record builds the next metadata record. Callers hold a.mu.
func (a *activityLog) record(epoch uint64, size int64) (*meta, uint64) {
	a.seq++
	m := &meta{Seq: a.seq, Epoch: epoch, Size: size, Dirty: map[string][]uint32{}}
	for r := range a.hot {
		m.AL = append(m.AL, r)
	}
	sort.Slice(m.AL, func(i, j int) bool { return m.AL[i] < m.AL[j] })
	for id, regs := range a.dirty {
		list := []uint32{}
		for r := range regs {
			list = append(list, r)
		}
		m.Dirty[id] = list
	}
	return m, a.seq
}

// evictCandidates picks cold regions to leave the log when it is full:
// no write in flight, least recently used first. Callers hold a.mu.
func (a *activityLog) evictCandidates() map[uint32]uint64 {
	if len(a.hot) <= ALCapacity {
		return nil
	}
	want := len(a.hot) - ALCapacity + ALCapacity/8
	cands := make([]uint32, 0, len(a.hot))
	for r := range a.hot {
		if a.inflight[r].Load() == 0 {
			cands = append(cands, r)
		}
	}
	sort.Slice(cands, func(i, j int) bool { return a.lastUse[cands[i]].Load() < a.lastUse[cands[j]].Load() })
	out := map[uint32]uint64{}
	for _, r := range cands[:min(want, len(cands))] {
		out[r] = a.lastUse[r].Load()
	}
	return out
}

// evict removes candidates that stayed untouched (a flush of every target
// ran since they were chosen, so their writes are durable everywhere). The
// regions are recorded as missed by every replica out of sync. Callers hold
// a.mu.
func (a *activityLog) evict(cands map[uint32]uint64) {
	for r, used := range cands {
		a.bits[r/64].And(^(uint64(1) << (r % 64)))
		if a.inflight[r].Load() > 0 || a.lastUse[r].Load() != used { // in use again: keep
			a.bits[r/64].Or(1 << (r % 64))
			continue
		}
		delete(a.hot, r)
		for _, regs := range a.dirty {
			regs[r] = true
		}
	}
}

// ensureHot commits regions [r0, r1] to the activity log on the targets.
// Callers hold m.mu for reading. It returns the targets that failed.
func (m *Mirror) ensureHot(r0, r1 uint32, targets []*leg) []legResult {
	a := &m.al
	a.mu.Lock()
	defer a.mu.Unlock()
	for {
		missing := false
		for r := r0; r <= r1; r++ {
			if a.bits[r/64].Load()&(1<<(r%64)) == 0 {
				missing = true
				if a.committing {
					a.pending[r] = true
				}
			}
		}
		if !missing {
			return nil
		}
		if a.committing {
			a.cond.Wait()
			continue
		}
		need := a.pending
		a.pending = map[uint32]bool{}
		for r := r0; r <= r1; r++ {
			need[r] = true
		}
		a.committing = true
		for r := range need {
			a.hot[r] = true // in flight, so never an eviction candidate
		}
		var failed []legResult
		if cands := a.evictCandidates(); len(cands) > 0 {
			// Make the candidates' writes durable everywhere first.
			a.mu.Unlock()
			failed = m.fanout(targets, func(d device.Device) error { return d.Flush() })
			a.mu.Lock()
			a.evict(cands)
		}
		rec, seq := a.record(m.epoch, m.size)
		a.mu.Unlock()
		failed = append(failed, m.writeMeta(targets, rec, seq)...)
		a.mu.Lock()
		for r := range need {
			if a.hot[r] {
				a.bits[r/64].Or(1 << (r % 64))
			}
		}
		a.committing = false
		a.cond.Broadcast()
		if len(failed) > 0 {
			return failed
		}
	}
}

// commitLocked writes a fresh record to the targets. Callers hold m.mu for
// writing (so no other commit runs).
func (m *Mirror) commitLocked(targets []*leg) []legResult {
	a := &m.al
	a.mu.Lock()
	rec, seq := a.record(m.epoch, m.size)
	a.mu.Unlock()
	return m.writeMeta(targets, rec, seq)
}

func (m *Mirror) writeMeta(targets []*leg, rec *meta, seq uint64) []legResult {
	buf, err := rec.encode(m.size)
	if err != nil {
		var out []legResult
		for _, l := range targets {
			out = append(out, legResult{l, err})
		}
		return out
	}
	off := slotOffset(m.size, seq)
	return m.fanout(targets, func(d device.Device) error { return d.WriteAt(buf, off, true) })
}
