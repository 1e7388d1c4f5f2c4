package fence

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/hacs/hacs/internal/cluster"
)

// Keys of the fencing layer.
const (
	Prefix         = cluster.Prefix + "fence/"
	PrefixDevices  = Prefix + "devices/"
	PrefixLevels   = Prefix + "levels/"
	PrefixNodes    = Prefix + "nodes/"
	PrefixRequests = Prefix + "requests/"
)

// DeviceKey holds a Device (written by the API).
func DeviceKey(name string) string { return PrefixDevices + name }

// LevelsKey holds a node's Levels (written by the API).
func LevelsKey(node string) string { return PrefixLevels + node }

// RecordKey holds the fencing Record of a node's latest loss (written by the
// DC only).
func RecordKey(node string) string { return PrefixNodes + node }

// RequestKey holds a manual fencing Request (written by the API, consumed by
// the DC).
func RequestKey(node string) string { return PrefixRequests + node }

// Actions of the fence-agent protocol.
const (
	ActionOff      = "off"
	ActionOn       = "on"
	ActionReboot   = "reboot"
	ActionStatus   = "status"
	ActionMonitor  = "monitor"
	ActionList     = "list"
	ActionMetadata = "metadata"
)

// DefaultTimeout bounds one fence-agent action (as Pacemaker's
// stonith-timeout).
const DefaultTimeout = 60 * time.Second

// Device is one configured fence device: an agent and its parameters.
type Device struct {
	Name string `json:"name"`
	// Agent is the fence agent's file name, such as fence_ipmilan; it is
	// looked up in the agent directories (/usr/sbin, ...), never as a path.
	Agent string `json:"agent"`
	// Params are passed on stdin as key=value lines (ipaddr, login, ...).
	Params map[string]string `json:"params,omitempty"`
	// HostMap maps a node name to the plug (port, VM name, outlet) that
	// fences it; a covered node missing from it is its own plug.
	HostMap map[string]string `json:"host_map,omitempty"`
	// Nodes the device can fence; empty: the nodes of HostMap, or any node
	// when HostMap is empty too.
	Nodes []string `json:"nodes,omitempty"`
	// HostArgument is the parameter that names the plug: "" picks plug or
	// port from the agent's metadata; "none" sends no plug.
	HostArgument string `json:"host_argument,omitempty"`
	// Timeout bounds each action (default 60s).
	Timeout cluster.Duration `json:"timeout,omitempty"`
	Created time.Time        `json:"created,omitzero"`
	By      string           `json:"created_by,omitempty"`
}

// Covers reports whether the device can fence node.
func (d Device) Covers(node string) bool {
	if len(d.Nodes) > 0 {
		return slices.Contains(d.Nodes, node)
	}
	if len(d.HostMap) > 0 {
		_, ok := d.HostMap[node]
		return ok
	}
	return true
}

// Plug is the plug value that fences node.
func (d Device) Plug(node string) string {
	if p, ok := d.HostMap[node]; ok && p != "" {
		return p
	}
	return node
}

// ActionTimeout is the bound of one action.
func (d Device) ActionTimeout() time.Duration {
	if d.Timeout > 0 {
		return time.Duration(d.Timeout)
	}
	return DefaultTimeout
}

