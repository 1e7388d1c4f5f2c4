package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/hacs/hacs/internal/cluster"
	"github.com/hacs/hacs/internal/ocf"
	"github.com/hacs/hacs/internal/policy"
)

// ResourceRequest creates a resource (POST /v1/resources; ?force=1 skips
// checking the agent's meta-data on the node that answers).
type ResourceRequest struct {
	Name     string             `json:"name"`
	Type     string             `json:"type"`
	Params   map[string]string  `json:"params,omitempty"`
	Members  []string           `json:"members,omitempty"`
	Stopped  bool               `json:"stopped,omitempty"`
	OnFail   string             `json:"on_fail,omitempty"`
	Requires string             `json:"requires,omitempty"`
	Policy   policy.Constraints `json:"constraints,omitzero"`
	Ops      Ops                `json:"ops,omitzero"`
}

// ConstraintRequest adds a constraint (POST /v1/constraints). Score
// defaults to INFINITY.
type ConstraintRequest struct {
	ID       string `json:"id,omitempty"`
	Kind     string `json:"kind"`
	Resource string `json:"resource"`
	Node     string `json:"node,omitempty"`
	With     string `json:"with,omitempty"`
	First    string `json:"first,omitempty"`
	Score    *int   `json:"score,omitempty"`
}

// ResourceInfo is a resource as the API shows it.
type ResourceInfo struct {
	Spec     ResourceSpec              `json:"spec"`
	Group    string                    `json:"group,omitempty"` // the group it is a member of
	Assigned *Assignment               `json:"assigned,omitempty"`
	Blocked  *Degraded                 `json:"blocked,omitempty"`
	Status   map[string]ResourceStatus `json:"status,omitempty"`
	Failures map[string]policy.Failure `json:"failures,omitempty"`
	// Running lists the nodes where it (a group: every member) runs.
	Running []string `json:"running,omitempty"`
	// Health: running, starting, stopping, stopped, failed, blocked.
	Health string `json:"health"`
}

func (a *Agent) registerResourceAPI() {
	mux := a.node.Mux()
	mux.HandleFunc("POST /v1/resources", cluster.WithActor(a.handleResCreate))
	mux.HandleFunc("GET /v1/resources", a.handleResList)
	mux.HandleFunc("GET /v1/resources/{name}", a.handleResInfo)
	mux.HandleFunc("DELETE /v1/resources/{name}", cluster.WithActor(a.handleResDelete))
	mux.HandleFunc("POST /v1/resources/{name}/move", cluster.WithActor(a.handleResMove))
	mux.HandleFunc("POST /v1/resources/{name}/unfail", cluster.WithActor(a.handleResUnfail(false)))
	mux.HandleFunc("POST /v1/resources/{name}/cleanup", cluster.WithActor(a.handleResUnfail(true)))
	mux.HandleFunc("POST /v1/resources/{name}/stop", cluster.WithActor(a.handleResTarget(true)))
	mux.HandleFunc("POST /v1/resources/{name}/start", cluster.WithActor(a.handleResTarget(false)))
	mux.HandleFunc("GET /v1/resource-agents/{type}", a.handleResMetaData)
	mux.HandleFunc("POST /v1/constraints", cluster.WithActor(a.handleConsCreate))
	mux.HandleFunc("GET /v1/constraints", a.handleConsList)
	mux.HandleFunc("DELETE /v1/constraints/{id}", cluster.WithActor(a.handleConsDelete))
}

// resModelNow reads resources and constraints straight from the store.
func (a *Agent) resModelNow(ctx context.Context) (*resModel, error) {
	snap, err := cluster.ReadSnapshot(ctx, a.node.Client(), cluster.PrefixResources)
	if err != nil {
		return nil, err
	}
	m, _ := resourcesFrom(snap)
	a.markLost(m)
	return m, nil
}

var onFails = []string{"", policy.OnFailRestart, policy.OnFailMove, policy.OnFailStop, policy.OnFailFence, policy.OnFailIgnore}

