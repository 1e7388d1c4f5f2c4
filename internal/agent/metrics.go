package agent

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/hacs/hacs/internal/mirror"
)

// Metrics (see docs/OBSERVABILITY.md). Volume metrics are exported by the
// node serving the volume as primary; node metrics by every node.
var (
	descVolOps = prometheus.NewDesc("hacs_volume_operations_total",
		"I/O requests served by the volume's primary on this node, by operation (failed ones included).",
		[]string{"volume", "op"}, nil)
	descVolErrors = prometheus.NewDesc("hacs_volume_operation_errors_total",
		"I/O requests that failed, by operation.", []string{"volume", "op"}, nil)
	descVolBytes = prometheus.NewDesc("hacs_volume_bytes_total",
		"Bytes of the successful I/O requests, by operation (trim and zero: the range's length).", []string{"volume", "op"}, nil)
	descVolLatency = prometheus.NewDesc("hacs_volume_operation_duration_seconds",
		"Latency of the I/O requests as the primary serves them (all replicas included), by operation.", []string{"volume", "op"}, nil)
	descVolInFlight = prometheus.NewDesc("hacs_volume_inflight_requests",
		"I/O requests being served.", []string{"volume"}, nil)
	descVolEpoch = prometheus.NewDesc("hacs_volume_epoch",
		"The epoch the volume is served at (it increases at each failover or primary move).", []string{"volume"}, nil)
	descVolPrimary = prometheus.NewDesc("hacs_volume_primary",
		"1 for each volume this node serves as primary.", []string{"volume"}, nil)
	descVolFenced = prometheus.NewDesc("hacs_volume_fenced",
		"1 when this node's primary of the volume is fenced by a newer primary.", []string{"volume"}, nil)
	descVolReplicas = prometheus.NewDesc("hacs_volume_replicas",
		"Replicas of the volume by replication state.", []string{"volume", "state"}, nil)
	descRepState = prometheus.NewDesc("hacs_volume_replica_state",
		"1 for the replica's current replication state (in-sync, outdated, resyncing), 0 for the others.", []string{"volume", "replica", "state"}, nil)
	descRepConnected = prometheus.NewDesc("hacs_volume_replica_connected",
		"1 when the primary holds a connection to the replica.", []string{"volume", "replica"}, nil)
	descRepRemaining = prometheus.NewDesc("hacs_volume_resync_remaining_bytes",
		"Bytes the replica still has to be compared or copied before it is in sync.", []string{"volume", "replica"}, nil)
	descRepRate = prometheus.NewDesc("hacs_volume_resync_rate_bytes_per_second",
		"Resync progress rate of the replica (0 unless resyncing).", []string{"volume", "replica"}, nil)
	descRepDone = prometheus.NewDesc("hacs_volume_resync_done_bytes",
		"Bytes of the current or last resync of the replica done so far.", []string{"volume", "replica"}, nil)
	descVerifyDone = prometheus.NewDesc("hacs_volume_verify_done_bytes",
		"Bytes compared so far by the running verify of the volume (absent when none runs).", []string{"volume"}, nil)
	descVerifyTotal = prometheus.NewDesc("hacs_volume_verify_total_bytes",
		"Bytes the running verify of the volume compares in all.", []string{"volume"}, nil)

	descPoolCapacity = prometheus.NewDesc("hacs_node_pool_capacity_bytes",
		"What the storage pool may occupy: its usage plus the free space of its filesystem.", nil, nil)
	descPoolUsed = prometheus.NewDesc("hacs_node_pool_used_bytes",
		"Allocated bytes of the pool's files.", nil, nil)
	descPoolFree = prometheus.NewDesc("hacs_node_pool_free_bytes",
		"Free space of the pool's filesystem.", nil, nil)
	descPoolPromised = prometheus.NewDesc("hacs_node_pool_promised_bytes",
		"Sum of the sizes of the volumes in the pool.", nil, nil)
	descPoolLimit = prometheus.NewDesc("hacs_node_pool_limit_bytes",
		"Capacity times overcommit: no volume is placed past it.", nil, nil)
	descReplicasHosted = prometheus.NewDesc("hacs_node_replicas_hosted",
		"Volume replicas held in this node's pool.", nil, nil)
	descPrimaries = prometheus.NewDesc("hacs_node_primaries",
		"Volumes this node serves as primary.", nil, nil)
	descServing = prometheus.NewDesc("hacs_node_serving",
		"1 while this node holds its liveness lease and may serve.", nil, nil)
	descDC = prometheus.NewDesc("hacs_node_dc",
		"1 while this node is the designated coordinator (DC).", nil, nil)
	descClusterHealth = prometheus.NewDesc("hacs_cluster_volume_health",
		"DC only: 1 for the volume's current health (ok, degraded, stopped, pending, down), 0 for the others.", []string{"volume", "health"}, nil)
	descClusterInSync = prometheus.NewDesc("hacs_cluster_volume_in_sync_replicas",
		"DC only: replicas in the volume's in-sync set (from the cluster store).", []string{"volume"}, nil)
	descClusterWanted = prometheus.NewDesc("hacs_cluster_volume_wanted_replicas",
		"DC only: the volume's wanted replica count.", []string{"volume"}, nil)
	descClusterEpoch = prometheus.NewDesc("hacs_cluster_volume_epoch",
		"DC only: the volume's epoch in the cluster store.", []string{"volume"}, nil)
	descClusterFailures = prometheus.NewDesc("hacs_cluster_volume_failures",
		"DC only: the volume's fail count on a node (it moves away at the migration threshold; hacs volume unfail resets it).", []string{"volume", "node"}, nil)
	descClusterNodes = prometheus.NewDesc("hacs_cluster_nodes",
		"DC only: member nodes by state (online, offline, standby).", []string{"state"}, nil)
	descClusterEpochChanges = prometheus.NewDesc("hacs_cluster_volume_epoch_changes_total",
		"DC only: changes of the volume's epoch (failovers, moves, restarts of the primary) seen in the cluster store since this agent started.", []string{"volume"}, nil)
	descLeaseGrants = prometheus.NewDesc("hacs_node_lease_grants_total",
		"Liveness leases this node acquired (the first, and a new one after each loss).", nil, nil)
	descLeaseGrantFailures = prometheus.NewDesc("hacs_node_lease_grant_failures_total",
		"Attempts to acquire a liveness lease that failed.", nil, nil)
	descLeaseRenewals = prometheus.NewDesc("hacs_node_lease_renewals_total",
		"Liveness lease renewals (keep-alives) that succeeded.", nil, nil)
	descLeaseRenewalFailures = prometheus.NewDesc("hacs_node_lease_renewal_failures_total",
		"Liveness lease renewals that failed (timeout, no quorum, lease expired).", nil, nil)
	descLeaseExpired = prometheus.NewDesc("hacs_node_lease_expired_total",
		"Liveness leases the cluster let expire: it considered this node offline.", nil, nil)
	descSelfFences = prometheus.NewDesc("hacs_node_self_fences_total",
		"Times this node stopped serving because no lease renewal succeeded within the TTL minus the safety margin.", nil, nil)
	descLastRenewal = prometheus.NewDesc("hacs_node_lease_last_renewal_timestamp_seconds",
		"Unix time at which the last successful lease renewal was sent.", nil, nil)
	descDCElections = prometheus.NewDesc("hacs_node_dc_elections_total",
		"Times this node became the designated coordinator.", nil, nil)
	descDCSeen = prometheus.NewDesc("hacs_node_dc_seen",
		"1, labelled with the DC this node sees in the cluster store (absent while it sees none).", []string{"dc"}, nil)
	descNodeInfo = prometheus.NewDesc("hacs_node_info",
		"Always 1; labels name the node.", []string{"node"}, nil)
)

