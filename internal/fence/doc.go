// Package fence is node-level fencing (the STONITH role): it runs the fence
// agents of Debian's fence-agents package (fence_ipmilan, fence_apc,
// fence_dummy, ...) with their stdin key=value protocol, tries a node's
// fence levels in order (every device of a level must succeed), and, on the
// Designated Coordinator, fences a node that was lost while it ran resources
// without data-path fencing, exactly once per loss, recording the confirmed
// result in the cluster store so that the planner recovers those resources
// only afterwards.
//
// Level 0 is always the node's own self-fence through its liveness lease
// (internal/cluster): a node that cannot renew its lease stops serving
// before the lease can expire for the others. Fencing by lease is confirmed
// at E + grace, where E is when the lease was gone for the cluster (its
// expiry as seen by the DC, or, for a lease the DC revokes, the time it
// recorded the attempt + TTL + the revocation's 2 s bound: the latest the
// node can notice), and grace is the self-fence grace
// (default: the lease TTL). By then the node has been not serving for at
// least safety margin + grace. A node with fence levels configured is
// confirmed only by a device level: the lease proves nothing about a node
// whose agent process died (IP addresses stay configured, daemons keep
// running) or whose kernel hangs with its addresses still up.
//
// The keys live under /hacs/fence/ (docs/SCHEMA.md); the interface with the
// resource planner is Controller.Require (who needs fencing) and
// View.Fenced (is that loss fenced).
package fence
