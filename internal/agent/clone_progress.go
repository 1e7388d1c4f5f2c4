package agent

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hacs/hacs/internal/cluster"
)

// CloneProgress is the answer of GET /v1/clones/{name}: how far the copy
// of a volume being cloned (hacs volume clone SOURCE NAME) is.
type CloneProgress struct {
	Running bool  `json:"running"`
	Done    int64 `json:"done_bytes"`
	Total   int64 `json:"total_bytes"`
	// Nodes are the copies per node (each node holding the snapshot copies
	// it into its own replica of the new volume), those that ended less
	// than a minute ago included.
	Nodes map[string]CopyProgress `json:"nodes,omitempty"`
}

// CopyProgress is one node's copy.
type CopyProgress struct {
	Done  int64 `json:"done_bytes"`
	Total int64 `json:"total_bytes"`
	Ended bool  `json:"ended,omitempty"`
}

// copyKeep is how long an ended copy stays reported: the agent
// coordinating the clone learns that the node's part is done when the
// node's answer reaches it, after the copy ended.
const copyKeep = time.Minute

// cloneRegistry keeps the clone copies of this node, and the clones this
// agent coordinates (it asks the nodes one after the other).
type cloneRegistry struct {
	mu     sync.Mutex
	copies map[string]*copyRun
	plans  map[string]*clonePlan
}

type copyRun struct {
	done, total atomic.Int64
	endedAt     time.Time // under cloneRegistry.mu
}

type clonePlan struct {
	nodes    []string
	size     int64
	mu       sync.Mutex
	finished map[string]bool // nodes whose part ended
}

func (p *clonePlan) finish(node string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.finished[node] = true
}

func (p *clonePlan) isFinished(node string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.finished[node]
}

// startCopy registers this node's copy into the new volume name; the
// returned function marks it ended.
func (c *cloneRegistry) startCopy(name string) (*copyRun, func()) {
	run := &copyRun{}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expireLocked()
	if c.copies == nil {
		c.copies = map[string]*copyRun{}
	}
	c.copies[name] = run
	return run, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		run.endedAt = time.Now()
	}
}

func (c *cloneRegistry) expireLocked() {
	for name, run := range c.copies {
		if !run.endedAt.IsZero() && time.Since(run.endedAt) > copyKeep {
			delete(c.copies, name)
		}
	}
}

// startPlan registers a clone this agent coordinates: copies of size
// bytes on nodes.
func (c *cloneRegistry) startPlan(name string, nodes []string, size int64) (*clonePlan, func()) {
	p := &clonePlan{nodes: nodes, size: size, finished: map[string]bool{}}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.plans == nil {
		c.plans = map[string]*clonePlan{}
	}
	c.plans[name] = p
	return p, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.plans[name] == p {
			delete(c.plans, name)
		}
	}
}

func (c *cloneRegistry) local(name string) (CopyProgress, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expireLocked()
	run := c.copies[name]
	if run == nil {
		return CopyProgress{}, false
	}
	p := CopyProgress{Done: run.done.Load(), Total: run.total.Load(), Ended: !run.endedAt.IsZero()}
	if p.Ended {
		p.Done = p.Total
	}
	return p, true
}

func (c *cloneRegistry) plan(name string) *clonePlan {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.plans[name]
}

// cloneCopy clones snapshot into newName on a local replica, reporting
// the copy's progress to run.
func cloneCopy(v volumeAdmin, snapshot, newName string, run *copyRun) error {
	type withProgress interface {
		CloneProgress(snapshot, newName string, progress func(done, total int64)) error
	}
	if cp, ok := v.(withProgress); ok {
		return cp.CloneProgress(snapshot, newName, func(done, total int64) {
			run.total.Store(total)
			run.done.Store(done)
		})
	}
	return v.Clone(snapshot, newName)
}

// handleCloneProgress answers GET /v1/clones/{name}: the progress of the
// copies into the new volume name, asked of every online storage node
// (with ?local=1: this node's copy only). The agent coordinating the
// clone knows the whole (the nodes to copy on, the size) and answers in
// the volume's bytes, all copies together; another agent sums the copies
// it hears of.
func (a *Agent) handleCloneProgress(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := cluster.ValidName("volume", name); err != nil {
		writeErr(w, errf(http.StatusBadRequest, "%v", err))
		return
	}
	if r.URL.Query().Get("local") == "1" {
		var out CloneProgress
		if p, ok := a.clones.local(name); ok {
			out = CloneProgress{Running: !p.Ended, Done: p.Done, Total: p.Total, Nodes: map[string]CopyProgress{a.self(): p}}
		}
		writeJSON(w, http.StatusOK, out)
		return
	}
	plan := a.clones.plan(name)
	var nodes []string
	if plan != nil {
		nodes = plan.nodes
	} else {
		for _, n := range a.node.Members().Nodes {
			if n.Online && n.HasRole(cluster.RoleStorage) {
				nodes = append(nodes, n.Name)
			}
		}
	}
	out := CloneProgress{Nodes: map[string]CopyProgress{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Go(func() {
			var p CloneProgress
			if n == a.self() {
				if cp, ok := a.clones.local(name); ok {
					p.Nodes = map[string]CopyProgress{n: cp}
				}
			} else {
				ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
				defer cancel()
				if a.callNode(ctx, n, http.MethodGet, "/v1/clones/"+name+"?local=1", "", nil, &p) != nil {
					return
				}
			}
			if cp, ok := p.Nodes[n]; ok {
				mu.Lock()
				out.Nodes[n] = cp
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if plan == nil {
		// A clone that began while the nodes were asked: a node may
		// already report its part, which counts against the plan's total
		// (the sum below would show one node's copy as the whole).
		plan = a.clones.plan(name)
	}
	if plan != nil {
		// In the volume's bytes (a replica also holds the replication
		// metadata): a node's part counts whole once it ended, by its
		// share while it runs.
		out.Running = true
		out.Total = plan.size * int64(len(plan.nodes))
		for _, n := range plan.nodes {
			p, ok := out.Nodes[n]
			switch {
			case plan.isFinished(n) || (ok && p.Ended):
				out.Done += plan.size
			case ok && p.Total > 0:
				out.Done += int64(float64(plan.size) * float64(min(p.Done, p.Total)) / float64(p.Total))
			}
		}
		out.Done = min(out.Done, out.Total)
	} else {
		for _, p := range out.Nodes {
			out.Done += p.Done
			out.Total += p.Total
			out.Running = out.Running || !p.Ended
		}
	}
	if len(out.Nodes) == 0 {
		out.Nodes = nil
	}
	writeJSON(w, http.StatusOK, out)
}