func (a *Agent) validateResource(ctx context.Context, req *ResourceRequest, force bool) error {
	if err := cluster.ValidName("resource", req.Name); err != nil {
		return errf(http.StatusBadRequest, "%v", err)
	}
	bad := func(format string, args ...any) error {
		return errf(http.StatusBadRequest, "resource %s: %s", req.Name, fmt.Sprintf(format, args...))
	}
	if !slices.Contains(onFails, req.OnFail) {
		return bad("on_fail %q: want restart, move, stop, fence or ignore", req.OnFail)
	}
	if req.Requires != "" && req.Requires != policy.RequiresFencing && req.Requires != policy.RequiresQuorum {
		return bad("requires %q: want fencing or quorum", req.Requires)
	}
	if req.Policy.MigrationThreshold < 0 || req.Policy.FailureTimeout < 0 {
		return bad("migration_threshold and failure_timeout must not be negative")
	}
	for _, d := range []policy.Duration{req.Ops.MonitorInterval, req.Ops.MonitorTimeout, req.Ops.StartTimeout, req.Ops.StopTimeout} {
		if d < 0 || (d > 0 && time.Duration(d) < 100*time.Millisecond) {
			return bad("operation intervals and timeouts must be at least 100ms")
		}
	}
	members := a.node.Members()
	for _, p := range req.Policy.Prefer {
		if _, ok := members.Node(p); !ok {
			return bad("preferred node %q is not a member of the cluster", p)
		}
	}
	switch {
	case req.Type == policy.TypeGroup:
		if len(req.Params) > 0 {
			return bad("a group takes no params")
		}
		if len(req.Members) == 0 {
			return bad("a group needs members (primitives, or volume:NAME)")
		}
		m, err := a.resModelNow(ctx)
		if err != nil {
			return err
		}
		vols, err := a.views(ctx)
		if err != nil {
			return err
		}
		seen := map[string]bool{}
		for _, mem := range req.Members {
			if seen[mem] {
				return bad("member %s listed twice", mem)
			}
			seen[mem] = true
			if vol, ok := strings.CutPrefix(mem, policy.VolumeRef); ok {
				if v := vols[vol]; v == nil || v.spec == nil {
					return bad("member %s: no volume named %q", mem, vol)
				}
				continue
			}
			v := m.res[mem]
			switch {
			case v == nil || v.spec == nil:
				return bad("member %s: no such resource (create the primitives first)", mem)
			case v.spec.Type == policy.TypeGroup:
				return bad("member %s is a group: groups do not nest", mem)
			case m.group[mem] != "" && m.group[mem] != req.Name:
				return bad("member %s is already in group %s", mem, m.group[mem])
			}
		}
	case len(req.Members) > 0:
		return bad("only a group has members")
	case req.Type == policy.TypeIP:
		if err := ocf.ValidateIP(req.Params); err != nil {
			return bad("%v", err)
		}
	case strings.HasPrefix(req.Type, "ocf:"):
		if _, _, ok := ocf.ParseType(req.Type); !ok {
			return bad("type %q: want ocf:PROVIDER:AGENT", req.Type)
		}
		if force {
			break
		}
		md, err := a.runner.MetaData(ctx, req.Type)
		if err != nil {
			return bad("%v (is the agent installed on %s? ?force=1 / --force skips this check)", err, a.self())
		}
		if err := md.Check(req.Params); err != nil {
			return bad("%v", err)
		}
	default:
		return bad("unknown type %q: want ip, group or ocf:PROVIDER:AGENT", req.Type)
	}
	return nil
}