var agentRE = regexp.MustCompile(`^fence_[A-Za-z0-9_-]{1,60}$`)
var paramRE = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,62}$`)

// reserved parameters are set by hacs, never by the device configuration.
var reserved = []string{"action", "option", "nodename"}

// Validate checks the device's own fields (not against the agent's
// metadata: see Metadata.Check).
func (d Device) Validate() error {
	if err := cluster.ValidName("fence device", d.Name); err != nil {
		return err
	}
	if !agentRE.MatchString(d.Agent) {
		return fmt.Errorf("fence agent %q: give the agent's file name, such as fence_ipmilan (fence_ followed by letters, digits, '_' or '-')", d.Agent)
	}
	for k, v := range d.Params {
		if !paramRE.MatchString(k) {
			return fmt.Errorf("fence device %s: invalid parameter name %q", d.Name, k)
		}
		if slices.Contains(reserved, k) {
			return fmt.Errorf("fence device %s: parameter %q is set by hacs for each action", d.Name, k)
		}
		if strings.ContainsAny(v, "\n\r\x00") {
			return fmt.Errorf("fence device %s: parameter %s: the value may not contain a newline or NUL", d.Name, k)
		}
	}
	for n, p := range d.HostMap {
		if err := cluster.ValidName("node", n); err != nil {
			return fmt.Errorf("fence device %s: host map: %w", d.Name, err)
		}
		if p == "" || strings.ContainsAny(p, "\n\r\x00") {
			return fmt.Errorf("fence device %s: host map: plug of node %s must be non-empty, on one line", d.Name, n)
		}
	}
	for _, n := range d.Nodes {
		if err := cluster.ValidName("node", n); err != nil {
			return fmt.Errorf("fence device %s: nodes: %w", d.Name, err)
		}
	}
	if d.HostArgument != "" && d.HostArgument != "none" && !paramRE.MatchString(d.HostArgument) {
		return fmt.Errorf("fence device %s: invalid host argument %q", d.Name, d.HostArgument)
	}
	if d.Timeout < 0 || time.Duration(d.Timeout) > time.Hour {
		return fmt.Errorf("fence device %s: timeout %v out of range (0 for the default %v, at most 1h)", d.Name, time.Duration(d.Timeout), DefaultTimeout)
	}
	return nil
}

// Levels is a node's ordered fence levels (level 1 first); every device of
// a level must succeed for the level to succeed.
type Levels struct {
	Node   string     `json:"node"`
	Levels [][]string `json:"levels"`
}

// Record states.
const (
	StatePending = "pending" // needed, not started yet
	StateFencing = "fencing" // an attempt is running
	StateFenced  = "fenced"  // confirmed
	StateFailed  = "failed"  // every level failed; retried with backoff
	// StateCancelled: no longer needed before it was confirmed (the node
	// came back and released what it held, or a request was withdrawn).
	StateCancelled = "cancelled"
)

// Fencing methods.
const (
	MethodLease  = "lease"  // level 0: the node's own self-fence
	MethodDevice = "device" // a fence level
)

// Record is where fencing of one node stands: the node's latest loss (or
// manual request) and its outcome. Only the DC writes it.
type Record struct {
	Node string `json:"node"`
	// Lease is the lease ID of the node incarnation being fenced (0 when
	// unknown).
	Lease     int64    `json:"lease,string"`
	State     string   `json:"state"`
	Action    string   `json:"action"`
	Reason    string   `json:"reason"`
	Resources []string `json:"resources,omitempty"`
	Manual    bool     `json:"manual,omitempty"`
	By        string   `json:"by,omitempty"`
	// Method, Level and Devices say how it was confirmed (or what was tried
	// last).
	Method  string   `json:"method,omitempty"`
	Level   int      `json:"level,omitempty"`
	Devices []string `json:"devices,omitempty"`

	Requested time.Time `json:"requested"`
	Started   time.Time `json:"started,omitzero"`
	Confirmed time.Time `json:"confirmed,omitzero"`
	Attempts  int       `json:"attempts,omitempty"`
	LastError string    `json:"last_error,omitempty"`
	NextTry   time.Time `json:"next_try,omitzero"`
	// DC and Term are the DC that wrote the record.
	DC   string `json:"dc,omitempty"`
	Term int64  `json:"term,omitempty"`
	// LeaseGone is when the fenced incarnation's lease was gone for the
	// cluster; ConfirmAt is when fencing by lease is confirmed.
	LeaseGone time.Time `json:"lease_gone,omitzero"`
	ConfirmAt time.Time `json:"confirm_at,omitzero"`
	// Earlier are the node's earlier confirmed fencings (newest first, at
	// most MaxEarlier): a loss fenced before stays fenced when a later one
	// replaces the record.
	Earlier []Fenced `json:"earlier,omitempty"`
}

// Fenced is one earlier confirmed fencing.
type Fenced struct {
	Lease     int64     `json:"lease,string"`
	Confirmed time.Time `json:"confirmed"`
	Method    string    `json:"method"`
	Level     int       `json:"level,omitempty"`
}

// MaxEarlier bounds Record.Earlier.
const MaxEarlier = 8

// fencedLeases is what a new record of the node carries over from prev.
func (prev Record) earlierWith() []Fenced {
	out := slices.Clone(prev.Earlier)
	if prev.State == StateFenced && !prev.Confirmed.IsZero() {
		out = append([]Fenced{{Lease: prev.Lease, Confirmed: prev.Confirmed, Method: prev.Method, Level: prev.Level}}, out...)
	}
	if len(out) > MaxEarlier {
		out = out[:MaxEarlier]
	}
	return out
}

// Active reports whether the record is still in progress.
func (r Record) Active() bool {
	return r.State == StatePending || r.State == StateFencing || r.State == StateFailed
}

// Request is a manual fencing request (hacs fence NODE).
type Request struct {
	Node   string    `json:"node"`
	Action string    `json:"action"`
	Reason string    `json:"reason,omitempty"`
	By     string    `json:"by,omitempty"`
	Time   time.Time `json:"time"`
	// Lease is the node's lease when it was asked (0: offline).
	Lease int64 `json:"lease,string,omitempty"`
}

// View is the fencing configuration and state decoded from a snapshot of
// Prefix.
type View struct {
	Devices  map[string]Device
	Levels   map[string]Levels
	Records  map[string]Record
	Requests map[string]Request
	// Revs are the keys' ModRevisions (for conditioned writes).
	Revs map[string]int64
}

// Decode reads a snapshot of Prefix; undecodable keys are reported and
// skipped.
func Decode(snap cluster.Snapshot) (View, []error) {
	v := View{Devices: map[string]Device{}, Levels: map[string]Levels{}, Records: map[string]Record{},
		Requests: map[string]Request{}, Revs: map[string]int64{}}
	var errs []error
	keys := make([]string, 0, len(snap.KVs))
	for k := range snap.KVs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		kv := snap.KVs[k]
		var err error
		switch {
		case strings.HasPrefix(k, PrefixDevices):
			var d Device
			if err = json.Unmarshal(kv.Value, &d); err == nil {
				v.Devices[strings.TrimPrefix(k, PrefixDevices)] = d
			}
		case strings.HasPrefix(k, PrefixLevels):
			var l Levels
			if err = json.Unmarshal(kv.Value, &l); err == nil {
				v.Levels[strings.TrimPrefix(k, PrefixLevels)] = l
			}
		case strings.HasPrefix(k, PrefixNodes):
			var r Record
			if err = json.Unmarshal(kv.Value, &r); err == nil {
				v.Records[strings.TrimPrefix(k, PrefixNodes)] = r
			}
		case strings.HasPrefix(k, PrefixRequests):
			var r Request
			if err = json.Unmarshal(kv.Value, &r); err == nil {
				v.Requests[strings.TrimPrefix(k, PrefixRequests)] = r
			}
		default:
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("fence: key %s is corrupt: %w", k, err))
			continue
		}
		v.Revs[k] = kv.ModRev
	}
	return v, errs
}

// Record returns the fencing record of node.
func (v View) Record(node string) (Record, bool) {
	r, ok := v.Records[node]
	return r, ok
}

// Fenced reports whether the loss of node's incarnation lease is confirmed
// fenced (lease 0 matches a record of unknown lease only).
func (v View) Fenced(node string, lease int64) bool {
	r, ok := v.Records[node]
	if !ok {
		return false
	}
	if r.State == StateFenced && r.Lease == lease && !r.Confirmed.IsZero() {
		return true
	}
	return slices.ContainsFunc(r.Earlier, func(f Fenced) bool { return f.Lease == lease })
}

// LevelsOf returns node's levels (nil: lease only).
func (v View) LevelsOf(node string) [][]string {
	return v.Levels[node].Levels
}

// Need says that a node (one incarnation of it) must be fenced before some
// resources are recovered elsewhere. The resource planner builds the list.
type Need struct {
	Node string
	// Lease is the lease ID of the incarnation that ran the resources (0:
	// the node's current, or last seen, lease).
	Lease     int64
	Reason    string
	Resources []string
	// Manual requests (hacs fence NODE) make one attempt; Action defaults
	// to reboot.
	Manual bool
	Action string
	By     string
}
