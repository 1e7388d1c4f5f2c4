package cluster

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"
)

// Role is what a node is for, as in VHACS.
type Role string

const (
	// RoleStorage nodes hold replicas.
	RoleStorage Role = "storage"
	// RoleVHost nodes run clients and resources (exports, virtual servers).
	RoleVHost Role = "vhost"
	// RoleWitness nodes vote for quorum only and hold nothing: two storage
	// nodes and a witness make a two-node cluster that survives either
	// storage node.
	RoleWitness Role = "witness"
)

// DefaultRoles are the roles of a node started without --roles.
var DefaultRoles = []Role{RoleStorage, RoleVHost}

// ParseRoles reads a comma-separated role list such as "storage,vhost".
func ParseRoles(s string) ([]Role, error) {
	var roles []Role
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		r := Role(strings.ToLower(f))
		switch r {
		case RoleStorage, RoleVHost, RoleWitness:
		default:
			return nil, fmt.Errorf("unknown role %q: roles are storage, vhost (both by default) or witness", f)
		}
		if !slices.Contains(roles, r) {
			roles = append(roles, r)
		}
	}
	if len(roles) == 0 {
		return nil, fmt.Errorf("no role given: roles are storage, vhost (both by default) or witness")
	}
	if slices.Contains(roles, RoleWitness) && len(roles) > 1 {
		return nil, fmt.Errorf("role witness cannot be combined with %v: a witness votes for quorum only and holds and runs nothing", roles)
	}
	slices.Sort(roles)
	return roles, nil
}

// ParseLabels reads labels such as "zone=a,rack=r1" (also accepting several
// comma-separated lists joined).
func ParseLabels(list []string) (map[string]string, error) {
	labels := map[string]string{}
	for _, s := range list {
		for _, f := range strings.Split(s, ",") {
			f = strings.TrimSpace(f)
			if f == "" {
				continue
			}
			k, v, ok := strings.Cut(f, "=")
			if !ok || k == "" {
				return nil, fmt.Errorf("invalid label %q: want KEY=VALUE, such as zone=a", f)
			}
			if err := ValidName("label key", k); err != nil {
				return nil, err
			}
			if strings.ContainsAny(v, ",= \t\n") || len(v) > 63 {
				return nil, fmt.Errorf("invalid label value %q for %s: up to 63 characters without spaces, ',' or '='", v, k)
			}
			labels[k] = v
		}
	}
	return labels, nil
}

// ClusterInfo is the cluster's identity record (KeyClusterInfo).
type ClusterInfo struct {
	ID        string    `json:"id"`
	CreatedAt time.Time `json:"created_at"`
	CreatedBy string    `json:"created_by"`
	Schema    int       `json:"schema"`
	Version   string    `json:"version"` // agent version that created it
	Voters    int       `json:"voters"`  // target number of voting etcd members
	External  bool      `json:"external,omitempty"`
}

// NodeConfig is a node's static record (NodeConfigKey): who it is, what it
// does and where to reach it. The node rewrites it at every start.
type NodeConfig struct {
	ID          string            `json:"id"`
	Name        string            `json:"name"`
	Roles       []Role            `json:"roles"`
	Labels      map[string]string `json:"labels,omitempty"`
	APIAddr     string            `json:"api_addr"`
	ReplicaAddr string            `json:"replica_addr,omitempty"`
	PeerURL     string            `json:"peer_url,omitempty"`
	ClientURL   string            `json:"client_url,omitempty"`
	Voter       bool              `json:"voter"`
	MemberID    uint64            `json:"member_id,omitempty,string"`
	Version     string            `json:"version"`
	Schema      int               `json:"schema"`
	JoinedAt    time.Time         `json:"joined_at"`
}

// HasRole reports whether the node has role r.
func (c NodeConfig) HasRole(r Role) bool { return slices.Contains(c.Roles, r) }

// NodeAdmin is what administrators set on a node (NodeAdminKey).
type NodeAdmin struct {
	Standby   bool      `json:"standby"`
	UpdatedAt time.Time `json:"updated_at"`
	UpdatedBy string    `json:"updated_by,omitempty"`
}

// Capacity is a storage node's space (filled by the storage layer).
type Capacity struct {
	TotalBytes int64 `json:"total_bytes"`
	FreeBytes  int64 `json:"free_bytes"`
}

// Liveness is the leased record of a running node (NodeAliveKey): it exists
// exactly while the node holds its lease.
type Liveness struct {
	Pid       int       `json:"pid"`
	Hostname  string    `json:"hostname,omitempty"`
	StartedAt time.Time `json:"started_at"`
	Version   string    `json:"version"`
	LeaseID   int64     `json:"lease_id,string"`
	LeaseTTL  Duration  `json:"lease_ttl"`
	Capacity  *Capacity `json:"capacity,omitempty"`
}

// NodeState is the summary state of a node in the membership view.
type NodeState string

const (
	StateOnline  NodeState = "online"
	StateStandby NodeState = "standby" // online, but takes no new work and hands over
	StateOffline NodeState = "offline"
)

// NodeInfo is one node of the membership view.
type NodeInfo struct {
	NodeConfig
	Standby bool      `json:"standby"`
	Online  bool      `json:"online"`
	State   NodeState `json:"state"`
	// Alive is the liveness record; nil when the node is offline.
	Alive *Liveness `json:"alive,omitempty"`
	// Since is when the node was last seen changing online/offline by this
	// observer (zero when unknown: the state predates the observer's start).
	Since time.Time `json:"since,omitzero"`
}

// Membership is a snapshot of all nodes, sorted by name.
type Membership struct {
	// Rev is the etcd revision the snapshot reflects.
	Rev   int64      `json:"rev"`
	Nodes []NodeInfo `json:"nodes"`
	// Stale is set when the watch behind the snapshot is broken (this node
	// cannot reach a quorum): the snapshot may be outdated.
	Stale bool `json:"stale,omitempty"`
}

// Node returns the named node.
func (m Membership) Node(name string) (NodeInfo, bool) {
	i := sort.Search(len(m.Nodes), func(i int) bool { return m.Nodes[i].Name >= name })
	if i < len(m.Nodes) && m.Nodes[i].Name == name {
		return m.Nodes[i], true
	}
	return NodeInfo{}, false
}

// Online returns the online nodes (standby included).
func (m Membership) Online() []NodeInfo {
	var out []NodeInfo
	for _, n := range m.Nodes {
		if n.Online {
			out = append(out, n)
		}
	}
	return out
}

func (n NodeInfo) clone() NodeInfo {
	n.Roles = slices.Clone(n.Roles)
	n.Labels = maps.Clone(n.Labels)
	if n.Alive != nil {
		a := *n.Alive
		if a.Capacity != nil {
			c := *a.Capacity
			a.Capacity = &c
		}
		n.Alive = &a
	}
	return n
}

// Duration is a time.Duration that reads and writes JSON as "1.5s".
type Duration time.Duration

func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	*d = Duration(v)
	return err
}
