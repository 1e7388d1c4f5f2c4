package mirror

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
)

// ErrUnsettled fails a read of chunks that a write changed on some
// replicas while others failed it, before the failed ones have left the
// in-sync set in the store: the data there may be lost by a failover to a
// replica that lacks it, so returning it would be a dirty read (a value
// read, then gone). EIO: the client tries again, through a new primary if
// there is one.
var ErrUnsettled = fmt.Errorf("the data was written to only some in-sync replicas and their failure is not recorded in the cluster store yet: %w", syscall.EIO)

// unsettledSet records the chunk ranges of writes that failed on some
// replicas, until those replicas have left the in-sync set (a store update
// that succeeded). A write that reached some replicas but not others
// releases its stripes before the drop of the failed ones is committed;
// without this record, a read could then return what the surviving in-sync
// replicas lack (the chaos suite found it: seed 1795345403978387983, a
// split of cv1's primary, the read 2 s after the write).
type unsettledSet struct {
	mu      sync.Mutex
	entries []*unsettledRange
	// n is len(entries), so that reads skip the lock when there are none
	// (the read path's usual case)
	n atomic.Int32
}

type unsettledRange struct {
	c0, c1 int      // chunks [c0, c1)
	legs   []string // the replicas that failed the write
}

// add records chunks [c0, c1) as lacking on legs; remove it once settled.
func (s *unsettledSet) add(c0, c1 int, legs []string) *unsettledRange {
	r := &unsettledRange{c0: c0, c1: max(c1, c0+1), legs: legs}
	s.mu.Lock()
	s.entries = append(s.entries, r)
	s.n.Store(int32(len(s.entries)))
	s.mu.Unlock()
	return r
}

func (s *unsettledSet) remove(r *unsettledRange) {
	s.mu.Lock()
	s.entries = slices.DeleteFunc(s.entries, func(e *unsettledRange) bool { return e == r })
	s.n.Store(int32(len(s.entries)))
	s.mu.Unlock()
}

// dropped settles the ranges whose failed replicas have all left the
// in-sync set (listed reports whether a replica still is in it).
func (s *unsettledSet) dropped(listed func(id string) bool) {
	s.mu.Lock()
	s.entries = slices.DeleteFunc(s.entries, func(e *unsettledRange) bool {
		return !slices.ContainsFunc(e.legs, listed)
	})
	s.n.Store(int32(len(s.entries)))
	s.mu.Unlock()
}

// overlaps reports whether any of chunks [c0, c1) is unsettled.
func (s *unsettledSet) overlaps(c0, c1 int) bool {
	if s.n.Load() == 0 {
		return false
	}
	c1 = max(c1, c0+1)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.entries {
		if c0 < e.c1 && e.c0 < c1 {
			return true
		}
	}
	return false
}

// isListedLocked reports whether replica id is in the in-sync set the
// store may hold. Callers hold mu.
func (m *Mirror) isListedLocked(id string) bool {
	for _, l := range m.legs {
		if l.ID == id {
			return l.listed
		}
	}
	return false
}