func (a *Agent) handleResCreate(w http.ResponseWriter, r *http.Request) {
	var req ResourceRequest
	if err := decodeStrict(r, &req, false); err != nil {
		writeErr(w, err)
		return
	}
	if err := a.validateResource(r.Context(), &req, r.URL.Query().Get("force") == "1"); err != nil {
		writeErr(w, err)
		return
	}
	by := a.actor(r.Context())
	spec := ResourceSpec{Name: req.Name, Type: req.Type, Params: req.Params, Members: req.Members, Stopped: req.Stopped,
		OnFail: req.OnFail, Requires: req.Requires, Policy: req.Policy, Ops: req.Ops, Created: time.Now().UTC(), By: by}
	cctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	ops := []clientv3.Op{clientv3.OpPut(resKey(req.Name, "spec"), mustJSON(spec))}
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(resKey(req.Name, "spec")), "=", 0)}
	for _, mem := range req.Members {
		if !strings.HasPrefix(mem, policy.VolumeRef) {
			// The members now follow the group: their own placement goes
			// (their nodes stop them unless the group runs there).
			ops = append(ops, clientv3.OpDelete(resKey(mem, "assign")), clientv3.OpDelete(resKey(mem, "blocked")))
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(resKey(mem, "spec")), ">", 0))
		}
	}
	tr, err := a.node.Client().Txn(cctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		writeErr(w, err)
		return
	}
	if !tr.Succeeded {
		writeErr(w, errf(http.StatusConflict, "resource %s exists already (or a member was deleted meanwhile)", req.Name))
		return
	}
	a.resEvent("resource-created", req.Name, fmt.Sprintf("created (%s) by %s", req.Type, by), map[string]string{"actor": by})
	writeJSON(w, http.StatusCreated, spec)
}

// markLost flags the statuses written by agent incarnations that are gone.
func (a *Agent) markLost(m *resModel) {
	members := a.node.Members()
	for _, v := range m.res {
		for node, s := range v.status {
			n, ok := members.Node(node)
			if !ok || !n.Online || (n.Alive != nil && s.Lease != 0 && n.Alive.LeaseID != s.Lease) {
				s.Lost = true
				v.status[node] = s
			}
		}
	}
}

func (a *Agent) resInfo(m *resModel, name string) ResourceInfo {
	v := m.res[name]
	ri := ResourceInfo{Spec: *v.spec, Assigned: v.assign, Blocked: v.blocked, Group: m.group[name]}
	if len(v.status) > 0 {
		ri.Status = v.status
	}
	if len(v.failures) > 0 {
		ri.Failures = v.failures
	}
	prims := []string{name}
	if v.spec.Type == policy.TypeGroup {
		prims = nil
		for _, mem := range v.spec.Members {
			if m.res[mem] != nil && m.res[mem].spec != nil {
				prims = append(prims, mem)
			}
		}
	}
	running := map[string]int{}
	failed, active := false, false
	for _, p := range prims {
		for node, s := range m.res[p].status {
			if s.Lost {
				continue
			}
			switch s.State {
			case policy.StateRunning, policy.StatePromoted:
				running[node]++
				active = true
			case policy.StateFailed, policy.StateStopFailed:
				failed = true
				active = true
			case policy.StateUnknown:
				active = true
			}
		}
	}
	for node, n := range running {
		if n == len(prims) {
			ri.Running = append(ri.Running, node)
		}
	}
	sort.Strings(ri.Running)
	unit := m.res[m.unit(name)]
	switch {
	case unit.blocked != nil:
		ri.Health = "blocked"
	case failed:
		ri.Health = "failed"
	case len(ri.Running) == 1 && unit.assign != nil && unit.assign.Node == ri.Running[0]:
		ri.Health = "running"
	case unit.assign != nil:
		ri.Health = "starting"
	case active:
		ri.Health = "stopping"
	default:
		ri.Health = "stopped"
	}
	return ri
}

