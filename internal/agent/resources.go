package agent

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/hacs/hacs/internal/cluster"
	"github.com/hacs/hacs/internal/policy"
)

// Keys of non-volume resources, under cluster.PrefixResources:
//
//	r/<name>/spec            ResourceSpec (API)
//	r/<name>/assign          Assignment: the node that runs it (DC)
//	r/<name>/blocked         Degraded: why it cannot run (DC)
//	r/<name>/status/<node>   ResourceStatus: its state on that node (that node's agent)
//	r/<name>/failures/<node> policy.Failure (that node's agent; unfail/cleanup delete)
//	r/<name>/reprobe         time of the last cleanup: agents probe it again
//	c/<id>                   policy.Constraint (API)
const (
	resPrefix  = cluster.PrefixResources + "r/"
	consPrefix = cluster.PrefixResources + "c/"
)

func resKey(name, part string) string        { return resPrefix + name + "/" + part }
func resStatusKey(name, node string) string  { return resPrefix + name + "/status/" + node }
func resFailureKey(name, node string) string { return resPrefix + name + "/failures/" + node }
func constraintKey(id string) string         { return consPrefix + id }
func resAllKeys(name string) string          { return resPrefix + name + "/" }

// Default operation settings (Pacemaker's defaults are 20s timeouts; the
// monitor interval is hacs's choice).
const (
	DefaultOpTimeout       = 20 * time.Second
	DefaultMonitorInterval = 10 * time.Second
)

// Ops are a primitive's operation settings.
type Ops struct {
	// MonitorInterval is the recurring monitor's period (0: default; use
	// "-1s" style negative to disable is not supported: monitors always run).
	MonitorInterval policy.Duration `json:"monitor_interval,omitempty"`
	MonitorTimeout  policy.Duration `json:"monitor_timeout,omitempty"`
	StartTimeout    policy.Duration `json:"start_timeout,omitempty"`
	StopTimeout     policy.Duration `json:"stop_timeout,omitempty"`
}

func (o Ops) interval() time.Duration {
	if o.MonitorInterval > 0 {
		return time.Duration(o.MonitorInterval)
	}
	return DefaultMonitorInterval
}

func (o Ops) timeout(action string) time.Duration {
	var d policy.Duration
	switch action {
	case "start":
		d = o.StartTimeout
	case "stop":
		d = o.StopTimeout
	case "monitor":
		d = o.MonitorTimeout
	}
	if d > 0 {
		return time.Duration(d)
	}
	return DefaultOpTimeout
}

// ResourceSpec is what a user asked for a resource (written by the API).
type ResourceSpec struct {
	Name string `json:"name"`
	// Type is "ip", "ocf:PROVIDER:AGENT" or "group".
	Type   string            `json:"type"`
	Params map[string]string `json:"params,omitempty"`
	// Members of a group, in start order: primitive names or "volume:NAME".
	Members  []string           `json:"members,omitempty"`
	Stopped  bool               `json:"stopped,omitempty"`
	OnFail   string             `json:"on_fail,omitempty"`
	Requires string             `json:"requires,omitempty"`
	Policy   policy.Constraints `json:"constraints,omitzero"`
	Ops      Ops                `json:"ops,omitzero"`
	Created  time.Time          `json:"created"`
	By       string             `json:"created_by,omitempty"`
}

// Assignment is where the DC wants a resource (a group: all its members).
type Assignment struct {
	Node   string    `json:"node"`
	Since  time.Time `json:"since"`
	Reason string    `json:"reason,omitempty"`
}

// ResourceStatus is a primitive's state on one node, written by that
// node's agent after every action that changes it.
type ResourceStatus struct {
	// State: running, promoted, failed, stop-failed, unknown (probe
	// pending) or stopped.
	State string `json:"state"`
	// Lease is the liveness lease of the agent incarnation that wrote it.
	Lease int64 `json:"lease,string"`
	// Op, RC, Message, Stderr describe the last action.
	Op      string    `json:"op,omitempty"`
	RC      int       `json:"rc"`
	Message string    `json:"message,omitempty"`
	Stderr  string    `json:"stderr,omitempty"`
	At      time.Time `json:"at"`
	// Lost is set by the API (never stored) when the incarnation that wrote
	// it is gone: the node is offline or its agent restarted since.
	Lost bool `json:"lost,omitempty"`
}

