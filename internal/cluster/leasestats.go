package cluster

import (
	"sync/atomic"
	"time"
)

// LeaseCounters counts what happened to this node's liveness lease since
// the process started (for metrics; see docs/OBSERVABILITY.md).
type LeaseCounters struct {
	// Grants: leases acquired (the first, and a new one after each loss).
	Grants uint64 `json:"grants"`
	// GrantFailures: attempts to acquire a lease that failed.
	GrantFailures uint64 `json:"grant_failures"`
	// Renewals: keep-alives that succeeded.
	Renewals uint64 `json:"renewals"`
	// RenewalFailures: keep-alives that failed (timeout, no quorum, lease
	// expired).
	RenewalFailures uint64 `json:"renewal_failures"`
	// Expired: leases the cluster let expire (the node was offline for it).
	Expired uint64 `json:"expired"`
	// SelfFences: times the node stopped serving because no renewal
	// succeeded within TTL minus the safety margin.
	SelfFences uint64 `json:"self_fences"`
	// DCElections: times this node became the DC.
	DCElections uint64 `json:"dc_elections"`
	// LastRenewal is the send time of the last successful renewal (or
	// grant).
	LastRenewal time.Time `json:"last_renewal,omitzero"`
}

type leaseCounters struct {
	grants, grantFailures, renewals, renewalFailures, expired, selfFences, dcElections atomic.Uint64
}

// LeaseCounters returns the liveness lease counters.
func (n *Node) LeaseCounters() LeaseCounters {
	c := &n.counters
	out := LeaseCounters{
		Grants: c.grants.Load(), GrantFailures: c.grantFailures.Load(), Renewals: c.renewals.Load(),
		RenewalFailures: c.renewalFailures.Load(), Expired: c.expired.Load(), SelfFences: c.selfFences.Load(),
		DCElections: c.dcElections.Load(),
	}
	n.mu.Lock()
	out.LastRenewal = n.lastRenewal
	n.mu.Unlock()
	return out
}