func (a *Agent) handleResList(w http.ResponseWriter, r *http.Request) {
	m, err := a.resModelNow(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	out := []ResourceInfo{}
	for _, name := range m.names() {
		out = append(out, a.resInfo(m, name))
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *Agent) resource(ctx context.Context, name string) (*resModel, error) {
	m, err := a.resModelNow(ctx)
	if err != nil {
		return nil, err
	}
	if v := m.res[name]; v == nil || v.spec == nil {
		return nil, errf(http.StatusNotFound, "no resource named %q", name)
	}
	return m, nil
}

func (a *Agent) handleResInfo(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	m, err := a.resource(r.Context(), name)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, a.resInfo(m, name))
}

func (a *Agent) handleResDelete(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	m, err := a.resource(r.Context(), name)
	if err != nil {
		writeErr(w, err)
		return
	}
	if g := m.group[name]; g != "" {
		writeErr(w, errf(http.StatusConflict, "resource %s is a member of group %s: delete the group first", name, g))
		return
	}
	ops := []clientv3.Op{clientv3.OpDelete(resKey(name, "spec")), clientv3.OpDelete(resKey(name, "assign")),
		clientv3.OpDelete(resKey(name, "blocked")), clientv3.OpDelete(resKey(name, "failures/"), clientv3.WithPrefix()),
		clientv3.OpDelete(resKey(name, "reprobe"))}
	var dropped []string
	for id, c := range m.cons {
		if c.Resource == name || c.With == name || c.First == name {
			ops = append(ops, clientv3.OpDelete(constraintKey(id)))
			dropped = append(dropped, id)
		}
	}
	sort.Strings(dropped)
	cctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	// Status keys stay until each node has stopped it and deletes its own.
	tr, err := a.node.Client().Txn(cctx).If(clientv3.Compare(clientv3.ModRevision(resKey(name, "spec")), "=", m.res[name].revs[resKey(name, "spec")])).Then(ops...).Commit()
	if err != nil {
		writeErr(w, err)
		return
	}
	if !tr.Succeeded {
		writeErr(w, errf(http.StatusConflict, "resource %s changed meanwhile; try again", name))
		return
	}
	by := a.actor(r.Context())
	msg := "deleted by " + by
	if len(dropped) > 0 {
		msg += "; its constraints deleted too: " + strings.Join(dropped, ", ")
	}
	a.resEvent("resource-deleted", name, msg, map[string]string{"actor": by})
	writeJSON(w, http.StatusOK, map[string]any{"resource": name, "done": "deleted", "constraints_deleted": dropped})
}

// moveConstraintID is the location constraint `resource move` adds (as
// crm_resource --move's cli-prefer).
func moveConstraintID(name string) string { return "cli-move-" + name }

func (a *Agent) handleResMove(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	var req struct {
		Node  string `json:"node,omitempty"`
		Clear bool   `json:"clear,omitempty"`
	}
	if err := decodeStrict(r, &req, false); err != nil {
		writeErr(w, err)
		return
	}
	if _, err := a.resource(r.Context(), name); err != nil {
		writeErr(w, err)
		return
	}
	by := a.actor(r.Context())
	id := moveConstraintID(name)
	cctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	if req.Clear {
		if _, err := a.node.Client().Delete(cctx, constraintKey(id)); err != nil {
			writeErr(w, err)
			return
		}
		a.resEvent("resource-move-cleared", name, "move constraint cleared by "+by, map[string]string{"actor": by})
		writeJSON(w, http.StatusOK, map[string]string{"resource": name, "done": "move constraint cleared"})
		return
	}
	if req.Node == "" {
		writeErr(w, errf(http.StatusBadRequest, "give a node to move %s to (or clear)", name))
		return
	}
	if _, ok := a.node.Members().Node(req.Node); !ok {
		writeErr(w, errf(http.StatusBadRequest, "node %q is not a member of the cluster", req.Node))
		return
	}
	c := policy.Constraint{ID: id, Kind: policy.ConsLocation, Resource: name, Node: req.Node, Score: policy.Infinity}
	if _, err := a.node.Client().Put(cctx, constraintKey(id), mustJSON(c)); err != nil {
		writeErr(w, err)
		return
	}
	a.resEvent("resource-move-requested", name, fmt.Sprintf("move to %s requested by %s (location constraint %s, INFINITY; `hacs resource move %s --clear` removes it)", req.Node, by, id, name),
		map[string]string{"actor": by, "node": req.Node})
	writeJSON(w, http.StatusOK, c)
}

func (a *Agent) handleResUnfail(reprobe bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		m, err := a.resource(r.Context(), name)
		if err != nil {
			writeErr(w, err)
			return
		}
		names := []string{name}
		if v := m.res[name]; v.spec.Type == policy.TypeGroup {
			for _, mem := range v.spec.Members {
				if m.res[mem] != nil {
					names = append(names, mem)
				}
			}
		}
		var ops []clientv3.Op
		for _, n := range names {
			ops = append(ops, clientv3.OpDelete(resKey(n, "failures/"), clientv3.WithPrefix()))
			if reprobe {
				ops = append(ops, clientv3.OpPut(resKey(n, "reprobe"), time.Now().UTC().Format(time.RFC3339Nano)))
			}
		}
		cctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		if _, err := a.node.Client().Txn(cctx).Then(ops...).Commit(); err != nil {
			writeErr(w, err)
			return
		}
		by := a.actor(r.Context())
		done := "failure counts cleared"
		if reprobe {
			done += "; every node probes it again"
		}
		a.resEvent("resource-cleanup", name, done+" by "+by, map[string]string{"actor": by})
		writeJSON(w, http.StatusOK, map[string]any{"resource": name, "done": done, "resources": names})
	}
}

