package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The liveness lease and self-fencing.
//
// The node holds one etcd lease; its alive key and its DC election key are
// attached to it. The leader that renews the lease sets its expiry to (time
// it processed the renewal) + TTL, which is after (time the renewal was
// sent) + TTL. So, counting from the send time of the last renewal that
// succeeded, this node knows its lease cannot expire for the others before
// TTL has passed; it stops serving at TTL - SafetyMargin after that send
// time, unless a newer renewal succeeded. A leader change only extends
// leases (etcd refreshes them on promotion), never shortens them.

// Serving returns a context that is canceled as soon as this node must stop
// serving: exports, primaries, resources. When the node is not serving, the
// returned context is already canceled. After a loss, a new context is
// handed out once the node serves again (WaitServing).
func (n *Node) Serving() context.Context {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.servingCtx
}

// IsServing reports whether the node holds its lease and may serve.
func (n *Node) IsServing() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.serving
}

// WaitServing blocks until the node serves, and returns its serving context.
func (n *Node) WaitServing(ctx context.Context) (context.Context, error) {
	for {
		n.mu.Lock()
		serving, sctx, ch := n.serving, n.servingCtx, n.changes
		n.mu.Unlock()
		if serving {
			return sctx, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-n.done:
			if err := n.Err(); err != nil {
				return nil, err
			}
			return nil, ErrStopped
		}
	}
}

// ServingStatus describes the lease and serving state.
type ServingStatus struct {
	Serving bool      `json:"serving"`
	Since   time.Time `json:"since,omitzero"`
	// Reason is why the node last started or stopped serving.
	Reason  string   `json:"reason,omitempty"`
	LeaseID int64    `json:"lease_id,string,omitempty"`
	TTL     Duration `json:"ttl"`
	Margin  Duration `json:"safety_margin"`
	// LastRenewal is the send time of the last successful renewal.
	LastRenewal time.Time `json:"last_renewal,omitzero"`
}

// ServingStatus returns the lease and serving state.
func (n *Node) ServingStatus() ServingStatus {
	n.mu.Lock()
	defer n.mu.Unlock()
	return ServingStatus{
		Serving: n.serving, Since: n.servingSince, Reason: n.servingReason, LeaseID: int64(n.lease),
		TTL: Duration(n.leaseTTL), Margin: Duration(n.cfg.SafetyMargin), LastRenewal: n.lastRenewal,
	}
}

func (n *Node) setServing(on bool, reason string) {
	n.mu.Lock()
	if on && (n.phase == PhaseStopping || n.phase == PhaseStopped || n.phase == PhaseFailed) {
		n.mu.Unlock()
		return
	}
	if on == n.serving {
		n.mu.Unlock()
		return
	}
	n.serving = on
	n.servingSince = time.Now()
	n.servingReason = reason
	if on {
		n.servingCtx, n.servingCancel = context.WithCancel(n.lifeCtx)
	} else if n.servingCancel != nil {
		n.servingCancel()
	}
	dcChange := n.updateDCLocked()
	n.notifyLocked()
	n.mu.Unlock()

	if on {
		n.log.Info("serving", "reason", reason)
	} else {
		n.log.Warn("stopped serving", "reason", reason)
	}
	if n.cfg.OnServing != nil {
		n.callback(func() { n.cfg.OnServing(on, reason) })
	}
	kind := EventServingRegained
	if !on {
		kind = EventServingLost
	}
	if reason != "lease granted" && reason != "agent stopping" {
		n.emit(Event{Kind: kind, Message: reason})
	}
	n.afterDCChange(dcChange)
}

type kaResult struct {
	sent time.Time
	ttl  time.Duration
	err  error
}

