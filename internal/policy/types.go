// Package policy is the planner, the role Pacemaker's scheduler plays: a
// pure, deterministic function from a snapshot of the cluster (nodes,
// resources with their constraints, what is running where) to the actions
// that bring the cluster towards what users asked for. It does no I/O; the
// Designated Coordinator runs it and applies the actions with transactions
// conditioned on the snapshot it read, and agents converge to the result.
//
// Resources are generic — a type, parameters and constraints — and each type
// has a small planning function; volumes (replicated, with one primary) are
// the first type. Tests replay a corpus of saved states (testdata/).
package policy

import (
	"time"
)

// Infinity is the score that forces (or, negated, forbids) a placement, as
// Pacemaker's INFINITY.
const Infinity = 1000000

// Node roles.
const (
	RoleStorage = "storage" // holds replicas
	RoleVhost   = "vhost"   // runs clients and resources
	RoleWitness = "witness" // votes for quorum only
)

// Node is one cluster member as the planner sees it.
type Node struct {
	Name    string            `json:"name"`
	Online  bool              `json:"online"`
	Standby bool              `json:"standby,omitempty"`
	Roles   []string          `json:"roles"`
	Labels  map[string]string `json:"labels,omitempty"`
	// FreeBytes is what its pools can still promise (for placement).
	FreeBytes int64 `json:"free_bytes"`
	// Lease is the liveness lease of its running agent (0 offline or
	// unknown).
	Lease int64 `json:"lease,omitempty"`
	// OfflineSince is when it was last seen (zero when online).
	OfflineSince time.Time `json:"offline_since,omitzero"`
	// OnlineSince is when it took the lease it holds now, that is since
	// when it has been online without a break (zero when offline, or
	// unknown: counts as long ago). A volume is not moved to it for
	// preference while it is younger than Settings.FailbackSettle.
	OnlineSince time.Time `json:"online_since,omitzero"`
}

// HasRole reports whether the node has role r (a node with no roles is
// storage and vhost).
func (n Node) HasRole(r string) bool {
	if len(n.Roles) == 0 {
		return r == RoleStorage || r == RoleVhost
	}
	for _, x := range n.Roles {
		if x == r {
			return true
		}
	}
	return false
}

// Constraints apply to any resource.
type Constraints struct {
	// Prefer is an ordered list of preferred nodes (VHACS --prefers): the
	// first scores highest.
	Prefer []string `json:"prefer,omitempty"`
	// Scores adds explicit location scores per node; -Infinity bans.
	Scores map[string]int `json:"scores,omitempty"`
	// Stickiness is added to the node where the resource runs now.
	Stickiness *int `json:"stickiness,omitempty"`
	// MigrationThreshold: after this many failures on a node the resource
	// may not run there (0: never banned).
	MigrationThreshold int `json:"migration_threshold,omitempty"`
	// FailureTimeout: failures older than this are forgotten (0: never).
	FailureTimeout Duration `json:"failure_timeout,omitempty"`
}

// Failure counts one resource's failures on one node.
type Failure struct {
	Count int       `json:"count"`
	Last  time.Time `json:"last"`
	// Fatal: a failure that bans the node at once (a failed start, or an
	// OCF hard error), until it expires or is cleaned up.
	Fatal bool `json:"fatal,omitempty"`
	// Op and Message describe the last failure (resources).
	Op      string `json:"op,omitempty"`
	Message string `json:"message,omitempty"`
}

// Volume is a replicated volume resource: desired spec and observed status.
type Volume struct {
	Name        string      `json:"name"`
	Size        int64       `json:"size"`
	Replicas    int         `json:"replicas"`
	Spread      string      `json:"spread,omitempty"` // node label to spread replicas over
	Stopped     bool        `json:"stopped,omitempty"`
	Constraints Constraints `json:"constraints,omitzero"`

	// Observed state.
	Epoch   uint64   `json:"epoch,omitempty"`
	Primary string   `json:"primary,omitempty"`
	Placed  []string `json:"placed,omitempty"`  // nodes holding a replica
	InSync  []string `json:"in_sync,omitempty"` // of those, in sync
	// Failures per node.
	Failures map[string]Failure `json:"failures,omitempty"`
}

// Settings are cluster-wide defaults.
type Settings struct {
	// ReReplicateAfter: a node down this long loses its replicas to other
	// nodes (default 5m).
	ReReplicateAfter Duration `json:"re_replicate_after,omitempty"`
	// FailbackSettle: a healthy volume is moved to a node for its
	// preference or scores only once that node has been online this long
	// without a break (Node.OnlineSince), so that a node whose lease
	// flaps does not draw its volumes back and forth (default 10s;
	// negative: no settle time). Failover away from a primary that cannot
	// serve is never delayed.
	FailbackSettle Duration `json:"failback_settle,omitempty"`
	// Stickiness default for resources that set none (default 100).
	Stickiness *int `json:"stickiness,omitempty"`
}

// State is the snapshot the planner works on.
type State struct {
	Now      time.Time `json:"now"`
	Settings Settings  `json:"settings,omitzero"`
	Nodes    []Node    `json:"nodes"`
	Volumes  []Volume  `json:"volumes"`
}

// Action kinds.
const (
	// ActPlace gives a new volume its replicas and primary.
	ActPlace = "place"
	// ActPromote makes Node the primary (epoch bumped); From is the old one.
	ActPromote = "promote"
	// ActStop takes the primary away (volume standby, or nowhere to run).
	ActStop = "stop"
	// ActAddReplica adds a replica on Node (it resyncs, then joins).
	ActAddReplica = "add-replica"
	// ActRemoveReplica removes Node's replica (surplus).
	ActRemoveReplica = "remove-replica"
	// ActDegraded reports why a volume cannot be as asked; no change.
	ActDegraded = "degraded"
)

// Action is one decision.
type Action struct {
	Kind     string   `json:"kind"`
	Volume   string   `json:"volume"`
	Node     string   `json:"node,omitempty"`
	From     string   `json:"from,omitempty"`
	Replicas []string `json:"replicas,omitempty"`
	Reason   string   `json:"reason"`
}

// Duration is a time.Duration that reads and writes as "5m" in JSON.
type Duration time.Duration

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	*d = Duration(v)
	return err
}
