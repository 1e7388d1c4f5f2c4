package agent

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/hacs/hacs/internal/cluster"
)

// Each volume this node serves, or must serve, has a worker: a goroutine
// that converges that volume alone (start, stop, replica changes, its
// export record). The node loop only works out what each volume should be
// and hands it over; it never calls into a mirror, the export server or
// the cluster store for a volume, so a volume whose mirror is stuck
// (waiting for the cluster store to take a failed replica out of its
// in-sync set, up to the mirror's StoreTimeout, or for a silent replica)
// delays nothing but itself: the node's other volumes are still moved,
// stopped, started and given their replicas at once.
//
// Level-triggered, like the node loop before: a worker acts on the latest
// view it was handed (a newer one replaces an older one not yet acted on;
// nothing queues up) and every step is idempotent. One volume's steps stay
// in order (a stop before the next start, epochs in order), because only
// its worker, or an API call holding the worker's act lock, acts on it.
type volWorker struct {
	name string
	// wake (capacity 1) says that want changed or the loop ticked.
	wake chan struct{}
	// want is the latest view of the volume (nil: gone from the store) and
	// serving whether this node held its lease then; guarded by Agent.mu.
	want    *volumeView
	serving bool
	// cancel ends the step in progress early (publishing the export
	// record, a start's announcement) when a newer view says this node
	// must stop serving the volume; guarded by Agent.mu.
	cancel context.CancelFunc
	// act is held while the volume is acted upon: by the worker while it
	// converges, and by API calls that stop and restart the primary
	// (resizePrimary).
	act sync.Mutex
}

// parallelStarts bounds the primaries started at once: opening one waits
// mostly on round trips (replica links, metadata writes with FUA, the
// store), so a node that must serve many volumes at once (a failover of a
// busy node, a thousand volumes created) starts them side by side, but not
// all at once.
const parallelStarts = 8

// dispatch hands every volume that this node serves, or must start
// serving, its latest view, and wakes its worker. It never waits for a
// volume.
func (a *Agent) dispatch(ctx context.Context, snap cluster.Snapshot) {
	views, errs := volumesFrom(snap)
	for _, err := range errs {
		a.log.Error("cluster store", "err", err)
	}
	serving := a.node.IsServing()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.countEpochsLocked(views)
	for name, v := range views {
		if a.workers[name] != nil || a.mustStartLocked(v, serving) {
			a.handLocked(ctx, name, v, serving)
		}
	}
	for name := range a.workers {
		if views[name] == nil {
			a.handLocked(ctx, name, nil, serving)
		}
	}
}

// handLocked gives a volume's worker (started if need be) its wanted view.
func (a *Agent) handLocked(ctx context.Context, name string, v *volumeView, serving bool) {
	w := a.workers[name]
	if w == nil {
		w = &volWorker{name: name, wake: make(chan struct{}, 1)}
		a.workers[name] = w
		a.wg.Add(1)
		go a.runWorker(ctx, w)
	}
	w.want, w.serving = v, serving
	if p := a.prims[name]; p != nil && w.cancel != nil {
		if why, _ := a.stopReason(name, p, v, serving); why != "" {
			w.cancel() // stop first; what it was doing is moot
		}
	}
	select {
	case w.wake <- struct{}{}:
	default: // already awake: it reads want when it gets there
	}
}

// mustServe tells whether this node is to be the volume's primary.
func (a *Agent) mustServe(v *volumeView, serving bool) bool {
	return serving && a.host != nil && v != nil && v.spec != nil && v.state != nil && v.placement != nil && v.state.Primary == a.self()
}

// mustStartLocked tells whether this node is to start serving the volume
// (if it does not yet): not while a start that failed at this epoch waits
// for its retry.
func (a *Agent) mustStartLocked(v *volumeView, serving bool) bool {
	if !a.mustServe(v, serving) {
		return false
	}
	f, ok := a.failed[v.name]
	return !ok || f.epoch != v.state.Epoch || !time.Now().Before(f.retryAt)
}

// startFailure is a volume's last failed start: its epoch, how many
// starts in a row failed at it, and when to try again.
type startFailure struct {
	epoch   uint64
	tries   int
	retryAt time.Time
}

// Start retries at one epoch wait startRetryBase, doubling up to
// startRetryMax. A start fails for good reasons that pass (the cluster
// store or a replica briefly out of reach, a lost lease regained); the
// store still names this node the primary at this epoch, so nobody else
// serves the volume meanwhile: without a retry it would stay unserved
// until something else changed its state (the fifth session's chaos run
// found a volume left so after a start that could not commit its state).
// Each failure is counted (the volume's failures on this node), so a
// migration threshold moves the volume away from a node where it keeps
// failing, as in Pacemaker.
const (
	startRetryBase = time.Second
	startRetryMax  = 30 * time.Second
)

// noteStartFailure records a failed start at epoch and when to retry.
func (a *Agent) noteStartFailure(name string, epoch uint64) time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	f := a.failed[name]
	if f.epoch != epoch {
		f = startFailure{epoch: epoch}
	}
	f.tries++
	wait := min(startRetryBase<<min(f.tries-1, 10), startRetryMax)
	f.retryAt = time.Now().Add(wait)
	a.failed[name] = f
	return wait
}

