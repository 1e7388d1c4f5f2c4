// Package agent is the resource manager on every node (the roles of
// Pacemaker's controller and executor): it keeps the node's replicas
// available to primaries, serves the volumes this node is primary of
// (mirror + NBD export), and, on the Designated Coordinator, runs the
// planner (internal/policy) on the cluster state and commits its decisions.
//
// Everything is level-triggered: each loop reads a snapshot of the cluster
// store, converges towards it with idempotent steps, and waits for the next
// change (or a periodic tick). The keys it uses are listed in keys.go and in
// docs/SCHEMA.md.
package agent

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/hacs/hacs/internal/cluster"
	"github.com/hacs/hacs/internal/mirror"
	"github.com/hacs/hacs/internal/nbd"
	"github.com/hacs/hacs/internal/policy"
)

// Keys of the resource manager, under cluster.PrefixVolumes.
func specKey(v string) string      { return cluster.PrefixVolumes + v + "/spec" }
func placementKey(v string) string { return cluster.PrefixVolumes + v + "/placement" }
func exportKey(v string) string    { return cluster.PrefixVolumes + v + "/export" }
func failureKey(v, node string) string {
	return cluster.PrefixVolumes + v + "/failures/" + node
}
func degradedKey(v string) string { return cluster.PrefixVolumes + v + "/degraded" }

// Spec is what a user asked for a volume (written by the API).
type Spec struct {
	Name     string             `json:"name"`
	Size     int64              `json:"size"`
	Replicas int                `json:"replicas"`
	Spread   string             `json:"spread,omitempty"`
	Stopped  bool               `json:"stopped,omitempty"`
	Policy   policy.Constraints `json:"constraints,omitzero"`
	// TLS is the volume's NBD export policy: required refuses plaintext
	// clients (NBD_REP_ERR_TLS_REQD); off and allowed (and unset) let both
	// in on a node with a TLS certificate for exports.
	TLS nbd.TLSPolicy `json:"tls,omitempty"`
	// Grants are the export clients that may open the volume (grants.go):
	// client certificate names and "psk:IDENTITY"s. Absent (nil): every
	// authenticated client of the cluster; empty: none (the cluster's
	// nodes only). Nodes always pass.
	Grants  []string  `json:"grants,omitzero"`
	Created time.Time `json:"created"`
	By      string    `json:"created_by,omitempty"`
}

// Placement lists the nodes holding a replica (written by the DC).
type Placement struct {
	Replicas []string `json:"replicas"`
}

// Export says where a volume's primary serves it (written by the primary,
// attached to its lease).
type Export struct {
	Node  string `json:"node"`
	Addr  string `json:"addr"` // NBD address, HOST:PORT
	Name  string `json:"export"`
	Epoch uint64 `json:"epoch"`
	// TLS: the export offers NBD STARTTLS (clients such as hacs volume
	// attach then use it).
	TLS bool `json:"tls,omitempty"`
}

// Degraded is why a volume is not as asked (written by the DC).
type Degraded struct {
	Reason string    `json:"reason"`
	Since  time.Time `json:"since"`
}

// volumeView gathers one volume's keys from a snapshot.
type volumeView struct {
	name      string
	spec      *Spec
	placement *Placement
	state     *mirror.State
	export    *Export
	degraded  *Degraded
	failures  map[string]policy.Failure
	revs      map[string]int64 // ModRevision per key, for conditioned writes
}

// volumesFrom decodes every volume of a snapshot of cluster.PrefixVolumes.
func volumesFrom(snap cluster.Snapshot) (map[string]*volumeView, []error) {
	out := map[string]*volumeView{}
	var errs []error
	get := func(name string) *volumeView {
		v := out[name]
		if v == nil {
			v = &volumeView{name: name, failures: map[string]policy.Failure{}, revs: map[string]int64{}}
			out[name] = v
		}
		return v
	}
	for key, kv := range snap.KVs {
		name, part, ok := cluster.SplitKey(key, cluster.PrefixVolumes)
		if !ok {
			continue
		}
		v := get(name)
		v.revs[key] = kv.ModRev
		var err error
		switch {
		case part == "spec":
			v.spec = new(Spec)
			err = json.Unmarshal(kv.Value, v.spec)
		case part == "placement":
			v.placement = new(Placement)
			err = json.Unmarshal(kv.Value, v.placement)
		case part == "state":
			v.state = new(mirror.State)
			err = json.Unmarshal(kv.Value, v.state)
		case part == "export":
			v.export = new(Export)
			err = json.Unmarshal(kv.Value, v.export)
		case part == "degraded":
			v.degraded = new(Degraded)
			err = json.Unmarshal(kv.Value, v.degraded)
		case strings.HasPrefix(part, "failures/"):
			var f policy.Failure
			err = json.Unmarshal(kv.Value, &f)
			v.failures[strings.TrimPrefix(part, "failures/")] = f
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("volume %s: key %s is corrupt: %w", name, key, err))
		}
	}
	return out, errs
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only plain structs are marshalled
	}
	return string(b)
}
