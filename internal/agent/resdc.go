package agent

import (
	"context"
	"fmt"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/hacs/hacs/internal/cluster"
	"github.com/hacs/hacs/internal/fence"
	"github.com/hacs/hacs/internal/policy"
)

// resDCLoop runs the resource planner while this node is the DC.
func (a *Agent) resDCLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.Tick)
	defer t.Stop()
	for {
		snap, changed := a.res.Snapshot()
		vsnap, vchanged := a.vols.Snapshot()
		nodeChanged := a.node.Changes()
		var fch <-chan struct{}
		if a.cfg.Fence != nil {
			fch = a.cfg.Fence.Changed()
		}
		fenceReady := true
		if a.cfg.Fence != nil {
			_, fenceReady = a.cfg.Fence.View()
		}
		if l := a.node.Leadership(); l.IsDC && fenceReady && snap.Synced && !snap.Stale && vsnap.Synced && !vsnap.Stale {
			if rev := a.planResourcesOnce(ctx, l, snap, vsnap); rev > 0 {
				wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				a.res.WaitSynced(wctx, rev)
				cancel()
				continue
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-vchanged:
		case <-nodeChanged:
		case <-fch:
		case <-t.C:
		}
	}
}

// resState builds the resource planner's input.
func (a *Agent) resState(m *resModel, vsnap cluster.Snapshot) policy.ResState {
	views, _ := volumesFrom(vsnap)
	vst := a.clusterState(views)
	st := policy.ResState{Now: vst.Now, Settings: vst.Settings, Nodes: vst.Nodes, Volumes: vst.Volumes,
		Resources: m.policyResources(), Constraints: m.policyConstraints()}
	members := a.node.Members()
	for i := range st.Nodes {
		if n, ok := members.Node(st.Nodes[i].Name); ok && n.Online && n.Alive != nil {
			st.Nodes[i].Lease = n.Alive.LeaseID
		}
	}
	if a.cfg.Fence != nil {
		view, _ := a.cfg.Fence.View()
		for _, r := range st.Resources {
			for node, lease := range r.Leases {
				if view.Fenced(node, lease) {
					if st.Fenced == nil {
						st.Fenced = map[string]int64{}
					}
					st.Fenced[node] = lease
				}
				if rec, ok := view.Record(node); ok && rec.State != "" {
					if st.FenceInfo == nil {
						st.FenceInfo = map[string]string{}
					}
					info := "fencing " + rec.State
					if rec.LastError != "" {
						info += ": " + rec.LastError
					}
					st.FenceInfo[node] = info
				}
			}
		}
	}
	return st
}

// planResourcesOnce plans the resources and applies the decisions; it
// returns the revision of the last write (0 if none).
func (a *Agent) planResourcesOnce(ctx context.Context, l cluster.Leadership, snap, vsnap cluster.Snapshot) int64 {
	m, errs := resourcesFrom(snap)
	if len(errs) > 0 {
		for _, err := range errs {
			a.log.Error("cluster store", "err", err)
		}
	}
	if len(m.res) == 0 && len(m.cons) == 0 {
		// Nothing to plan (the common case of a storage-only cluster):
		// skip building the state on every volume change.
		if a.cfg.Fence != nil {
			a.cfg.Fence.Require(nil)
		}
		return 0
	}
	st := a.resState(m, vsnap)
	actions := policy.PlanResources(st)
	var last int64
	blocked := map[string]string{}
	needs := []fence.Need{}
	for _, act := range actions {
		switch act.Kind {
		case policy.ResBlocked:
			if _, ok := blocked[act.Resource]; !ok {
				blocked[act.Resource] = act.Reason
			}
			continue
		case policy.ResFence:
			needs = append(needs, fence.Need{Node: act.Node, Lease: act.Lease, Reason: act.Reason, Resources: act.Resources})
			continue
		}
		rev, err := a.applyRes(ctx, l, m, act)
		if err != nil {
			a.log.Warn("resource plan action not applied", "action", act.Kind, "resource", act.Resource, "node", act.Node, "err", err)
			continue
		}
		last = max(last, rev)
		msg := ""
		kind := "resource-" + act.Kind
		switch act.Kind {
		case policy.ResAssign:
			if act.From != "" {
				kind = "resource-move"
				msg = fmt.Sprintf("moving from %s to %s: %s", act.From, act.Node, act.Reason)
			} else {
				msg = fmt.Sprintf("assigned to %s: %s", act.Node, act.Reason)
			}
		case policy.ResUnassign:
			msg = fmt.Sprintf("taken from %s: %s", act.From, act.Reason)
		}
		a.resEvent(kind, act.Resource, msg, map[string]string{"node": act.Node, "from": act.From})
	}
	if a.cfg.Fence != nil {
		a.cfg.Fence.Require(needs)
	} else if len(needs) > 0 && time.Since(a.lastNoFence) > time.Minute {
		a.lastNoFence = time.Now()
		for _, n := range needs {
			a.log.Warn("fencing needed but no fence controller configured; resources stay down", "node", n.Node, "reason", n.Reason)
		}
	}
	for _, name := range m.names() {
		v := m.res[name]
		why, isBlocked := blocked[name]
		switch {
		case isBlocked && (v.blocked == nil || v.blocked.Reason != why):
			d := Degraded{Reason: why, Since: time.Now().UTC()}
			if v.blocked != nil {
				d.Since = v.blocked.Since
			}
			if tr, err := a.txn(ctx, l, nil, clientv3.OpPut(resKey(name, "blocked"), mustJSON(d))); err == nil {
				last = max(last, tr)
				if v.blocked == nil {
					a.resEvent("resource-blocked", name, why, nil)
				}
			}
		case !isBlocked && v.blocked != nil:
			if tr, err := a.txn(ctx, l, nil, clientv3.OpDelete(resKey(name, "blocked"))); err == nil {
				last = max(last, tr)
			}
		}
	}
	return last
}

// applyRes commits an assign or unassign, conditioned on nothing of the
// unit (its keys, its members' keys) having changed since the snapshot, so
// a resource is never assigned to a node while another reports it active.
func (a *Agent) applyRes(ctx context.Context, l cluster.Leadership, m *resModel, act policy.ResAction) (int64, error) {
	v := m.res[act.Resource]
	if v == nil || v.spec == nil {
		return 0, fmt.Errorf("no resource %s", act.Resource)
	}
	names := []string{act.Resource}
	for _, mem := range v.spec.Members {
		if mv := m.res[mem]; mv != nil && !slices.Contains(names, mem) {
			names = append(names, mem)
		}
	}
	var cmps []clientv3.Cmp
	for _, n := range names {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(resAllKeys(n)), "<", m.rev+1).WithPrefix())
	}
	switch act.Kind {
	case policy.ResAssign:
		as := Assignment{Node: act.Node, Since: time.Now().UTC(), Reason: act.Reason}
		return a.txn(ctx, l, cmps, clientv3.OpPut(resKey(act.Resource, "assign"), mustJSON(as)))
	case policy.ResUnassign:
		return a.txn(ctx, l, cmps, clientv3.OpDelete(resKey(act.Resource, "assign")))
	}
	return 0, fmt.Errorf("unknown action %q", act.Kind)
}