func (a *Agent) handleResTarget(stopped bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		for i := 0; i < 10; i++ {
			m, err := a.resource(r.Context(), name)
			if err != nil {
				writeErr(w, err)
				return
			}
			v := m.res[name]
			spec := *v.spec
			spec.Stopped = stopped
			cctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
			tr, err := a.node.Client().Txn(cctx).If(clientv3.Compare(clientv3.ModRevision(resKey(name, "spec")), "=", v.revs[resKey(name, "spec")])).
				Then(clientv3.OpPut(resKey(name, "spec"), mustJSON(spec))).Commit()
			cancel()
			if err != nil {
				writeErr(w, err)
				return
			}
			if tr.Succeeded {
				by := a.actor(r.Context())
				what := "start"
				if stopped {
					what = "stop"
				}
				a.resEvent("resource-target", name, what+" requested by "+by, map[string]string{"actor": by})
				writeJSON(w, http.StatusOK, spec)
				return
			}
		}
		writeErr(w, errf(http.StatusConflict, "resource %s keeps changing; try again", name))
	}
}

func (a *Agent) handleResMetaData(w http.ResponseWriter, r *http.Request) {
	md, err := a.runner.MetaData(r.Context(), r.PathValue("type"))
	if err != nil {
		writeErr(w, errf(http.StatusNotFound, "%v", err))
		return
	}
	writeJSON(w, http.StatusOK, md)
}

func (a *Agent) validateConstraint(ctx context.Context, req *ConstraintRequest) (policy.Constraint, error) {
	bad := func(format string, args ...any) error {
		return errf(http.StatusBadRequest, "constraint: "+format, args...)
	}
	c := policy.Constraint{ID: req.ID, Kind: req.Kind, Resource: req.Resource, Node: req.Node, With: req.With, First: req.First, Score: policy.Infinity}
	if req.Score != nil {
		c.Score = max(-policy.Infinity, min(policy.Infinity, *req.Score))
	}
	m, err := a.resModelNow(ctx)
	if err != nil {
		return c, err
	}
	exists := func(name string) bool { v := m.res[name]; return v != nil && v.spec != nil }
	if !exists(c.Resource) {
		return c, bad("no resource named %q", c.Resource)
	}
	target := ""
	switch c.Kind {
	case policy.ConsLocation:
		if c.With != "" || c.First != "" {
			return c, bad("a location constraint takes a node and a score only")
		}
		if _, ok := a.node.Members().Node(c.Node); !ok {
			return c, bad("node %q is not a member of the cluster", c.Node)
		}
		target = c.Node
	case policy.ConsColocation:
		if c.Node != "" || c.First != "" {
			return c, bad("a colocation takes with (a resource or volume:NAME) and a score only")
		}
		if vol, ok := strings.CutPrefix(c.With, policy.VolumeRef); ok {
			views, err := a.views(ctx)
			if err != nil {
				return c, err
			}
			if v := views[vol]; v == nil || v.spec == nil {
				return c, bad("no volume named %q", vol)
			}
		} else if !exists(c.With) {
			return c, bad("with: no resource named %q", c.With)
		}
		if m.unit(c.With) == m.unit(c.Resource) {
			return c, bad("%s and %s are the same resource or in the same group", c.Resource, c.With)
		}
		target = strings.ReplaceAll(c.With, ":", "-")
	case policy.ConsOrder:
		if c.Node != "" || c.With != "" || req.Score != nil {
			return c, bad("an order constraint takes first only (resource starts after first)")
		}
		if !exists(c.First) {
			return c, bad("first: no resource named %q", c.First)
		}
		if m.unit(c.First) == m.unit(c.Resource) {
			return c, bad("%s and %s are the same resource or in the same group (a group orders its members itself)", c.Resource, c.First)
		}
		c.Score = 0
		target = c.First
	default:
		return c, bad("kind %q: want location, colocation or order", c.Kind)
	}
	if c.ID == "" {
		c.ID = c.Kind + "-" + c.Resource + "-" + target
	}
	if err := cluster.ValidName("constraint", c.ID); err != nil {
		return c, bad("%v", err)
	}
	return c, nil
}

