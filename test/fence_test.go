package test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

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

// startedAfter returns the first resource-started event of resource after t.
func (c *resCluster) startedAfter(resource string, t time.Time) (cluster.Event, bool) {
	for _, e := range c.events(resource) {
		if e.Kind == "resource-started" && e.Time.After(t) {
			return e, true
		}
	}
	return cluster.Event{}, false
}

// TestFenceLostNodeThroughAgents: three real agents; fence devices and
// levels configured with the CLI (checked against the agents' metadata);
// the node running an OCF Dummy service (Debian's pacemaker agent, requires
// fencing) is SIGKILLed and the DC fences it — level 1 fails, level 2
// (Debian's fence_dummy) succeeds — exactly once; only then is the service
// started elsewhere, and the node rejoins cleanly. Then a node whose every
// level fails stays "fence failed": its service stays down, never started
// twice, and cluster status says why, until an operator adds a working
// level.
func TestFenceLostNodeThroughAgents(t *testing.T) {
	requireTools(t, "fence_dummy")
	agents := fenceTestAgents(t)
	c := newResCluster(t, 3, "--fence-agent-dir", agents)
	c.dumpOnFailure(t, "svc3", "svc2")
	hacs := func(args ...string) result {
		return runCmd(t, hacsBin, append(append([]string{"--cluster", c.ports["n1"][0] + "," + c.ports["n2"][0]}, cliCreds(filepath.Join(c.dir, "n1"))...), args...)...)
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
	if out := ok("fence", "test", "dummy3", "--status", "n3"); !strings.Contains(out, "node n3 is off") {
		t.Fatalf("status: %s", out)
	}

	// svc3 (no data-path fencing) runs on n3, whose agent is killed.
	fast := map[string]any{"monitor_interval": "1s"}
	on := func(node string) map[string]any {
		return map[string]any{"prefer": []string{node}, "stickiness": 5000}
	}
	c.mustDo("POST", "/v1/resources", map[string]any{"name": "svc3", "type": "ocf:pacemaker:Dummy", "ops": fast, "constraints": on("n3")}, 201)
	if got := c.waitRunning("svc3", 30*time.Second); got != "n3" {
		t.Fatalf("svc3 on %s, want n3", got)
	}
	var nodes cluster.Membership
	c.call("GET", "/v1/nodes", nil, &nodes)
	n3, _ := nodes.Node("n3")
	lease3 := n3.Alive.LeaseID
	c.kill("n3")
	killed := time.Now()
	moved := c.waitRunning("svc3", 60*time.Second, "n3")
	rec := c.fenceRecord("n3")
	t.Logf("n3 fenced %v after SIGKILL (lease TTL 2s); svc3 started on %s %v after it", rec.Confirmed.Sub(killed).Round(time.Millisecond), moved, time.Since(killed).Round(time.Millisecond))
	if rec.State != fence.StateFenced || rec.Lease != lease3 || rec.Method != fence.MethodDevice || rec.Level != 2 ||
		!slices.Equal(rec.Devices, []string{"dummy3"}) || rec.Attempts != 1 || !slices.Contains(rec.Resources, "svc3") {
		t.Fatalf("record %+v", rec)
	}
	if ev, ok := c.startedAfter("svc3", killed); !ok || ev.Time.Before(rec.Confirmed) {
		t.Fatalf("svc3 started at %v, before n3 was confirmed fenced at %v", ev.Time, rec.Confirmed)
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

	// n3 comes back: it rejoins, its probe stops what the killed agent
	// left, and nothing is fenced again.
	c.startNode("n3", "--fence-agent-dir", agents)
	c.waitOnline(3)
	c.waitFor("svc3 only on "+moved, 30*time.Second, func() bool { return slices.Equal(c.stateFiles("Dummy", "svc3"), []string{moved}) })
	if r := c.fenceRecord("n3"); r.Attempts != 1 || r.State != fence.StateFenced || r.Lease != lease3 {
		t.Fatalf("after the rejoin: %+v", r)
	}
	if n := len(c.eventsOf(fence.EventStarted, "n3")); n != 1 {
		t.Fatalf("%d fence-started events for n3's one loss", n)
	}

	// n2's only level fails: svc2 stays down and the cluster says why.
	ok("fence", "level", "add", "n2", "broken")
	c.mustDo("POST", "/v1/resources", map[string]any{"name": "svc2", "type": "ocf:pacemaker:Dummy", "ops": fast, "constraints": on("n2")}, 201)
	if got := c.waitRunning("svc2", 30*time.Second); got != "n2" {
		t.Fatalf("svc2 on %s, want n2", got)
	}
	c.kill("n2")
	killed = time.Now()
	c.waitFor("n2 fence failed twice", 60*time.Second, func() bool {
		r := c.fenceRecord("n2")
		return r.State == fence.StateFailed && r.Attempts >= 2
	})
	time.Sleep(2 * time.Second)
	if files := c.stateFiles("Dummy", "svc2"); !slices.Equal(files, []string{"n2"}) {
		t.Fatalf("svc2 started elsewhere while n2 is not fenced: state files on %v", files)
	}
	if _, started := c.startedAfter("svc2", killed); started {
		t.Fatal("svc2 started while n2 is not fenced")
	}
	out := hacs("cluster", "status").stdout
	if !strings.Contains(out, "fencing of node n2 failed") || !strings.Contains(out, "Unable to connect") {
		t.Errorf("cluster status does not say why n2 is not fenced:\n%s", out)
	}
	// the operator adds a working level: the next retry fences n2, then
	// svc2 starts elsewhere
	status2 := filepath.Join(agents, "n2.status")
	ok("fence", "device", "add", "dummy2", "--agent", "fence_dummy", "--param", "type=file", "--param", "status_file="+status2, "--host-map", "n2:blade2")
	ok("fence", "level", "add", "n2", "dummy2")
	moved2 := c.waitRunning("svc2", 90*time.Second, "n2")
	r2 := c.fenceRecord("n2")
	if r2.State != fence.StateFenced || r2.Level != 2 {
		t.Fatalf("n2: %+v", r2)
	}
	if ev, _ := c.startedAfter("svc2", killed); ev.Time.Before(r2.Confirmed) {
		t.Fatalf("svc2 started on %s at %v, before n2 was fenced at %v", moved2, ev.Time, r2.Confirmed)
	}

	// on-fail=fence: the monitor of svc1 fails on a node that is online;
	// the DC has that node fenced (its lease revoked, its levels run) and
	// svc1 starts again only afterwards.
	c.startNode("n2", "--fence-agent-dir", agents)
	c.waitOnline(3)
	var st cluster.Status
	c.call("GET", "/v1/status", nil, &st)
	target := otherThan([]string{"n3", "n2", "n1"}, st.Leadership.DC)
	c.mustDo("POST", "/v1/resources", map[string]any{"name": "svc1", "type": "ocf:pacemaker:Dummy", "ops": fast, "on_fail": "fence", "constraints": on(target)}, 201)
	if got := c.waitRunning("svc1", 30*time.Second); got != target {
		t.Fatalf("svc1 on %s, want %s", got, target)
	}
	c.call("GET", "/v1/nodes", nil, &nodes)
	ti, _ := nodes.Node(target)
	leaseT := ti.Alive.LeaseID
	failed := time.Now()
	if err := os.Remove(filepath.Join(c.varrun[target], "Dummy-svc1.state")); err != nil {
		t.Fatal(err)
	}
	var rt fence.Record
	c.waitFor(target+" fenced for on-fail=fence", 60*time.Second, func() bool {
		rt = c.fenceRecord(target)
		return rt.State == fence.StateFenced && rt.Lease == leaseT
	})
	if rt.Manual || !strings.Contains(rt.Reason, "on-fail=fence") {
		t.Errorf("record %+v", rt)
	}
	c.waitFor("svc1 started again", 60*time.Second, func() bool { _, ok := c.startedAfter("svc1", failed); return ok })
	// It starts again once n3 is confirmed fenced, or once n3's agent (which
	// stopped serving when its lease was revoked) reported it stopped: the
	// resource planner counts a clean stop as safe. Never before both.
	ev, _ := c.startedAfter("svc1", failed)
	var stoppedAt time.Time
	for _, e := range c.events("svc1") {
		if e.Kind == "resource-stopped" && e.Node == target && e.Time.After(failed) && stoppedAt.IsZero() {
			stoppedAt = e.Time
		}
	}
	if ev.Time.Before(rt.Confirmed) && (stoppedAt.IsZero() || ev.Time.Before(stoppedAt)) {
		t.Fatalf("svc1 started again at %v, before %s was fenced (%v) and before it stopped there (%v)", ev.Time, target, rt.Confirmed, stoppedAt)
	}
	t.Logf("on-fail=fence: %s fenced by %s level %d %v after the monitor failure", target, rt.Method, rt.Level, rt.Confirmed.Sub(failed).Round(time.Millisecond))
	c.waitOnline(3) // the fenced node serves again with a new lease
}
