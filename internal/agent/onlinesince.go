package agent

import (
	"sync"
	"time"
)

// onlineTracker gives the planner each node's OnlineSince: since when the
// node has held, without a break, the liveness lease it holds now, so that
// the planner does not move volumes back to a node whose lease flaps
// (policy.Settings.FailbackSettle).
//
// A node's liveness is its lease: the alive record exists exactly while
// the node holds it, and every new lease has a new ID (a node that lost its
// lease, by expiry or a paused or cut-off agent, takes a new one). So the
// tracker remembers the lease it last saw for each node:
//   - a lease it has seen before keeps the time it was first seen;
//   - a new lease of a node it has seen before (with another lease, or
//     offline) is dated now, by this node's clock: the node just came back
//     (at most a plan's period late, which only lengthens the wait);
//   - the first lease it sees of a node (this node just became the DC, or
//     the agent just started) is dated by the liveness record's started_at,
//     which the node writes when it takes that lease (cluster.Liveness), so
//     that a new DC neither forgets a flap that happened just before it
//     took over nor delays the failback to nodes that have been online for
//     long. That time is the other node's clock: it is never taken as later
//     than now (a clock ahead delays no more than counting from now), and
//     a clock behind by more than the settle time can let the very first
//     plan of a new DC fail back to a node that came back just before —
//     a flap while this DC watches is dated by its own clock.
type onlineTracker struct {
	mu    sync.Mutex
	nodes map[string]onlineMark
}

type onlineMark struct {
	lease int64 // 0: seen offline
	since time.Time
}

// observe records what a plan sees of one node and returns its
// OnlineSince (zero when offline). granted is the liveness record's
// started_at (zero when unknown).
func (t *onlineTracker) observe(now time.Time, name string, lease int64, granted time.Time) time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.nodes == nil {
		t.nodes = map[string]onlineMark{}
	}
	old, seen := t.nodes[name]
	if lease == 0 {
		t.nodes[name] = onlineMark{}
		return time.Time{}
	}
	if seen && old.lease == lease {
		return old.since
	}
	since := now
	if !seen && !granted.IsZero() && granted.Before(now) {
		since = granted
	}
	t.nodes[name] = onlineMark{lease: lease, since: since}
	return since
}

// forget drops the nodes not in names (removed from the cluster).
func (t *onlineTracker) forget(names map[string]bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for n := range t.nodes {
		if !names[n] {
			delete(t.nodes, n)
		}
	}
}
