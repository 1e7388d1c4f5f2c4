package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/types"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Members returns the membership view (from this node's watch cache).
func (n *Node) Members() Membership {
	n.mu.Lock()
	defer n.mu.Unlock()
	m := n.membership
	m.Nodes = make([]NodeInfo, len(n.membership.Nodes))
	for i, x := range n.membership.Nodes {
		m.Nodes[i] = x.clone()
	}
	return m
}

// buildMembership turns the /hacs/nodes/ snapshot into the view.
func buildMembership(s Snapshot) Membership {
	type parts struct {
		cfg   *NodeConfig
		admin NodeAdmin
		alive *Liveness
	}
	by := map[string]*parts{}
	get := func(name string) *parts {
		p := by[name]
		if p == nil {
			p = &parts{}
			by[name] = p
		}
		return p
	}
	for k, kv := range s.KVs {
		name, part, ok := splitNodeKey(k)
		if !ok {
			continue
		}
		switch part {
		case "config":
			var c NodeConfig
			if json.Unmarshal(kv.Value, &c) == nil {
				get(name).cfg = &c
			}
		case "admin":
			json.Unmarshal(kv.Value, &get(name).admin)
		case "alive":
			var a Liveness
			if json.Unmarshal(kv.Value, &a) == nil {
				get(name).alive = &a
			}
		}
	}
	m := Membership{Rev: s.Rev, Stale: s.Stale || !s.Synced}
	for name, p := range by {
		if p.cfg == nil {
			continue
		}
		ni := NodeInfo{NodeConfig: *p.cfg, Standby: p.admin.Standby, Alive: p.alive, Online: p.alive != nil}
		ni.Name = name
		switch {
		case !ni.Online:
			ni.State = StateOffline
		case ni.Standby:
			ni.State = StateStandby
		default:
			ni.State = StateOnline
		}
		m.Nodes = append(m.Nodes, ni)
	}
	sort.Slice(m.Nodes, func(i, j int) bool { return m.Nodes[i].Name < m.Nodes[j].Name })
	return m
}

// dcFromSnapshot is the node holding the oldest election key.
func dcFromSnapshot(s Snapshot) (name, key string, rev int64) {
	for k, kv := range s.KVs {
		if rev == 0 || kv.CreateRev < rev {
			name, key, rev = string(kv.Value), k, kv.CreateRev
		}
	}
	return name, key, rev
}

// watchLoop keeps the membership view and the observed DC up to date, and
// notices this node's own removal.
func (n *Node) watchLoop() {
	defer n.wg.Done()
	ctx := n.lifeCtx
	removalChecked := false
	for {
		ns, nch := n.nodesCache.Snapshot()
		ds, dch := n.dcCache.Snapshot()
		m := buildMembership(ns)
		dcName, dcKey, _ := dcFromSnapshot(ds)

		n.mu.Lock()
		prev := n.membership
		now := time.Now()
		var changes []NodeInfo
		for i := range m.Nodes {
			ni := &m.Nodes[i]
			old, existed := prev.Node(ni.Name)
			if existed && old.Online != ni.Online && ns.Synced && prev.Rev > 0 {
				n.transitions[ni.Name] = now
				changes = append(changes, *ni)
			}
			ni.Since = n.transitions[ni.Name]
		}
		n.membership = m
		registered := n.registeredRev
		if !ds.Stale && ds.Synced {
			n.dcName = dcName
			if n.isDC {
				n.dcName = n.ident.Name
			}
			// our key was deleted (the lease is gone): holdLease will
			// notice too, but stop being DC at once
			if n.won && ds.Rev >= n.dcRev && dcKey != n.dcKey {
				if _, ok := ds.KVs[n.dcKey]; !ok {
					n.won = false
				}
			}
		}
		dcChange := n.updateDCLocked()
		isDC := n.isDC
		n.notifyLocked()
		n.mu.Unlock()
		n.afterDCChange(dcChange)

		for _, ni := range changes {
			if !isDC {
				break
			}
			if ni.Online {
				n.emit(Event{Kind: EventNodeOnline, Message: fmt.Sprintf("node %s is online", ni.Name), Fields: map[string]string{"subject": ni.Name}})
			} else {
				n.emit(Event{Kind: EventNodeOffline, Message: fmt.Sprintf("node %s is offline (lease expired or revoked)", ni.Name), Fields: map[string]string{"subject": ni.Name}})
			}
		}
		if _, ok := m.Node(n.ident.Name); !ok && !m.Stale && m.Rev >= registered && registered > 0 && !removalChecked {
			removalChecked = true
			go n.checkRemoved()
		}
		select {
		case <-ctx.Done():
			return
		case <-nch:
		case <-dch:
		}
	}
}