// livenessLoop holds a lease, acquiring a new one whenever it is lost.
func (n *Node) livenessLoop() {
	defer n.leaseWG.Done()
	ctx := n.leaseCtx
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		lease, ttl, sent, err := n.acquireLease(ctx)
		if err != nil && ctx.Err() == nil {
			n.counters.grantFailures.Add(1)
		}
		if err != nil {
			if errors.Is(err, ErrRemoved) {
				n.fail(err)
				return
			}
			if ctx.Err() != nil {
				return
			}
			n.log.Debug("acquiring the liveness lease", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		n.holdLease(ctx, lease, ttl, sent)
	}
}

// acquireLease grants a lease and attaches the alive key to it, refusing a
// removed node.
func (n *Node) acquireLease(ctx context.Context) (clientv3.LeaseID, time.Duration, time.Time, error) {
	cctx, cancel := context.WithTimeout(ctx, n.cfg.LeaseTTL)
	defer cancel()
	sent := time.Now()
	g, err := n.cli.Grant(cctx, int64(n.cfg.LeaseTTL/time.Second))
	if err != nil {
		return 0, 0, time.Time{}, err
	}
	ttl := time.Duration(g.TTL) * time.Second
	if ttl != n.cfg.LeaseTTL {
		n.log.Warn("the cluster store changed the lease TTL", "asked", n.cfg.LeaseTTL, "got", ttl)
	}
	id := n.ident
	alive := Liveness{
		Pid: os.Getpid(), Hostname: hostname(), StartedAt: time.Now().UTC(), Version: n.cfg.Version,
		LeaseID: int64(g.ID), LeaseTTL: Duration(ttl),
	}
	n.mu.Lock()
	if cur := n.membership; len(cur.Nodes) > 0 {
		if me, ok := cur.Node(id.Name); ok && me.Alive != nil && me.Alive.Capacity != nil {
			c := *me.Alive.Capacity
			alive.Capacity = &c
		}
	}
	n.mu.Unlock()
	b, _ := json.Marshal(alive)
	aliveKey := NodeAliveKey(id.Name)
	tr, err := n.cli.Txn(cctx).If(
		clientv3.Compare(clientv3.CreateRevision(RemovedKey(id.NodeID)), "=", 0),
		clientv3.Compare(clientv3.CreateRevision(NodeConfigKey(id.Name)), ">", 0),
	).Then(
		clientv3.OpGet(aliveKey),
		clientv3.OpPut(aliveKey, string(b), clientv3.WithLease(g.ID)),
	).Else(clientv3.OpGet(RemovedKey(id.NodeID))).Commit()
	if err != nil {
		n.revokeAsync(g.ID)
		return 0, 0, time.Time{}, err
	}
	if !tr.Succeeded {
		n.revokeAsync(g.ID)
		if r := tr.Responses[0].GetResponseRange(); r != nil && len(r.Kvs) > 0 {
			return 0, 0, time.Time{}, n.markRemoved()
		}
		return 0, 0, time.Time{}, fmt.Errorf("the node record %s is missing", NodeConfigKey(id.Name))
	}
	// A previous incarnation's lease (after a crash) still holds its DC
	// election key: revoke it, so that the election does not wait for it.
	if r := tr.Responses[0].GetResponseRange(); r != nil && len(r.Kvs) > 0 && r.Kvs[0].Lease != 0 && r.Kvs[0].Lease != int64(g.ID) {
		n.revokeAsync(clientv3.LeaseID(r.Kvs[0].Lease))
	}
	n.mu.Lock()
	n.lease, n.leaseTTL, n.lastRenewal, n.aliveRev = g.ID, ttl, sent, tr.Header.Revision
	n.mu.Unlock()
	n.counters.grants.Add(1)
	return g.ID, ttl, sent, nil
}

func (n *Node) revokeAsync(id clientv3.LeaseID) {
	go func() {
		ctx, cancel := context.WithTimeout(n.lifeCtx, 2*time.Second)
		defer cancel()
		n.cli.Revoke(ctx, id)
	}()
}

// holdLease renews the lease until it is lost, fencing the node when a
// renewal does not succeed in time.
func (n *Node) holdLease(ctx context.Context, lease clientv3.LeaseID, ttl time.Duration, sent time.Time) {
	margin := n.cfg.SafetyMargin
	interval := n.cfg.KeepAliveInterval
	lastOK := sent
	deadline := lastOK.Add(ttl - margin)
	if time.Until(deadline) <= interval {
		// the grant itself took too long to count on
		n.log.Warn("lease grant took too long; getting a new one", "took", time.Since(sent))
		n.revokeAsync(lease)
		return
	}
	n.setServing(true, "lease granted")
	cctx, stopCampaign := context.WithCancel(ctx)
	campaignDone := make(chan struct{})
	go func() {
		defer close(campaignDone)
		if slices.Contains(n.cfg.Roles, RoleWitness) {
			return // a witness votes for quorum only: it never coordinates
		}
		n.campaign(cctx, lease)
	}()
	defer func() {
		stopCampaign()
		<-campaignDone
		n.setWon(false, "", 0)
	}()

	fence := time.NewTimer(time.Until(deadline))
	defer fence.Stop()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	results := make(chan kaResult, 8)
	inflight := 0
	failures := 0
	var fencedAt time.Time
	renew := func() {
		inflight++
		go func() {
			t := time.Now()
			kctx, cancel := context.WithTimeout(ctx, ttl-margin)
			defer cancel()
			r, err := n.cli.KeepAliveOnce(kctx, lease)
			res := kaResult{sent: t, err: err}
			if err == nil {
				res.ttl = time.Duration(r.TTL) * time.Second
			}
			results <- res
		}()
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if inflight < 4 {
				renew()
			}
		case r := <-results:
			inflight--
			switch {
			case r.err == nil:
				n.counters.renewals.Add(1)
				if r.sent.After(lastOK) {
					lastOK = r.sent
					deadline = lastOK.Add(r.ttl - margin)
					fence.Reset(time.Until(deadline))
					n.mu.Lock()
					n.lastRenewal = lastOK
					n.mu.Unlock()
				}
				if failures > 0 {
					n.log.Info("lease renewed again", "after_failures", failures)
					failures = 0
				}
				// after a fence, only a renewal sent after it counts: no
				// flapping on replies that were already in flight
				if !n.IsServing() && r.sent.After(fencedAt) && time.Until(deadline) > interval {
					n.setServing(true, "lease renewed: the quorum is reachable again")
				}
			case errors.Is(r.err, rpctypes.ErrLeaseNotFound):
				n.counters.renewalFailures.Add(1)
				n.counters.expired.Add(1)
				n.setServing(false, "liveness lease expired: the cluster considers this node offline")
				n.emit(Event{Kind: EventLeaseExpired, Message: fmt.Sprintf("lease %x of node %s expired; acquiring a new one", int64(lease), n.ident.Name)})
				return
			default:
				if ctx.Err() == nil {
					n.counters.renewalFailures.Add(1)
				}
				failures++
				if failures == 1 && ctx.Err() == nil {
					n.log.Warn("lease renewal failed", "err", r.err)
				}
			}
		case <-fence.C:
			fencedAt = time.Now()
			if n.IsServing() {
				n.counters.selfFences.Add(1)
				n.setServing(false, fmt.Sprintf("liveness lease not renewed for %v (TTL %v, safety margin %v): cannot reach a quorum", time.Since(lastOK).Round(time.Millisecond), ttl, margin))
			}
		}
	}
}

