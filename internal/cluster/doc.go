// Package cluster is the membership and quorum layer of hacs (the Corosync
// role): a cluster store on etcd (embedded in the agent by default), node
// liveness through etcd leases, self-fencing of a node that loses its lease,
// the election of the Designated Coordinator (DC), node roles, labels and
// standby, an append-only event log, and the etcd-backed volume state store
// that the mirror layer fences its in-sync updates with.
//
// The key schema is documented in docs/SCHEMA.md; the helpers in keys.go are
// the only place that spells keys out.
//
// A resource manager builds on a started *Node:
//
//   - n.Serving() is a context canceled when this node may no longer serve
//     (its lease could not be renewed within TTL minus a safety margin, or
//     it expired); n.WaitServing blocks until serving again.
//   - n.Leadership() tells whether this node is the DC; its Ctx is canceled
//     when it stops being DC and its Guard() is an etcd comparison to add to
//     every transaction the DC commits, so that a deposed DC's writes fail.
//   - n.Members() is the membership view (from a watch cache); n.Changes()
//     is closed whenever membership, DC or serving state change (level
//     triggered: re-read everything, then wait on the next channel).
//   - NewCache watches any other prefix (desired state) the same way.
//   - n.Volumes() is the fenced volume StateStore (mirror.StateStore).
//   - n.Emit appends an event to the cluster event log.
package cluster