var replicaStates = []string{mirror.InSync.String(), mirror.Outdated.String(), mirror.Resyncing.String()}

// collector reads the agent's current values at scrape time.
type collector struct{ a *Agent }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descVolOps, descVolErrors, descVolBytes, descVolLatency, descVolInFlight,
		descVolEpoch, descVolPrimary, descVolFenced, descVolReplicas, descRepState, descRepConnected, descRepRemaining,
		descRepRate, descRepDone, descVerifyDone, descVerifyTotal, descPoolCapacity, descPoolUsed, descPoolFree, descPoolPromised, descPoolLimit,
		descReplicasHosted, descPrimaries, descServing, descDC, descNodeInfo,
		descClusterHealth, descClusterInSync, descClusterWanted, descClusterEpoch, descClusterFailures, descClusterNodes,
		descClusterEpochChanges, descLeaseGrants, descLeaseGrantFailures, descLeaseRenewals, descLeaseRenewalFailures,
		descLeaseExpired, descSelfFences, descLastRenewal, descDCElections, descDCSeen} {
		ch <- d
	}
	for _, d := range resourceDescs {
		ch <- d
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	a := c.a
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge(descNodeInfo, 1, a.self())
	gauge(descServing, b2f(a.node.IsServing()))
	gauge(descDC, b2f(a.node.IsDC()))
	if dc := a.node.Leadership().DC; dc != "" {
		gauge(descDCSeen, 1, dc)
	}
	lc := a.node.LeaseCounters()
	counter(descLeaseGrants, float64(lc.Grants))
	counter(descLeaseGrantFailures, float64(lc.GrantFailures))
	counter(descLeaseRenewals, float64(lc.Renewals))
	counter(descLeaseRenewalFailures, float64(lc.RenewalFailures))
	counter(descLeaseExpired, float64(lc.Expired))
	counter(descSelfFences, float64(lc.SelfFences))
	counter(descDCElections, float64(lc.DCElections))
	if !lc.LastRenewal.IsZero() {
		gauge(descLastRenewal, float64(lc.LastRenewal.UnixNano())/1e9)
	}
	if a.cfg.Pool != nil {
		if st, err := a.cfg.Pool.Stats(); err == nil {
			gauge(descPoolCapacity, float64(st.Capacity))
			gauge(descPoolUsed, float64(st.Used))
			gauge(descPoolFree, float64(st.Free))
			gauge(descPoolPromised, float64(st.Promised))
			gauge(descPoolLimit, float64(st.Limit))
			gauge(descReplicasHosted, float64(st.Volumes))
		}
	}

	if a.node.IsDC() {
		a.collectCluster(gauge, counter)
		a.collectResources(gauge)
	}

	type served struct {
		m     *mirror.Mirror
		stats *mirror.Stats
	}
	a.mu.Lock()
	prims := make(map[string]served, len(a.prims))
	for name, p := range a.prims {
		prims[name] = served{p.m, a.stats[name]}
	}
	a.mu.Unlock()
	gauge(descPrimaries, float64(len(prims)))

	for name, p := range prims {
		st := p.m.Status()
		gauge(descVolPrimary, 1, name)
		gauge(descVolEpoch, float64(st.Epoch), name)
		gauge(descVolFenced, b2f(st.Fenced), name)
		count := map[string]int{}
		for _, r := range st.Replicas {
			count[r.State]++
			for _, s := range replicaStates {
				gauge(descRepState, b2f(r.State == s), name, r.ID, s)
			}
			gauge(descRepConnected, b2f(r.Connected), name, r.ID)
			remaining := r.OutOfSync
			if r.State == mirror.Resyncing.String() {
				remaining = max(r.ResyncTotal-r.ResyncDone, 0)
			}
			gauge(descRepRemaining, float64(remaining), name, r.ID)
			gauge(descRepRate, r.Rate, name, r.ID)
			gauge(descRepDone, float64(r.ResyncDone), name, r.ID)
		}
		for _, s := range replicaStates {
			gauge(descVolReplicas, float64(count[s]), name, s)
		}

		if vp := a.verifyProgress(name); vp.Running {
			gauge(descVerifyDone, float64(vp.Done), name)
			gauge(descVerifyTotal, float64(vp.Total), name)
		}

		stats := p.stats
		if stats == nil {
			stats = p.m.Stats()
		}
		snap := stats.Snapshot()
		gauge(descVolInFlight, float64(snap.InFlight), name)
		for op := mirror.Op(0); op < mirror.NumOps; op++ {
			o := snap.Ops[op]
			ol := op.String()
			counter(descVolOps, float64(o.Ops), name, ol)
			counter(descVolErrors, float64(o.Errors), name, ol)
			if op != mirror.OpFlush {
				counter(descVolBytes, float64(o.Bytes), name, ol)
			}
			buckets := make(map[float64]uint64, len(o.Buckets))
			for i, b := range o.Buckets {
				buckets[mirror.LatencyBuckets[i]] = b
			}
			ch <- prometheus.MustNewConstHistogram(descVolLatency, o.Ops, o.SumSeconds, buckets, name, ol)
		}
	}
}