func (a *Agent) handleConsCreate(w http.ResponseWriter, r *http.Request) {
	var req ConstraintRequest
	if err := decodeStrict(r, &req, false); err != nil {
		writeErr(w, err)
		return
	}
	c, err := a.validateConstraint(r.Context(), &req)
	if err != nil {
		writeErr(w, err)
		return
	}
	cctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	tr, err := a.node.Client().Txn(cctx).If(clientv3.Compare(clientv3.CreateRevision(constraintKey(c.ID)), "=", 0)).
		Then(clientv3.OpPut(constraintKey(c.ID), mustJSON(c))).Commit()
	if err != nil {
		writeErr(w, err)
		return
	}
	if !tr.Succeeded {
		writeErr(w, errf(http.StatusConflict, "constraint %s exists already", c.ID))
		return
	}
	by := a.actor(r.Context())
	a.resEvent("constraint-added", c.Resource, fmt.Sprintf("constraint %s added by %s: %s", c.ID, by, DescribeConstraint(c)), map[string]string{"actor": by, "constraint": c.ID})
	writeJSON(w, http.StatusCreated, c)
}

// DescribeConstraint says what a constraint means, in words.
func DescribeConstraint(c policy.Constraint) string {
	switch c.Kind {
	case policy.ConsLocation:
		return fmt.Sprintf("%s on %s: %s", c.Resource, c.Node, ScoreString(c.Score))
	case policy.ConsColocation:
		return fmt.Sprintf("%s with %s: %s", c.Resource, c.With, ScoreString(c.Score))
	case policy.ConsOrder:
		return fmt.Sprintf("start %s after %s", c.Resource, c.First)
	}
	return c.Kind
}

// ScoreString prints a score as Pacemaker does (INFINITY, -INFINITY).
func ScoreString(s int) string {
	switch {
	case s >= policy.Infinity:
		return "INFINITY"
	case s <= -policy.Infinity:
		return "-INFINITY"
	}
	return fmt.Sprint(s)
}

func (a *Agent) handleConsList(w http.ResponseWriter, r *http.Request) {
	m, err := a.resModelNow(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, m.policyConstraints())
}

func (a *Agent) handleConsDelete(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	cctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	resp, err := a.node.Client().Delete(cctx, constraintKey(id), clientv3.WithPrevKV())
	if err != nil {
		writeErr(w, err)
		return
	}
	if resp.Deleted == 0 {
		writeErr(w, errf(http.StatusNotFound, "no constraint named %q", id))
		return
	}
	var c policy.Constraint
	json.Unmarshal(resp.PrevKvs[0].Value, &c)
	by := a.actor(r.Context())
	a.resEvent("constraint-deleted", c.Resource, fmt.Sprintf("constraint %s deleted by %s", id, by), map[string]string{"actor": by, "constraint": id})
	writeJSON(w, http.StatusOK, map[string]string{"constraint": id, "done": "deleted"})
}