// checkRemoved fails the node if its identity has been removed.
func (n *Node) checkRemoved() {
	for n.lifeCtx.Err() == nil {
		ctx, cancel := context.WithTimeout(n.lifeCtx, 3*time.Second)
		r, err := n.cli.Get(ctx, RemovedKey(n.ident.NodeID))
		cancel()
		if err == nil {
			if len(r.Kvs) > 0 {
				n.fail(n.markRemoved())
			}
			return
		}
		sleepCtx(n.lifeCtx, time.Second)
	}
}

// dcDuties runs what only the DC does at this layer: trimming the event
// log, handing the raft leadership away, and removing etcd learners that
// never started (an interrupted join).
func (n *Node) dcDuties() {
	defer n.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var lastTrim, lastMove time.Time
	unstarted := map[uint64]time.Time{}
	for {
		select {
		case <-n.lifeCtx.Done():
			return
		case <-t.C:
		}
		l := n.Leadership()
		if !l.IsDC {
			continue
		}
		ctx, cancel := context.WithTimeout(l.Ctx, 3*time.Second)
		if time.Since(lastTrim) > time.Minute {
			lastTrim = time.Now()
			if k, err := TrimEvents(ctx, n.cli, DefaultEventRetention); err == nil && k > 0 {
				n.log.Debug("trimmed the event log", "deleted", k)
			}
		}
		if n.etcd != nil && !n.cfg.AllowDCRaftLeader && time.Since(lastMove) > 2*time.Second {
			if lead, target, why := n.raftLeaderMove(); target != 0 {
				lastMove = time.Now()
				if err := n.etcd.Server.MoveLeader(ctx, lead, target); err != nil {
					n.log.Debug("handing the raft leadership away", "err", err)
				} else {
					n.log.Info("moved the etcd raft leadership "+why, "to", fmt.Sprintf("%x", target))
				}
			}
		}
		if ml, err := n.cli.MemberList(ctx); err == nil {
			seen := map[uint64]bool{}
			for _, m := range ml.Members {
				if !m.IsLearner || m.Name != "" {
					continue
				}
				seen[m.ID] = true
				if _, ok := unstarted[m.ID]; !ok {
					unstarted[m.ID] = time.Now()
				} else if time.Since(unstarted[m.ID]) > 2*time.Minute {
					if _, err := n.cli.MemberRemove(ctx, m.ID); err == nil {
						n.log.Warn("removed an etcd learner that never started (interrupted join)", "member", fmt.Sprintf("%x", m.ID), "peer", m.PeerURLs)
					}
				}
			}
			for id := range unstarted {
				if !seen[id] {
					delete(unstarted, id)
				}
			}
		}
		cancel()
	}
}

// SetRaftLeaderCost tells the DC what it costs to have the raft leader of
// the embedded etcd on a node: the agent counts the volumes a node serves.
// A crash of the raft leader costs a raft election, and the new leader
// extends every lease by an election timeout, so a failover of what the
// crashed node served takes more than a second longer; the DC moves the
// leadership to a voter of cost 0 when the leader's cost is above 0.
func (n *Node) SetRaftLeaderCost(cost func(node string) int) {
	n.mu.Lock()
	n.raftLeaderCost = cost
	n.mu.Unlock()
}