// runWorker converges one volume each time it is woken. It ends when the
// volume is neither served here nor to be started here.
func (a *Agent) runWorker(ctx context.Context, w *volWorker) {
	defer a.wg.Done()
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.wake:
		}
		w.act.Lock()
		step, cancel := context.WithCancel(ctx)
		a.mu.Lock()
		v, serving := w.want, w.serving
		w.cancel = cancel
		a.mu.Unlock()
		a.converge(step, w.name, v, serving)
		a.mu.Lock()
		w.cancel = nil
		cancel()
		idle := a.prims[w.name] == nil && len(w.wake) == 0 && !a.mustStartLocked(w.want, w.serving)
		if idle {
			delete(a.workers, w.name)
		}
		a.mu.Unlock()
		w.act.Unlock()
		if idle {
			return
		}
	}
}

// converge brings one volume on this node to v: stop serving it if this
// node must no longer (or not at this epoch), start serving it if it
// must, and keep its replicas and its export record as placed.
func (a *Agent) converge(ctx context.Context, name string, v *volumeView, serving bool) {
	a.mu.Lock()
	p := a.prims[name]
	a.mu.Unlock()
	if p != nil {
		if why, graceful := a.stopReason(name, p, v, serving); why != "" {
			a.stopPrimary(name, p, why, graceful)
			if v == nil || v.spec == nil || v.state == nil {
				a.mu.Lock()
				delete(a.stats, name) // destroyed
				a.mu.Unlock()
			}
			p = nil
		}
	}
	if !a.mustServe(v, serving) {
		return
	}
	if p == nil {
		a.mu.Lock()
		start := a.mustStartLocked(v, serving)
		a.mu.Unlock()
		if start {
			a.startOrCount(ctx, v)
		}
		return
	}
	a.syncReplicas(v, p)
	a.syncAccess(v, p)
	if v.export == nil || v.export.Node != a.self() || v.export.Epoch != p.epoch || v.export.Addr != a.exportAddr {
		a.putExport(ctx, name, p.epoch)
	}
}

// stopReason says why this node must stop serving a volume ("" if not),
// and whether gracefully (flushed: the primary moves on purpose).
func (a *Agent) stopReason(name string, p *primary, v *volumeView, serving bool) (string, bool) {
	switch {
	case !serving:
		return selfFence, false
	case a.cutReason(name) != "":
		return a.cutReason(name), false
	case v == nil || v.spec == nil || v.state == nil:
		return "volume destroyed", true
	case p.m.Fenced():
		return "fenced by a newer primary", false
	case v.state.Primary != a.self():
		return fmt.Sprintf("primary moved to %q at epoch %d", v.state.Primary, v.state.Epoch), true
	case v.state.Epoch != p.epoch:
		return fmt.Sprintf("epoch moved from %d to %d", p.epoch, v.state.Epoch), false
	}
	return "", false
}

// startOrCount starts serving a volume; a failure is reported and counted
// once for its epoch.
func (a *Agent) startOrCount(ctx context.Context, v *volumeView) {
	if err := a.startPrimary(ctx, v); err != nil {
		if ctx.Err() != nil {
			return // a newer view (or the agent's end) cancelled the step: not a failure of the volume
		}
		wait := a.noteStartFailure(v.name, v.state.Epoch)
		a.emit("volume-start-failed", v.name, fmt.Sprintf("cannot serve at epoch %d: %v; trying again in %v unless the volume moves", v.state.Epoch, err, wait))
		a.recordFailure(ctx, v.name)
	}
}

// syncReplicas adds and removes mirror replicas to match placement. It may
// wait for the volume's mirror (a failure handling may hold its lock while
// the cluster store is out of reach): only this volume waits.
func (a *Agent) syncReplicas(v *volumeView, p *primary) {
	have := p.m.Replicas()
	for _, n := range v.placement.Replicas {
		if !slices.Contains(have, n) {
			if err := p.m.AddReplica(a.replicaFor(v.name, p.size, n)); err != nil {
				a.log.Warn("add replica", "volume", v.name, "node", n, "err", err)
			}
		}
	}
	for _, n := range have {
		if !slices.Contains(v.placement.Replicas, n) && n != a.self() {
			if err := p.m.RemoveReplica(n); err != nil {
				a.log.Warn("remove replica", "volume", v.name, "node", n, "err", err)
			}
		}
	}
}

// lockVolume takes the act lock of the worker of a volume this node
// serves, so that nothing else acts on the volume until unlock; it
// returns the primary, or nil if this node does not serve the volume.
func (a *Agent) lockVolume(name string) (p *primary, unlock func()) {
	a.mu.Lock()
	w := a.workers[name]
	a.mu.Unlock()
	if w == nil {
		return nil, func() {}
	}
	w.act.Lock()
	a.mu.Lock()
	if a.workers[name] == w {
		p = a.prims[name]
	}
	a.mu.Unlock()
	if p == nil {
		w.act.Unlock()
		return nil, func() {}
	}
	return p, w.act.Unlock
}
