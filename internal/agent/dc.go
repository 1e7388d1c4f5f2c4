package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/hacs/hacs/internal/cluster"
	"github.com/hacs/hacs/internal/mirror"
	"github.com/hacs/hacs/internal/policy"
)

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// dcLoop runs the planner while this node is the Designated Coordinator.
func (a *Agent) dcLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.Tick)
	defer t.Stop()
	for {
		snap, changed := a.vols.Snapshot()
		nodeChanged := a.node.Changes()
		if l := a.node.Leadership(); l.IsDC && snap.Synced && !snap.Stale {
			rev := a.planOnce(ctx, l, snap)
			if rev > 0 {
				// Wait until our own writes are in the cache before
				// planning again, so no decision is taken twice.
				wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				a.vols.WaitSynced(wctx, rev)
				cancel()
				continue
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-nodeChanged:
		case <-t.C:
		}
	}
}

// countPrimaries records how many volumes each node serves, for the
// placement of the etcd raft leader (cluster.Node.SetRaftLeaderCost).
func (a *Agent) countPrimaries(views map[string]*volumeView) {
	n := map[string]int{}
	for _, v := range views {
		if v.state != nil && v.state.Primary != "" {
			n[v.state.Primary]++
		}
	}
	a.primaryCount.Store(&n)
}

// raftLeaderCost is the number of volumes node serves, as of the last plan.
func (a *Agent) raftLeaderCost(node string) int {
	if n := a.primaryCount.Load(); n != nil {
		return (*n)[node]
	}
	return 0
}

// clusterState builds the planner's input.
func (a *Agent) clusterState(views map[string]*volumeView) policy.State {
	st := policy.State{Now: time.Now().UTC(), Settings: a.cfg.Settings}
	members := a.node.Members()
	names := make(map[string]bool, len(members.Nodes))
	for _, n := range members.Nodes {
		names[n.Name] = true
		pn := policy.Node{Name: n.Name, Online: n.Online, Standby: n.Standby, Labels: n.Labels}
		var granted time.Time
		if n.Online && n.Alive != nil {
			pn.Lease, granted = n.Alive.LeaseID, n.Alive.StartedAt
		}
		pn.OnlineSince = a.online.observe(st.Now, n.Name, pn.Lease, granted)
		for _, r := range n.Roles {
			pn.Roles = append(pn.Roles, string(r))
		}
		if n.Alive != nil && n.Alive.Capacity != nil {
			pn.FreeBytes = n.Alive.Capacity.FreeBytes
		}
		if !n.Online {
			pn.OfflineSince = n.Since
			if pn.OfflineSince.IsZero() {
				pn.OfflineSince = st.Now // unknown: count from now
			}
		}
		st.Nodes = append(st.Nodes, pn)
	}
	if !members.Stale {
		a.online.forget(names)
	}
	vnames := make([]string, 0, len(views))
	for name := range views {
		vnames = append(vnames, name)
	}
	sort.Strings(vnames)
	for _, name := range vnames {
		v := views[name]
		if v.spec == nil {
			continue
		}
		pv := policy.Volume{Name: name, Size: v.spec.Size, Replicas: v.spec.Replicas, Spread: v.spec.Spread,
			Stopped: v.spec.Stopped, Constraints: v.spec.Policy, Failures: v.failures}
		if v.placement != nil {
			pv.Placed = v.placement.Replicas
		}
		if v.state != nil {
			pv.Epoch, pv.Primary, pv.InSync = v.state.Epoch, v.state.Primary, v.state.InSync
		}
		st.Volumes = append(st.Volumes, pv)
	}
	return st
}

// planOnce plans and applies; it returns the revision of the last write
// (0 if nothing was written).
func (a *Agent) planOnce(ctx context.Context, l cluster.Leadership, snap cluster.Snapshot) int64 {
	views, _ := volumesFrom(snap)
	a.countPrimaries(views)
	actions := policy.Plan(a.clusterState(views))
	var last int64
	degraded := map[string]string{}
	for _, act := range actions {
		v := views[act.Volume]
		if act.Kind == policy.ActDegraded {
			degraded[act.Volume] = act.Reason
			continue
		}
		rev, err := a.apply(ctx, l, v, act)
		if err != nil {
			a.log.Warn("plan action not applied", "action", act.Kind, "volume", act.Volume, "node", act.Node, "err", err)
			continue
		}
		if rev > 0 {
			last = max(last, rev)
			a.emit("plan-"+act.Kind, act.Volume, describe(act))
		}
	}
	// Record why volumes are degraded, and clear what no longer holds.
	for name, v := range views {
		why, isDegraded := degraded[name]
		switch {
		case isDegraded && (v.degraded == nil || v.degraded.Reason != why):
			d := Degraded{Reason: why, Since: time.Now().UTC()}
			if tr, err := a.txn(ctx, l, nil, clientv3.OpPut(degradedKey(name), mustJSON(d))); err == nil {
				last = max(last, tr)
				a.emit("volume-degraded", name, why)
			}
		case !isDegraded && v.degraded != nil:
			if tr, err := a.txn(ctx, l, nil, clientv3.OpDelete(degradedKey(name))); err == nil {
				last = max(last, tr)
			}
		}
	}
	return last
}

