package test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/hacs/hacs/internal/cluster"
	"github.com/hacs/hacs/internal/fence"
)

// fenceTestAgents writes fence_fail, an agent that always fails the way a
// fence device that cannot be reached does (its metadata is fine).
func fenceTestAgents(t *testing.T) string {
	dir := shortTempDir(t)
	body := `#!/bin/sh
if grep -q '^action=metadata'; then
  echo '<resource-agent name="fence_fail"><parameters><parameter name="plug"><content type="string"/></parameter></parameters><actions><action name="off"/><action name="on"/><action name="reboot"/><action name="monitor"/></actions></resource-agent>'
  exit 0
fi
echo 'Failed: Unable to connect to 192.0.2.1' >&2
exit 1
`
	if err := os.WriteFile(filepath.Join(dir, "fence_fail"), []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// holdResource is the stand-in for a resource without data-path fencing
// running on node: a hold of that node's current incarnation.
func holdResource(t *testing.T, c *rmCluster, node, resource string) int64 {
	t.Helper()
	var m cluster.Membership
	if _, err := c.call("GET", "/v1/nodes", nil, &m); err != nil {
		t.Fatal(err)
	}
	ni, ok := m.Node(node)
	if !ok || ni.Alive == nil {
		t.Fatalf("node %s not online", node)
	}
	var client string
	for name, p := range c.ports {
		if !c.procs[name].exited() && name != node {
			client = p[2]
			break
		}
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://" + client}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, _ := json.Marshal(fence.Hold{Node: node, Resource: resource, Lease: ni.Alive.LeaseID, Since: time.Now()})
	if _, err := cli.Put(ctx, fence.HoldKey(node, resource), string(b)); err != nil {
		t.Fatal(err)
	}
	return ni.Alive.LeaseID
}

func (c *rmCluster) fenceRecord(node string) fence.Record {
	var r fence.Record
	c.call("GET", "/v1/fence/nodes/"+node, nil, &r)
	return r
}

func (c *rmCluster) eventsOf(kind, node string) []cluster.Event {
	var out struct {
		Events []cluster.Event `json:"events"`
	}
	c.call("GET", "/v1/events?kind="+kind, nil, &out)
	return slices.DeleteFunc(out.Events, func(e cluster.Event) bool { return e.Fields["node"] != node })
}

// TestFenceLostNodeThroughAgents: three real agents; fence devices and
// levels configured with the CLI (checked against the agents' metadata);
// a node holding a resource without data-path fencing is SIGKILLed and the
// DC fences it — level 1 fails, level 2 (Debian's fence_dummy) succeeds —
// exactly once, and the node rejoins cleanly afterwards. Then a node whose
// every level fails stays "fence failed" (cluster status says why, retried
// with backoff) until an operator adds a working level.
//
// Until the resource planner's resources are wired to the fence controller,
// the stand-in for "node ran a floating IP" is a hold of its incarnation.
func TestFenceLostNodeThroughAgents(t *testing.T) {
	requireTools(t, "fence_dummy")
	agents := fenceTestAgents(t)
	c := newRMCluster(t, 3, "--fence-agent-dir", agents)
	hacs := func(args ...string) result {
		return runCmd(t, hacsBin, append([]string{"--cluster", c.ports["n1"][0] + "," + c.ports["n2"][0]}, args...)...)
	}
	ok := func(args ...string) string {
		t.Helper()
		r := hacs(args...)
		if r.code != 0 {
			t.Fatalf("%s", r)
		}
		return r.stdout
	}
	fails := func(want string, args ...string) {
		t.Helper()
		r := hacs(args...)
		if r.code == 0 || !strings.Contains(r.stderr, want) {
			t.Fatalf("want a failure saying %q: %s", want, r)
		}
	}
	status3 := filepath.Join(agents, "n3.status")
	ok("fence", "device", "add", "broken", "--agent", "fence_fail")
	ok("fence", "device", "add", "dummy3", "--agent", "fence_dummy", "--param", "type=file", "--param", "status_file="+status3, "--nodes", "n3", "--timeout", "20s")
	fails(`unknown parameter "bogus"`, "fence", "device", "add", "x", "--agent", "fence_dummy", "--param", "bogus=1")
	fails("fence_nosuch is not in", "fence", "device", "add", "x", "--agent", "fence_nosuch")
	fails("does not cover node n2", "fence", "level", "add", "n2", "dummy3")
	ok("fence", "level", "add", "n3", "broken")
	ok("fence", "level", "add", "n3", "dummy3")
	if out := ok("fence", "test", "dummy3"); !strings.Contains(out, "answers") {
		t.Fatalf("test: %s", out)
	}
	fails("Unable to connect", "fence", "test", "broken")

	// n3 runs a resource that needs fencing, and is killed.
	lease3 := holdResource(t, c, "n3", "ip1")
	c.kill("n3")
	killed := time.Now()
	var rec fence.Record
	c.waitFor("n3 fenced", 60*time.Second, func() bool {
		rec = c.fenceRecord("n3")
		return rec.State == fence.StateFenced && rec.Lease == lease3
	})
	t.Logf("n3 fenced %v after SIGKILL (lease TTL 2s): %+v", time.Since(killed).Round(time.Millisecond), rec)
	if rec.Method != fence.MethodDevice || rec.Level != 2 || !slices.Equal(rec.Devices, []string{"dummy3"}) || rec.Attempts != 1 {
		t.Fatalf("record %+v", rec)
	}
	if b, _ := os.ReadFile(status3); strings.TrimSpace(string(b)) != "on" {
		t.Errorf("fence_dummy's status after a reboot: %q", b)
	}
	if evs := c.eventsOf(fence.EventLevelFailed, "n3"); len(evs) != 1 || evs[0].Fields["device"] != "broken" || !strings.Contains(evs[0].Fields["reason"], "Unable to connect") {
		t.Errorf("fence-level-failed events: %+v", evs)
	}
	if evs := c.eventsOf(fence.EventSucceeded, "n3"); len(evs) != 1 || evs[0].Fields["level"] != "2" || evs[0].Fields["device"] != "dummy3" {
		t.Errorf("fence-succeeded events: %+v", evs)
	}
	if out := ok("cluster", "status"); !strings.Contains(out, "level 2 (dummy3)") {
		t.Errorf("cluster status does not show the fencing:\n%s", out)
	}

	// n3 comes back: it rejoins; the loss stays fenced, nothing is fenced again.
	c.start("n3")
	c.waitOnline(3)
	time.Sleep(2 * time.Second)
	if r := c.fenceRecord("n3"); r.Attempts != 1 || r.State != fence.StateFenced || r.Lease != lease3 {
		t.Fatalf("after the rejoin: %+v", r)
	}
	if n := len(c.eventsOf(fence.EventStarted, "n3")); n != 1 {
		t.Fatalf("%d fence-started events for n3's one loss", n)
	}

	// n2's only level fails: it stays unfenced, and the cluster says why.
	ok("fence", "level", "add", "n2", "broken")
	lease2 := holdResource(t, c, "n2", "web")
	c.kill("n2")
	c.waitFor("n2 fence failed twice", 60*time.Second, func() bool {
		r := c.fenceRecord("n2")
		return r.State == fence.StateFailed && r.Attempts >= 2 && r.Lease == lease2
	})
	out := hacs("cluster", "status").stdout
	if !strings.Contains(out, "fencing of node n2 failed") || !strings.Contains(out, "Unable to connect") {
		t.Errorf("cluster status does not say why n2 is not fenced:\n%s", out)
	}
	// the operator adds a working level: the next retry fences n2
	status2 := filepath.Join(agents, "n2.status")
	ok("fence", "device", "add", "dummy2", "--agent", "fence_dummy", "--param", "type=file", "--param", "status_file="+status2, "--host-map", "n2:blade2")
	ok("fence", "level", "add", "n2", "dummy2")
	c.waitFor("n2 fenced", 90*time.Second, func() bool { r := c.fenceRecord("n2"); return r.State == fence.StateFenced })
	if r := c.fenceRecord("n2"); r.Level != 2 || r.Lease != lease2 {
		t.Fatalf("n2: %+v", r)
	}
}
