package fence

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	descNodeState = prometheus.NewDesc("hacs_fence_node_state",
		"1 for the state of fencing of the node's latest loss (pending, fencing, fenced, failed, cancelled); reported by the DC",
		[]string{"node", "state"}, nil)
	descAttempts = prometheus.NewDesc("hacs_fence_attempts",
		"attempts to fence the node's latest loss; reported by the DC", []string{"node"}, nil)
	descConfirmed = prometheus.NewDesc("hacs_fence_confirmed_timestamp_seconds",
		"Unix time the node's latest fencing was confirmed; reported by the DC", []string{"node"}, nil)
	descDevices = prometheus.NewDesc("hacs_fence_devices", "fence devices configured; reported by the DC", nil, nil)
	descRuns    = prometheus.NewDesc("hacs_fence_agent_runs_total",
		"fence-agent actions this node ran, by agent, action and result (ok, failed)", []string{"agent", "action", "result"}, nil)
)

// runStats counts the agent actions a runner ran.
type runStats struct {
	mu sync.Mutex
	n  map[[3]string]float64
}

func (s *runStats) add(agent, action string, ok bool) {
	res := "ok"
	if !ok {
		res = "failed"
	}
	s.mu.Lock()
	if s.n == nil {
		s.n = map[[3]string]float64{}
	}
	s.n[[3]string{agent, action, res}]++
	s.mu.Unlock()
}

// Collector returns the fencing metrics (docs/OBSERVABILITY.md).
func (c *Controller) Collector() prometheus.Collector { return fenceCollector{c} }

type fenceCollector struct{ c *Controller }

func (fc fenceCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descNodeState, descAttempts, descConfirmed, descDevices, descRuns} {
		ch <- d
	}
}

func (fc fenceCollector) Collect(ch chan<- prometheus.Metric) {
	r := fc.c.cfg.Runner
	r.stats.mu.Lock()
	for k, v := range r.stats.n {
		ch <- prometheus.MustNewConstMetric(descRuns, prometheus.CounterValue, v, k[0], k[1], k[2])
	}
	r.stats.mu.Unlock()
	if fc.c.node == nil || !fc.c.node.IsDC() {
		return
	}
	v, ok := fc.c.View()
	if !ok {
		return
	}
	ch <- prometheus.MustNewConstMetric(descDevices, prometheus.GaugeValue, float64(len(v.Devices)))
	for _, node := range sortedKeys(v.Records) {
		rec := v.Records[node]
		for _, s := range []string{StatePending, StateFencing, StateFenced, StateFailed, StateCancelled} {
			val := 0.0
			if rec.State == s {
				val = 1
			}
			ch <- prometheus.MustNewConstMetric(descNodeState, prometheus.GaugeValue, val, node, s)
		}
		ch <- prometheus.MustNewConstMetric(descAttempts, prometheus.GaugeValue, float64(rec.Attempts), node)
		if !rec.Confirmed.IsZero() {
			ch <- prometheus.MustNewConstMetric(descConfirmed, prometheus.GaugeValue, float64(rec.Confirmed.UnixNano())/1e9, node)
		}
	}
}