// raftLeaderMove decides whether the DC moves the raft leadership, and
// where: away from the DC itself (a crash of the DC would otherwise also
// cost a raft election), or from a node that serves volumes to one that
// serves none. The target is an online voter other than the DC, a witness
// first (it has nothing else to do), then one of the lowest cost. It
// returns the current leader, the target (0: no move) and why.
func (n *Node) raftLeaderMove() (lead, target uint64, why string) {
	lead = n.etcd.Server.Lead()
	self := uint64(n.etcd.Server.MemberID())
	if lead == 0 {
		return 0, 0, ""
	}
	n.mu.Lock()
	cost := n.raftLeaderCost
	n.mu.Unlock()
	if cost == nil {
		cost = func(string) int { return 0 }
	}
	m := n.Members()
	leadCost := 0
	var best uint64
	bestCost, bestWitness := 0, false
	for _, ni := range m.Nodes {
		if ni.MemberID == lead {
			leadCost = cost(ni.Name)
		}
		if ni.Name == n.ident.Name || !ni.Online || !ni.Voter || ni.MemberID == 0 {
			continue
		}
		if !n.etcd.Server.IsMemberExist(types.ID(ni.MemberID)) {
			continue
		}
		c, w := cost(ni.Name), ni.HasRole(RoleWitness)
		if best == 0 || (w && !bestWitness) || (w == bestWitness && c < bestCost) {
			best, bestCost, bestWitness = ni.MemberID, c, w
		}
	}
	switch {
	case best == 0 || best == lead:
		return lead, 0, ""
	case lead == self:
		return lead, best, "off the DC, so that a crash of the DC costs no raft election"
	case leadCost > 0 && bestCost == 0:
		return lead, best, "to a node that serves no volume, so that a crash of a primary's node costs no raft election"
	}
	return lead, 0, ""
}

// SetStandby puts a node in standby (it takes no new work and hands its
// primaries over) or makes it active again.
func (n *Node) SetStandby(ctx context.Context, name string, standby bool) error {
	cli := n.Client()
	if cli == nil {
		return ErrNotServing
	}
	r, err := cli.Get(ctx, NodeConfigKey(name))
	if err != nil {
		return err
	}
	if len(r.Kvs) == 0 {
		return errStatus(http.StatusNotFound, "no node named %s in the cluster", name)
	}
	by := actor(ctx, n.ident.Name)
	b, _ := json.Marshal(NodeAdmin{Standby: standby, UpdatedAt: time.Now().UTC(), UpdatedBy: by})
	tr, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(NodeConfigKey(name)), ">", 0)).
		Then(clientv3.OpPut(NodeAdminKey(name), string(b))).Commit()
	if err != nil {
		return err
	}
	if !tr.Succeeded {
		return errStatus(http.StatusNotFound, "no node named %s in the cluster", name)
	}
	kind, msg := EventNodeActive, fmt.Sprintf("node %s is active (set by %s)", name, by)
	if standby {
		kind, msg = EventNodeStandby, fmt.Sprintf("node %s is in standby (set by %s)", name, by)
	}
	n.emit(Event{Kind: kind, Message: msg, Fields: map[string]string{"subject": name, "by": by}})
	return nil
}

