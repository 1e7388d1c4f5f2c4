package agent

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Resource metrics, exported by the DC from the cluster store (like the
// cluster volume metrics: each resource counted once).
var (
	descResHealth = prometheus.NewDesc("hacs_cluster_resource_health",
		"DC only: 1 for the resource's current health (running, starting, stopping, stopped, failed, blocked), 0 for the others.", []string{"resource", "health"}, nil)
	descResRunning = prometheus.NewDesc("hacs_cluster_resource_running_nodes",
		"DC only: nodes the resource (a group: all its members) runs on.", []string{"resource"}, nil)
	descResFailures = prometheus.NewDesc("hacs_cluster_resource_failures",
		"DC only: the resource's fail count on a node (it moves away at the migration threshold; hacs resource cleanup resets it).", []string{"resource", "node"}, nil)
)

var resourceHealths = []string{"running", "starting", "stopping", "stopped", "failed", "blocked"}

var resourceDescs = []*prometheus.Desc{descResHealth, descResRunning, descResFailures}

// collectResources exports the resources' state (called on the DC).
func (a *Agent) collectResources(gauge func(*prometheus.Desc, float64, ...string)) {
	if a.res == nil {
		return
	}
	snap, _ := a.res.Snapshot()
	if !snap.Synced {
		return
	}
	m, _ := resourcesFrom(snap)
	a.markLost(m)
	for _, name := range m.names() {
		ri := a.resInfo(m, name)
		for _, h := range resourceHealths {
			gauge(descResHealth, b2f(ri.Health == h), name, h)
		}
		gauge(descResRunning, float64(len(ri.Running)), name)
		for node, f := range ri.Failures {
			gauge(descResFailures, float64(f.Count), name, node)
		}
	}
}