// resView gathers one resource's keys from a snapshot.
type resView struct {
	name     string
	spec     *ResourceSpec
	assign   *Assignment
	blocked  *Degraded
	status   map[string]ResourceStatus
	failures map[string]policy.Failure
	reprobe  string
	revs     map[string]int64
}

// resModel is every resource and constraint of a snapshot.
type resModel struct {
	res  map[string]*resView
	cons map[string]policy.Constraint
	// group maps a member to its group.
	group map[string]string
	rev   int64
}

// resourcesFrom decodes a snapshot of cluster.PrefixResources.
func resourcesFrom(snap cluster.Snapshot) (*resModel, []error) {
	m := &resModel{res: map[string]*resView{}, cons: map[string]policy.Constraint{}, group: map[string]string{}, rev: snap.Rev}
	var errs []error
	get := func(name string) *resView {
		v := m.res[name]
		if v == nil {
			v = &resView{name: name, status: map[string]ResourceStatus{}, failures: map[string]policy.Failure{}, revs: map[string]int64{}}
			m.res[name] = v
		}
		return v
	}
	for key, kv := range snap.KVs {
		if id, ok := strings.CutPrefix(key, consPrefix); ok {
			var c policy.Constraint
			if err := json.Unmarshal(kv.Value, &c); err != nil {
				errs = append(errs, fmt.Errorf("constraint %s: key %s is corrupt: %w", id, key, err))
				continue
			}
			m.cons[id] = c
			continue
		}
		name, part, ok := cluster.SplitKey(key, resPrefix)
		if !ok {
			continue
		}
		v := get(name)
		v.revs[key] = kv.ModRev
		var err error
		switch {
		case part == "spec":
			v.spec = new(ResourceSpec)
			err = json.Unmarshal(kv.Value, v.spec)
		case part == "assign":
			v.assign = new(Assignment)
			err = json.Unmarshal(kv.Value, v.assign)
		case part == "blocked":
			v.blocked = new(Degraded)
			err = json.Unmarshal(kv.Value, v.blocked)
		case part == "reprobe":
			v.reprobe = string(kv.Value)
		case strings.HasPrefix(part, "status/"):
			var s ResourceStatus
			err = json.Unmarshal(kv.Value, &s)
			v.status[strings.TrimPrefix(part, "status/")] = s
		case strings.HasPrefix(part, "failures/"):
			var f policy.Failure
			err = json.Unmarshal(kv.Value, &f)
			v.failures[strings.TrimPrefix(part, "failures/")] = f
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("resource %s: key %s is corrupt: %w", name, key, err))
		}
	}
	for name, v := range m.res {
		if v.spec != nil && v.spec.Type == policy.TypeGroup {
			for _, mem := range v.spec.Members {
				if !strings.HasPrefix(mem, policy.VolumeRef) {
					m.group[mem] = name
				}
			}
		}
	}
	return m, errs
}

// names returns the resources with a spec, sorted.
func (m *resModel) names() []string {
	var out []string
	for n, v := range m.res {
		if v.spec != nil {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// unit is the placement unit of a resource (its group, or itself).
func (m *resModel) unit(name string) string {
	if g := m.group[name]; g != "" {
		if gv := m.res[g]; gv != nil && gv.spec != nil {
			return g
		}
	}
	return name
}

// policyResources converts the model for the planner.
func (m *resModel) policyResources() []policy.Resource {
	var out []policy.Resource
	for _, name := range m.names() {
		v := m.res[name]
		r := policy.Resource{Name: name, Type: v.spec.Type, Members: v.spec.Members, Stopped: v.spec.Stopped,
			OnFail: v.spec.OnFail, Requires: v.spec.Requires, Constraints: v.spec.Policy}
		if u := m.unit(name); u != name {
			r.Group = u
		}
		if v.assign != nil {
			r.Assigned = v.assign.Node
		}
		for node, s := range v.status {
			if s.State == "" || s.State == "stopped" {
				continue
			}
			if r.Active == nil {
				r.Active, r.Leases = map[string]string{}, map[string]int64{}
			}
			r.Active[node] = s.State
			r.Leases[node] = s.Lease
		}
		if len(v.failures) > 0 {
			r.Failures = v.failures
		}
		out = append(out, r)
	}
	return out
}

func (m *resModel) policyConstraints() []policy.Constraint {
	ids := make([]string, 0, len(m.cons))
	for id := range m.cons {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	out := make([]policy.Constraint, 0, len(ids))
	for _, id := range ids {
		out = append(out, m.cons[id])
	}
	return out
}