// RemoveNode removes a node from the cluster: its etcd membership (if it
// votes), its records, and a tombstone of its identity so that it can never
// come back with its stale state. An online node is refused unless force is
// set (it then stops with ErrRemoved).
func (n *Node) RemoveNode(ctx context.Context, name string, force bool) error {
	cli := n.Client()
	if cli == nil || !n.IsServing() {
		return errStatus(http.StatusServiceUnavailable, "%v", ErrNotServing)
	}
	if name == n.ident.Name {
		return errStatus(http.StatusConflict, "node %s cannot remove itself: stop its agent and send the request to another member", name)
	}
	r, err := cli.Get(ctx, NodePrefix(name), clientv3.WithPrefix())
	if err != nil {
		return err
	}
	var cfg *NodeConfig
	online := false
	for _, kv := range r.Kvs {
		_, part, _ := splitNodeKey(string(kv.Key))
		switch part {
		case "config":
			cfg = &NodeConfig{}
			if err := json.Unmarshal(kv.Value, cfg); err != nil {
				return err
			}
		case "alive":
			online = true
		}
	}
	if cfg == nil {
		return errStatus(http.StatusNotFound, "no node named %s in the cluster", name)
	}
	if online && !force {
		return errStatus(http.StatusConflict, "node %s is online: stop its agent first, or force the removal (it will then stop)", name)
	}
	if cfg.Voter && cfg.MemberID != 0 {
		for {
			_, err := cli.MemberRemove(ctx, cfg.MemberID)
			if err == nil || errors.Is(err, rpctypes.ErrMemberNotFound) {
				break
			}
			if errors.Is(err, rpctypes.ErrMemberNotEnoughStarted) {
				return errStatus(http.StatusConflict, "removing the etcd member of node %s would cost the cluster its quorum: start the missing voters first (%v)", name, err)
			}
			// etcd refuses reconfigurations until every member has been
			// connected for a few seconds (just after a join, say); the
			// member being removed may also answer and stop mid-request
			if !sleepCtx(ctx, 500*time.Millisecond) {
				return errStatus(http.StatusServiceUnavailable, "removing the etcd member of node %s: %v", name, err)
			}
		}
	}
	by := actor(ctx, n.ident.Name)
	// stop using the removed member's endpoint before writing on
	n.refreshEndpoints(ctx)
	tomb, _ := json.Marshal(map[string]any{"name": name, "removed_at": time.Now().UTC(), "removed_by": by})
	for {
		tr, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(NodeConfigKey(name)), ">", 0)).Then(
			clientv3.OpPut(RemovedKey(cfg.ID), string(tomb)),
			clientv3.OpDelete(NodePrefix(name), clientv3.WithPrefix()),
		).Else(clientv3.OpGet(RemovedKey(cfg.ID))).Commit()
		if err != nil {
			// the removed member may have answered and stopped: retry
			if !sleepCtx(ctx, 200*time.Millisecond) {
				return errStatus(http.StatusServiceUnavailable, "recording the removal of node %s: %v", name, err)
			}
			continue
		}
		if !tr.Succeeded {
			if r := tr.Responses[0].GetResponseRange(); r == nil || len(r.Kvs) == 0 {
				return errStatus(http.StatusNotFound, "node %s disappeared while being removed", name)
			}
			// an earlier attempt went through
		}
		break
	}
	n.emit(Event{Kind: EventNodeRemoved, Message: fmt.Sprintf("node %s (id %s) removed from the cluster by %s", name, cfg.ID, by), Fields: map[string]string{"subject": name, "by": by}})
	return nil
}

// UpdateSelf changes this node's own record (such as the replica server
// address, filled by the agent once that server listens).
func (n *Node) UpdateSelf(ctx context.Context, fn func(*NodeConfig)) error {
	cli := n.Client()
	if cli == nil {
		return ErrNotServing
	}
	key := NodeConfigKey(n.ident.Name)
	for {
		r, err := cli.Get(ctx, key)
		if err != nil {
			return err
		}
		if len(r.Kvs) == 0 {
			return n.removedError()
		}
		var c NodeConfig
		if err := json.Unmarshal(r.Kvs[0].Value, &c); err != nil {
			return err
		}
		fn(&c)
		c.ID, c.Name = n.ident.NodeID, n.ident.Name
		b, _ := json.Marshal(c)
		tr, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", r.Kvs[0].ModRevision)).Then(clientv3.OpPut(key, string(b))).Commit()
		if err != nil {
			return err
		}
		if tr.Succeeded {
			return nil
		}
	}
}

// SetCapacity publishes this node's storage capacity in its liveness record.
func (n *Node) SetCapacity(ctx context.Context, c Capacity) error {
	cli := n.Client()
	n.mu.Lock()
	lease := n.lease
	serving := n.serving
	n.mu.Unlock()
	if cli == nil || !serving {
		return ErrNotServing
	}
	key := NodeAliveKey(n.ident.Name)
	r, err := cli.Get(ctx, key)
	if err != nil {
		return err
	}
	if len(r.Kvs) == 0 || r.Kvs[0].Lease != int64(lease) {
		return ErrNotServing
	}
	var a Liveness
	if err := json.Unmarshal(r.Kvs[0].Value, &a); err != nil {
		return err
	}
	a.Capacity = &c
	b, _ := json.Marshal(a)
	tr, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.LeaseValue(key), "=", lease)).
		Then(clientv3.OpPut(key, string(b), clientv3.WithLease(lease))).Commit()
	if err != nil {
		return err
	}
	if !tr.Succeeded {
		return ErrNotServing
	}
	return nil
}

