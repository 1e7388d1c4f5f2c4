package agent

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/hacs/hacs/internal/cluster"
	"github.com/hacs/hacs/internal/ocf"
	"github.com/hacs/hacs/internal/policy"
)

// localRes is a primitive as this node's agent knows it.
type localRes struct {
	name string
	spec ResourceSpec
	// gone: the spec was deleted; stop it, then forget it.
	gone bool
	// state is what the last action found: unknown (not probed yet),
	// running, promoted, failed, stop-failed or stopped.
	state       string
	busy        bool
	reprobe     string
	lastMonitor time.Time
	last        ocf.Result
	published   *ResourceStatus
}

// resEvent emits an event about a resource.
func (a *Agent) resEvent(kind, name, msg string, fields map[string]string) {
	a.log.Info(msg, "event", kind, "resource", name)
	a.node.Emit(kind, "resource/"+name, msg, fields)
}

// resNodeLoop converges this node's resources: probes every primitive once
// (so a restarted agent never starts twice what already runs), starts what
// the DC assigned here (group members in order), stops the rest (in reverse
// order), and monitors what runs.
func (a *Agent) resNodeLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.Tick)
	defer t.Stop()
	for {
		snap, changed := a.res.Snapshot()
		nodeChanged := a.node.Changes()
		if snap.Synced {
			a.resReconcile(ctx, snap, false)
		}
		select {
		case <-ctx.Done():
			a.resShutdown()
			return
		case <-changed:
		case <-nodeChanged:
		case <-a.resWake:
		case <-t.C:
		}
	}
}