// Leadership says whether this node is the Designated Coordinator.
type Leadership struct {
	// IsDC is true while this node is the DC and serving.
	IsDC bool `json:"is_dc"`
	// DC is the name of the current DC as seen in the store ("" if none).
	DC string `json:"dc"`
	// Term is the create revision of this node's election key while it is
	// the DC: it grows with every new DC.
	Term int64 `json:"term,omitempty"`
	// Since is when this node became DC.
	Since time.Time `json:"since,omitzero"`
	// Ctx is canceled when this node stops being the DC (nil if not DC).
	Ctx context.Context `json:"-"`

	key string
}

// Guard is the comparison to add to every transaction the DC commits: it
// fails once this node is no longer the DC (its election key, attached to
// its lease, is gone).
func (l Leadership) Guard() clientv3.Cmp {
	if !l.IsDC {
		return clientv3.Compare(clientv3.CreateRevision(PrefixDC+"not-dc"), "=", -1)
	}
	return clientv3.Compare(clientv3.CreateRevision(l.key), "=", l.Term)
}

// Leadership returns this node's DC state.
func (n *Node) Leadership() Leadership {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.leadershipLocked()
}

func (n *Node) leadershipLocked() Leadership {
	l := Leadership{IsDC: n.isDC, DC: n.dcName}
	if n.isDC {
		l.Term, l.key, l.Ctx, l.Since = n.dcRev, n.dcKey, n.dcCtx, n.dcSince
	}
	return l
}