// Volumes is the volume StateStore, guarded by this node's lease: an update
// commits only while this node still holds its liveness lease, so that a
// node cut off from the quorum (whose lease may have expired) can never
// commit a state change.
func (n *Node) Volumes() *VolumeStore {
	s := NewVolumeStore(n.Client())
	s.guard = func() ([]clientv3.Cmp, error) {
		n.mu.Lock()
		lease, serving := n.lease, n.serving
		n.mu.Unlock()
		if !serving {
			return nil, ErrNotServing
		}
		return []clientv3.Cmp{clientv3.Compare(clientv3.LeaseValue(NodeAliveKey(n.ident.Name)), "=", lease)}, nil
	}
	return s
}

// Emit queues an event for the cluster event log, stamped with this node's
// name and the current time; events wait in memory (up to 1024) while the
// cluster store is unreachable.
func (n *Node) Emit(kind, resource, message string, fields map[string]string) {
	n.emit(Event{Kind: kind, Resource: resource, Message: message, Fields: fields})
}

func (n *Node) emit(ev Event) {
	if ev.Time.IsZero() {
		ev.Time = time.Now().UTC()
	}
	if ev.Node == "" {
		ev.Node = n.ident.Name
	}
	select {
	case n.events <- ev:
	default:
		n.log.Warn("event queue full; dropping an event", "kind", ev.Kind, "msg", ev.Message)
	}
}

// AppendEvent writes an event now and returns once it is stored.
func (n *Node) AppendEvent(ctx context.Context, ev Event) error {
	cli := n.Client()
	if cli == nil {
		return ErrNotServing
	}
	if ev.Node == "" {
		ev.Node = n.ident.Name
	}
	return AppendEvent(ctx, cli, ev)
}

func (n *Node) eventWriter() {
	defer n.wg.Done()
	var pending []Event
	// Stopping: the events not written yet go to flushEvents (Stop), which
	// writes them before the lease is revoked.
	defer func() { n.evLeft <- pending }()
	for {
		if len(pending) == 0 {
			select {
			case ev := <-n.events:
				pending = append(pending, ev)
			case <-n.evStop:
				return
			case <-n.lifeCtx.Done():
				return
			}
		}
		pending = n.writeEvents(n.evCtx, pending, 2*time.Second)
		if len(pending) > 0 {
			select {
			case <-n.lifeCtx.Done():
				return
			case <-n.evStop:
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
}

// writeEvents drains the queue into pending and writes what it can, each
// batch within attempt.
func (n *Node) writeEvents(ctx context.Context, pending []Event, attempt time.Duration) []Event {
	for {
		select {
		case ev := <-n.events:
			pending = append(pending, ev)
			continue
		default:
		}
		break
	}
	if len(pending) > 1024 {
		pending = pending[len(pending)-1024:]
	}
	for len(pending) > 0 {
		k := min(len(pending), maxEventBatch)
		cctx, cancel := context.WithTimeout(ctx, attempt)
		err := appendEvents(cctx, n.cli, pending[:k])
		cancel()
		if err != nil {
			return pending
		}
		pending = pending[k:]
	}
	return pending
}

// flushEvents (used while stopping) ends the event writer (cutting short
// a write it has under way: retried, not written twice, see appendEvents)
// and writes what it had not written yet and what is queued, within d,
// in attempts of stopEventAttempt (one that went to a member that does
// not answer is tried again, on another). It returns how many events it
// could not write.
func (n *Node) flushEvents(ctx context.Context, d time.Duration) int {
	cctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var pending []Event
	if n.evWriting.Load() {
		n.evStopped.Do(func() { close(n.evStop); n.evCancel() })
		select {
		case pending = <-n.evLeft:
		case <-cctx.Done():
			return len(n.events) + 1 // the writer did not end: not known
		}
	}
	for {
		pending = n.writeEvents(cctx, pending, stopEventAttempt)
		if len(pending) == 0 || cctx.Err() != nil {
			return len(pending)
		}
		sleepCtx(cctx, 50*time.Millisecond)
	}
}

// stopEventAttempt bounds one attempt to write the last events.
const stopEventAttempt = 500 * time.Millisecond