// resShutdown stops every local resource when the agent stops (bounded).
func (a *Agent) resShutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), ResourceStopTimeout)
	defer cancel()
	for {
		snap, _ := a.res.Snapshot()
		if a.resReconcile(ctx, snap, true) == 0 {
			return
		}
		select {
		case <-ctx.Done():
			a.log.Warn("agent stopping: resources still not stopped")
			return
		case <-a.resWake:
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (a *Agent) wakeRes() {
	select {
	case a.resWake <- struct{}{}:
	default:
	}
}

// unitSpec returns the spec whose meta attributes (on-fail, thresholds)
// apply to a primitive: its group's, or its own.
func unitSpec(m *resModel, l *localRes) ResourceSpec {
	if u := m.unit(l.name); u != l.name {
		return *m.res[u].spec
	}
	return l.spec
}

// mayStartHere tells why a primitive must not be (re)started on this node
// after failures here ("" if it may): the DC will move it.
func (a *Agent) mayStartHere(m *resModel, l *localRes, meta ResourceSpec) string {
	return a.mayStartHereAs(m, l, meta, a.self())
}

func (a *Agent) mayStartHereAs(m *resModel, l *localRes, meta ResourceSpec, self string) string {
	v := m.res[l.name]
	if v == nil {
		return ""
	}
	f, ok := v.failures[self]
	if !ok || f.Count == 0 {
		return ""
	}
	if ft := time.Duration(meta.Policy.FailureTimeout); ft > 0 && time.Since(f.Last) >= ft {
		return ""
	}
	switch {
	case f.Fatal:
		return "failed here: " + f.Message
	case meta.OnFail == policy.OnFailIgnore:
		return ""
	case meta.OnFail == policy.OnFailMove || meta.OnFail == policy.OnFailStop || meta.OnFail == policy.OnFailFence:
		return "failed here (on-fail=" + meta.OnFail + ")"
	case meta.Policy.MigrationThreshold > 0 && f.Count >= meta.Policy.MigrationThreshold:
		return fmt.Sprintf("failed %d times here (migration-threshold %d)", f.Count, meta.Policy.MigrationThreshold)
	}
	return ""
}

// memberReady tells whether a group member is up on this node (a volume
// member: this node serves it as primary).
func (a *Agent) memberReady(mem string) bool {
	if vol, ok := strings.CutPrefix(mem, policy.VolumeRef); ok {
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.prims[vol] != nil
	}
	l := a.local[mem]
	return l != nil && !l.busy && (l.state == policy.StateRunning || l.state == policy.StatePromoted)
}

// memberDown tells whether a group member is stopped on this node.
func (a *Agent) memberDown(mem string) bool {
	if strings.HasPrefix(mem, policy.VolumeRef) {
		return true
	}
	l := a.local[mem]
	return l == nil || (!l.busy && l.state == "stopped")
}

// resReconcile runs one round; it returns how many local resources are
// not stopped (for shutdown).
func (a *Agent) resReconcile(ctx context.Context, snap cluster.Snapshot, shutdown bool) int {
	m, errs := resourcesFrom(snap)
	for _, err := range errs {
		a.log.Error("cluster store", "err", err)
	}
	serving := a.node.IsServing() && !shutdown
	self := a.self()
	a.rmu.Lock()
	defer a.rmu.Unlock()
	// Track every primitive with a spec.
	for _, name := range m.names() {
		v := m.res[name]
		if v.spec.Type == policy.TypeGroup {
			continue
		}
		l := a.local[name]
		if l == nil {
			l = &localRes{name: name, state: policy.StateUnknown}
			a.local[name] = l
		}
		l.spec, l.gone = *v.spec, false
		if v.reprobe != l.reprobe && !l.busy {
			if l.reprobe != "" || l.state != policy.StateUnknown {
				l.state = policy.StateUnknown
			}
			l.reprobe = v.reprobe
		}
	}
	notStopped := 0
	for name, l := range a.local {
		if v := m.res[name]; v == nil || v.spec == nil {
			l.gone = true
		}
		if l.busy || l.state == policy.StateRunning || l.state == policy.StatePromoted || l.state == policy.StateFailed {
			notStopped++
		}
		if l.busy {
			continue
		}
		if l.gone && (l.state == "stopped" || l.state == policy.StateUnknown) {
			delete(a.local, name)
			if !shutdown {
				go a.deleteStatus(ctx, name)
			}
			continue
		}
		meta := l.spec
		if !l.gone {
			meta = unitSpec(m, l)
		}
		unit := m.unit(name)
		var members []string
		if unit != name {
			members = m.res[unit].spec.Members
		}
		idx := slices.Index(members, name)
		assigned := false
		if uv := m.res[unit]; uv != nil && uv.assign != nil && uv.assign.Node == self {
			assigned = true
		}
		desired := serving && !l.gone && assigned && !meta.Stopped
		startOK, stopOK := true, true
		if idx >= 0 {
			for _, mem := range members[:idx] {
				if !a.memberReady(mem) {
					startOK = false
				}
			}
			for _, mem := range members[idx+1:] {
				if !a.memberDown(mem) {
					stopOK = false
				}
			}
		}
		switch l.state {
		case policy.StateUnknown:
			if !shutdown {
				a.runOp(ctx, m, l, "probe")
			}
		case policy.StateRunning, policy.StatePromoted:
			switch {
			case !desired && stopOK:
				a.runOp(ctx, m, l, ocf.ActionStop)
			case desired && time.Since(l.lastMonitor) >= l.spec.Ops.interval():
				a.runOp(ctx, m, l, ocf.ActionMonitor)
			}
		case "stopped":
			if desired && startOK {
				if why := a.mayStartHere(m, l, meta); why == "" {
					a.runOp(ctx, m, l, ocf.ActionStart)
				}
			}
		case policy.StateFailed:
			if meta.OnFail == policy.OnFailFence && serving {
				continue // left as it is for fencing
			}
			if stopOK {
				a.runOp(ctx, m, l, ocf.ActionStop)
			}
		}
	}
	// Publish what changed.
	if serving || shutdown {
		lease := a.node.ServingStatus().LeaseID
		for name, l := range a.local {
			if l.busy || l.gone {
				continue
			}
			st := ResourceStatus{State: l.state, Lease: lease, Op: l.last.Action, RC: l.last.RC, Message: l.last.Message, Stderr: l.last.Stderr}
			if v := m.res[name]; v != nil {
				if cur, ok := v.status[self]; ok && cur.State == st.State && cur.Lease == st.Lease && cur.Op == st.Op && cur.RC == st.RC && cur.Message == st.Message {
					l.published = &cur
					continue
				}
			}
			if l.published != nil && l.published.State == st.State && l.published.Lease == st.Lease && l.published.Op == st.Op &&
				l.published.RC == st.RC && l.published.Message == st.Message {
				continue
			}
			st.At = time.Now().UTC()
			pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			if shutdown {
				pctx, cancel = context.WithTimeout(context.Background(), 2*time.Second)
			}
			_, err := a.node.Client().Put(pctx, resStatusKey(name, self), mustJSON(st))
			cancel()
			if err == nil {
				l.published = &st
			}
		}
	}
	return notStopped
}

func (a *Agent) deleteStatus(ctx context.Context, name string) {
	dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	a.node.Client().Delete(dctx, resStatusKey(name, a.self()))
}

// runOp starts an action in the background (the resource is busy until it
// ends); "probe" is a monitor with interval 0.
func (a *Agent) runOp(ctx context.Context, m *resModel, l *localRes, op string) {
	l.busy = true
	spec := l.spec
	meta := spec
	if !l.gone {
		meta = unitSpec(m, l)
	}
	in := ocf.Instance{Name: l.name, Type: spec.Type, Params: spec.Params, Node: a.self()}
	action, interval := op, time.Duration(0)
	if op == "probe" {
		action = ocf.ActionMonitor
	} else if op == ocf.ActionMonitor {
		interval = spec.Ops.interval()
	}
	timeout := spec.Ops.timeout(action)
	prev := l.state
	go func() {
		// A stop runs to its end (or timeout) even while the agent stops.
		octx := context.Background()
		if action != ocf.ActionStop {
			octx = ctx
		}
		res := a.runner.Run(octx, in, action, timeout, interval)
		var next string
		var failure *policy.Failure
		evKind, evMsg := "", ""
		switch op {
		case "probe":
			switch res.RC {
			case ocf.RCOK:
				next = policy.StateRunning
				evKind, evMsg = "resource-probed", "probe: found running on "+a.self()
			case ocf.RCRunningPromoted:
				next = policy.StatePromoted
				evKind, evMsg = "resource-probed", "probe: found running (promoted) on "+a.self()
			case ocf.RCNotRunning, ocf.RCErrInstalled:
				next = "stopped"
			default:
				next = policy.StateFailed
				evKind, evMsg = "resource-failed", "probe failed on "+a.self()+": "+res.Message
			}
		case ocf.ActionStart:
			if res.RC == ocf.RCOK {
				next = policy.StateRunning
				evKind, evMsg = "resource-started", fmt.Sprintf("started on %s in %v", a.self(), res.Duration.Round(time.Millisecond))
				break
			}
			failure = &policy.Failure{Fatal: true, Op: "start", Message: res.Message}
			evKind, evMsg = "resource-failed", "start failed on "+a.self()+": "+res.Message
			// Clean up after the failed start.
			stop := a.runner.Run(context.Background(), in, ocf.ActionStop, spec.Ops.timeout(ocf.ActionStop), 0)
			next = "stopped"
			if stop.RC != ocf.RCOK && stop.RC != ocf.RCErrInstalled {
				next = policy.StateStopFailed
				evMsg += "; the stop after it failed too: " + stop.Message
			}
		case ocf.ActionStop:
			// An agent that is not installed cannot be running here.
			if res.RC == ocf.RCOK || res.RC == ocf.RCErrInstalled {
				next = "stopped"
				evKind, evMsg = "resource-stopped", fmt.Sprintf("stopped on %s in %v", a.self(), res.Duration.Round(time.Millisecond))
				break
			}
			next = policy.StateStopFailed
			failure = &policy.Failure{Op: "stop", Message: res.Message}
			evKind, evMsg = "resource-failed", "stop failed on "+a.self()+": "+res.Message+" (the node must be fenced)"
		case ocf.ActionMonitor:
			switch {
			case res.RC == ocf.RCOK:
				next = policy.StateRunning
			case res.RC == ocf.RCRunningPromoted:
				next = policy.StatePromoted
			case meta.OnFail == policy.OnFailIgnore:
				next = prev
				evKind, evMsg = "resource-failure-ignored", "monitor failed on "+a.self()+" (on-fail=ignore): "+res.Message
			default:
				next = policy.StateFailed
				failure = &policy.Failure{Op: "monitor", Message: res.Message, Fatal: ocf.Hard(res.RC)}
				evKind, evMsg = "resource-failed", "monitor failed on "+a.self()+": "+res.Message
			}
		}
		if failure != nil && failure.Message == "" {
			failure.Message = action + ": " + ocf.Describe(res.RC)
		}
		if evMsg != "" && strings.HasSuffix(evMsg, ": ") {
			evMsg += action + ": " + ocf.Describe(res.RC)
		}
		var rev int64
		var published *ResourceStatus
		if failure != nil {
			// The failed state and the failure count land together, so the
			// planner never sees one without the other.
			st := ResourceStatus{State: next, Lease: a.node.ServingStatus().LeaseID, Op: res.Action, RC: res.RC,
				Message: res.Message, Stderr: res.Stderr, At: time.Now().UTC()}
			if st.Message == "" {
				st.Message = failure.Message
			}
			rev = a.recordResFailure(ctx, l.name, *failure, clientv3.OpPut(resStatusKey(l.name, a.self()), mustJSON(st)))
			if rev > 0 {
				published = &st
			}
		}
		if evKind != "" {
			fields := map[string]string{"node": a.self(), "op": action, "rc": fmt.Sprint(res.RC)}
			if res.Stderr != "" && evKind == "resource-failed" {
				fields["stderr"] = tail(res.Stderr, 512)
			}
			a.resEvent(evKind, l.name, evMsg, fields)
		}
		if rev > 0 {
			wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			a.res.WaitSynced(wctx, rev)
			cancel()
		}
		a.rmu.Lock()
		l.state, l.last, l.busy = next, res, false
		if published != nil {
			l.published = published
			if l.last.Message == "" {
				l.last.Message = published.Message
			}
		}
		if action == ocf.ActionMonitor || action == ocf.ActionStart {
			l.lastMonitor = time.Now()
		}
		a.rmu.Unlock()
		a.wakeRes()
	}()
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// recordResFailure counts a failure of a resource on this node; it
// returns the revision written (0 if it could not).
func (a *Agent) recordResFailure(ctx context.Context, name string, f policy.Failure, also ...clientv3.Op) int64 {
	cli := a.node.Client()
	key := resFailureKey(name, a.self())
	for i := 0; i < 5; i++ {
		gctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		resp, err := cli.Get(gctx, key)
		cancel()
		if err != nil {
			return 0
		}
		var cur policy.Failure
		rev := int64(0)
		if len(resp.Kvs) > 0 {
			rev = resp.Kvs[0].ModRevision
			jsonUnmarshal(resp.Kvs[0].Value, &cur)
		}
		cur.Count++
		cur.Last = time.Now().UTC()
		cur.Fatal = cur.Fatal || f.Fatal
		cur.Op, cur.Message = f.Op, f.Message
		tctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		tr, err := cli.Txn(tctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).Then(append([]clientv3.Op{clientv3.OpPut(key, mustJSON(cur))}, also...)...).Commit()
		cancel()
		if err == nil && tr.Succeeded {
			return tr.Header.Revision
		}
	}
	return 0
}