func describe(act policy.Action) string {
	switch act.Kind {
	case policy.ActPlace:
		return fmt.Sprintf("placed replicas on %v, primary %s: %s", act.Replicas, act.Node, act.Reason)
	case policy.ActPromote:
		return fmt.Sprintf("primary %s -> %s: %s", orNone(act.From), act.Node, act.Reason)
	case policy.ActStop:
		return fmt.Sprintf("primary %s stopped: %s", act.From, act.Reason)
	}
	return fmt.Sprintf("%s %s: %s", act.Kind, act.Node, act.Reason)
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// txn commits ops if this node is still the DC and the compared keys are
// unchanged. It returns the commit revision.
func (a *Agent) txn(ctx context.Context, l cluster.Leadership, cmps []clientv3.Cmp, ops ...clientv3.Op) (int64, error) {
	tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	tr, err := a.node.Client().Txn(tctx).If(append([]clientv3.Cmp{l.Guard()}, cmps...)...).Then(ops...).Commit()
	if err != nil {
		return 0, err
	}
	if !tr.Succeeded {
		return 0, fmt.Errorf("the cluster changed meanwhile (or this node is no longer the DC); planning again")
	}
	return tr.Header.Revision, nil
}

func unchanged(key string, revs map[string]int64) clientv3.Cmp {
	return clientv3.Compare(clientv3.ModRevision(key), "=", revs[key])
}

func (a *Agent) apply(ctx context.Context, l cluster.Leadership, v *volumeView, act policy.Action) (int64, error) {
	name := act.Volume
	sk, pk := cluster.VolumeStateKey(name), placementKey(name)
	switch act.Kind {
	case policy.ActPlace:
		st := mirror.State{Epoch: 1, Primary: act.Node, InSync: act.Replicas}
		return a.txn(ctx, l, []clientv3.Cmp{unchanged(pk, v.revs), unchanged(sk, v.revs), unchanged(specKey(name), v.revs)},
			clientv3.OpPut(pk, mustJSON(Placement{Replicas: act.Replicas})), clientv3.OpPut(sk, mustJSON(st)))
	case policy.ActPromote, policy.ActStop:
		if v.state == nil {
			return 0, fmt.Errorf("volume %s has no state", name)
		}
		st := *v.state
		st.InSync = slices.Clone(st.InSync)
		st.Epoch++
		st.Primary = act.Node
		if act.Kind == policy.ActPromote && !st.Has(act.Node) {
			return 0, fmt.Errorf("refusing to promote %s: not in the in-sync set %v", act.Node, st.InSync)
		}
		return a.txn(ctx, l, []clientv3.Cmp{unchanged(sk, v.revs)}, clientv3.OpPut(sk, mustJSON(st)))
	case policy.ActAddReplica, policy.ActRemoveReplica:
		if v.placement == nil {
			return 0, fmt.Errorf("volume %s has no placement", name)
		}
		reps := slices.Clone(v.placement.Replicas)
		if act.Kind == policy.ActAddReplica {
			reps = append(reps, act.Node)
		} else {
			reps = slices.DeleteFunc(reps, func(s string) bool { return s == act.Node })
		}
		return a.txn(ctx, l, []clientv3.Cmp{unchanged(pk, v.revs)}, clientv3.OpPut(pk, mustJSON(Placement{Replicas: reps})))
	}
	return 0, fmt.Errorf("unknown action %q", act.Kind)
}

// takeoverLoop reports, each time this node becomes the DC, the nodes that
// went offline while no DC could record it (such as the previous DC
// itself, whose death is what made this node the DC): the cluster layer
// records node-offline only on the DC, for the changes it sees as DC.
func (a *Agent) takeoverLoop(ctx context.Context) {
	for {
		l, err := a.node.WaitDC(ctx)
		if err != nil {
			return
		}
		a.reportUnrecordedOffline(l.Ctx)
		select {
		case <-ctx.Done():
			return
		case <-l.Ctx.Done():
		}
	}
}

func (a *Agent) reportUnrecordedOffline(ctx context.Context) {
	for _, n := range a.node.Members().Nodes {
		if n.Online || n.Since.IsZero() || time.Since(n.Since) > 5*time.Minute {
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		evs, _, err := cluster.ListEvents(lctx, a.node.Client(), cluster.EventFilter{Kind: cluster.EventNodeOffline, Since: n.Since.Add(-30 * time.Second)})
		cancel()
		if err != nil {
			a.log.Warn("checking the event log for node-offline", "node", n.Name, "err", err)
			continue
		}
		if slices.ContainsFunc(evs, func(e cluster.Event) bool { return e.Fields["subject"] == n.Name }) {
			continue
		}
		a.node.Emit(cluster.EventNodeOffline, "", fmt.Sprintf("node %s is offline (lease expired or revoked; seen at %s, recorded by the new DC)",
			n.Name, n.Since.UTC().Format(time.RFC3339)), map[string]string{"subject": n.Name})
	}
}
