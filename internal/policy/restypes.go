package policy

import (
	"time"
)

// Resource types besides volumes.
const (
	TypeIP    = "ip"    // a floating IP address (built in)
	TypeGroup = "group" // ordered members on one node
	// OCF agents are "ocf:PROVIDER:AGENT".
)

// VolumeRef prefixes a group member or a colocation target that names a
// volume ("volume:NAME"): the group runs where the volume's primary is.
const VolumeRef = "volume:"

// On-fail policies (what a failed monitor leads to).
const (
	OnFailRestart = "restart" // restart in place; migration-threshold moves it
	OnFailMove    = "move"    // move to another node at once
	OnFailStop    = "stop"    // stop it and leave it stopped until cleaned up
	OnFailFence   = "fence"   // fence the node, then recover elsewhere
	OnFailIgnore  = "ignore"  // pretend it did not fail
)

// Requires values: what must hold before a resource of a lost node is
// recovered elsewhere.
const (
	RequiresFencing = "fencing" // the lost node must be confirmed fenced (default)
	RequiresQuorum  = "quorum"  // recover as soon as the node is offline
)

// Observed states of a primitive on one node (nodes where it is stopped
// are absent).
const (
	StateRunning    = "running"     // started, last monitor fine
	StatePromoted   = "promoted"    // running, promoted (Stateful rc 8)
	StateFailed     = "failed"      // a start or monitor failed; may still run: needs a stop
	StateStopFailed = "stop-failed" // the stop failed: only fencing the node settles it
	StateUnknown    = "unknown"     // not probed yet
)

// Resource is a non-volume resource as the planner sees it: a primitive
// (ip, ocf:…) or a group. Group members are primitives listed in Members
// (or "volume:NAME"); the planner places the group as one unit and the
// members follow it.
type Resource struct {
	Name    string   `json:"name"`
	Type    string   `json:"type"`
	Members []string `json:"members,omitempty"` // group only, in start order
	// Group is set on primitives that belong to a group.
	Group string `json:"group,omitempty"`
	// Stopped: the user wants it stopped (target-role=Stopped).
	Stopped  bool   `json:"stopped,omitempty"`
	OnFail   string `json:"on_fail,omitempty"`
	Requires string `json:"requires,omitempty"`
	// Constraints: location (prefer, scores), stickiness,
	// migration-threshold, failure-timeout. A group's apply to its members.
	Constraints Constraints `json:"constraints,omitzero"`

	// Observed state.
	// Assigned is where the DC told it to run ("" none).
	Assigned string `json:"assigned,omitempty"`
	// Active lists the nodes where a primitive is not known stopped, with
	// its state there (StateRunning, ...).
	Active map[string]string `json:"active,omitempty"`
	// Leases maps a node of Active to the liveness lease of the agent
	// incarnation that reported the state: when that incarnation is gone
	// (node offline, or back with another lease and not probed yet) the
	// resource may still run there until the incarnation is fenced.
	Leases map[string]int64 `json:"leases,omitempty"`
	// Failures per node (Failure.Fatal: a start failure or hard error bans
	// the node until the failure expires or is cleaned up).
	Failures map[string]Failure `json:"failures,omitempty"`
}

// Constraint kinds.
const (
	ConsLocation   = "location"
	ConsColocation = "colocation"
	ConsOrder      = "order"
)

// Constraint ties resources to nodes or to each other.
//   - location: Resource scores Score on Node (-Infinity bans).
//   - colocation: Resource runs where With runs (a resource, or
//     "volume:NAME" for the volume's primary) with Score: Infinity must,
//     -Infinity must not, others add to (or take from) that node's score.
//   - order: Resource starts only after First runs (and stops before it).
type Constraint struct {
	ID       string `json:"id"`
	Kind     string `json:"kind"`
	Resource string `json:"resource"`
	Node     string `json:"node,omitempty"`
	With     string `json:"with,omitempty"`
	First    string `json:"first,omitempty"`
	Score    int    `json:"score,omitempty"`
}

// ResState is the snapshot the resource planner works on. Volumes give the
// primaries that groups with a volume and colocations follow.
type ResState struct {
	Now         time.Time    `json:"now"`
	Settings    Settings     `json:"settings,omitzero"`
	Nodes       []Node       `json:"nodes"`
	Volumes     []Volume     `json:"volumes,omitempty"`
	Resources   []Resource   `json:"resources"`
	Constraints []Constraint `json:"constraints,omitempty"`
	// Fenced maps a node to the lease of its incarnation that is confirmed
	// fenced (internal/fence).
	Fenced map[string]int64 `json:"fenced,omitempty"`
	// FenceInfo says how far the fencing of a node is, for messages.
	FenceInfo map[string]string `json:"fence_info,omitempty"`
}

// Resource action kinds.
const (
	// ResAssign tells Node to run the resource (a group: all members).
	ResAssign = "assign"
	// ResUnassign takes the resource away from From (its node stops it).
	ResUnassign = "unassign"
	// ResBlocked reports why a resource cannot run (no change).
	ResBlocked = "blocked"
	// ResFence asks for Node to be fenced.
	ResFence = "fence"
)

// ResAction is one decision about a resource.
type ResAction struct {
	Kind     string `json:"kind"`
	Resource string `json:"resource,omitempty"`
	Node     string `json:"node,omitempty"`
	From     string `json:"from,omitempty"`
	// Lease (fence) is the lost incarnation of Node to fence; Resources
	// are the units that wait for it.
	Lease     int64    `json:"lease,omitempty"`
	Resources []string `json:"resources,omitempty"`
	Reason    string   `json:"reason"`
}