// metricsHandler serves the agent's metrics, plus the Go runtime's and the
// process's.
func (a *Agent) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{a}, a.alertMetrics(),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if a.cfg.Fence != nil {
		reg.MustRegister(a.cfg.Fence.Collector())
	}
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slogPromLogger{a}})
}

type slogPromLogger struct{ a *Agent }

func (l slogPromLogger) Println(v ...any) { l.a.log.Warn("metrics", "err", v) }

var volumeHealths = []string{"ok", "degraded", "stopped", "pending", "down"}

// collectCluster exports the cluster-wide view, on the DC only (so that
// summing over instances counts each volume once).
func (a *Agent) collectCluster(gauge, counter func(*prometheus.Desc, float64, ...string)) {
	members := a.node.Members()
	online, offline, standby := 0, 0, 0
	for _, n := range members.Nodes {
		switch {
		case !n.Online:
			offline++
		case n.Standby:
			standby++
		default:
			online++
		}
	}
	gauge(descClusterNodes, float64(online), "online")
	gauge(descClusterNodes, float64(offline), "offline")
	gauge(descClusterNodes, float64(standby), "standby")
	if a.vols == nil {
		return
	}
	snap, _ := a.vols.Snapshot()
	if !snap.Synced {
		return
	}
	views, _ := volumesFrom(snap)
	a.mu.Lock()
	changes := make(map[string]uint64, len(a.epochChanges))
	for name, n := range a.epochChanges {
		changes[name] = n
	}
	a.mu.Unlock()
	for name, v := range views {
		if v.spec == nil {
			continue
		}
		vi := a.info(v, members)
		for _, h := range volumeHealths {
			gauge(descClusterHealth, b2f(vi.Health == h), name, h)
		}
		gauge(descClusterWanted, float64(v.spec.Replicas), name)
		if v.state != nil {
			gauge(descClusterInSync, float64(len(v.state.InSync)), name)
			gauge(descClusterEpoch, float64(v.state.Epoch), name)
			counter(descClusterEpochChanges, float64(changes[name]), name)
		}
		for node, f := range v.failures {
			gauge(descClusterFailures, float64(f.Count), name, node)
		}
	}
}