// IsDC reports whether this node is the DC (and serving).
func (n *Node) IsDC() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.isDC
}

// WaitDC blocks until this node is the DC.
func (n *Node) WaitDC(ctx context.Context) (Leadership, error) {
	for {
		n.mu.Lock()
		l, ch := n.leadershipLocked(), n.changes
		n.mu.Unlock()
		if l.IsDC {
			return l, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return Leadership{}, ctx.Err()
		case <-n.done:
			return Leadership{}, ErrStopped
		}
	}
}

// updateDCLocked recomputes isDC = won && serving; it returns +1 when this
// node became DC, -1 when it stopped being DC.
func (n *Node) updateDCLocked() int {
	want := n.won && n.serving
	if want == n.isDC {
		return 0
	}
	n.isDC = want
	if want {
		n.dcCtx, n.dcCancel = context.WithCancel(n.servingCtx)
		n.dcSince = time.Now()
		n.dcName = n.ident.Name
		return 1
	}
	n.dcCancel()
	return -1
}

func (n *Node) afterDCChange(change int) {
	switch change {
	case 1:
		n.counters.dcElections.Add(1)
		n.log.Info("this node is now the DC (Designated Coordinator)")
		n.emit(Event{Kind: EventDCElected, Message: fmt.Sprintf("node %s is the DC", n.ident.Name)})
	case -1:
		n.log.Warn("this node is no longer the DC")
		n.emit(Event{Kind: EventDCLost, Message: fmt.Sprintf("node %s is no longer the DC", n.ident.Name)})
	default:
		return
	}
	if n.cfg.OnDC != nil {
		on := change == 1
		n.callback(func() { n.cfg.OnDC(on) })
	}
}

func (n *Node) setWon(won bool, key string, rev int64) {
	n.mu.Lock()
	n.won = won
	if won {
		n.dcKey, n.dcRev = key, rev
	}
	change := n.updateDCLocked()
	if change != 0 {
		n.notifyLocked()
	}
	n.mu.Unlock()
	n.afterDCChange(change)
}

// campaign runs the DC election (the etcd election recipe, as in
// clientv3/concurrency, on this node's own lease): put a key under
// /hacs/dc/ attached to the lease, then wait until every older key is gone.
// The key with the lowest create revision is the DC.
func (n *Node) campaign(ctx context.Context, lease clientv3.LeaseID) {
	key := fmt.Sprintf("%s%016x", PrefixDC, int64(lease))
	var rev int64
	for ctx.Err() == nil {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		tr, err := n.cli.Txn(cctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, n.ident.Name, clientv3.WithLease(lease))).
			Else(clientv3.OpGet(key)).Commit()
		cancel()
		if err == nil {
			rev = tr.Header.Revision
			if !tr.Succeeded {
				if r := tr.Responses[0].GetResponseRange(); r != nil && len(r.Kvs) > 0 {
					rev = r.Kvs[0].CreateRevision
				}
			}
			break
		}
		if !sleepCtx(ctx, 200*time.Millisecond) {
			return
		}
	}
	for ctx.Err() == nil {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		resp, err := n.cli.Get(cctx, PrefixDC, append(clientv3.WithLastCreate(), clientv3.WithMaxCreateRev(rev-1))...)
		cancel()
		if err != nil {
			if !sleepCtx(ctx, 200*time.Millisecond) {
				return
			}
			continue
		}
		if len(resp.Kvs) == 0 {
			n.setWon(true, key, rev)
			<-ctx.Done()
			return
		}
		// wait for the next older key to go
		waitDelete(ctx, n.cli, string(resp.Kvs[0].Key), resp.Header.Revision)
	}
}

// waitDelete returns when key is deleted after rev, when the watch breaks,
// or when ctx is done.
func waitDelete(ctx context.Context, cli *clientv3.Client, key string, rev int64) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for wr := range cli.Watch(wctx, key, clientv3.WithRev(rev+1), clientv3.WithFilterPut()) {
		if wr.Err() != nil {
			sleepCtx(ctx, 200*time.Millisecond)
			return
		}
		for _, ev := range wr.Events {
			if ev.Type == clientv3.EventTypeDelete {
				return
			}
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}
