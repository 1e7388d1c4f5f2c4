package test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	rm "github.com/hacs/hacs/internal/agent"
	"github.com/hacs/hacs/internal/cluster"
)

// testOCFRoot makes an OCF_ROOT holding Debian's providers (linked) and a
// provider "hacstest" of misbehaving agents.
func testOCFRoot(t testing.TB) string {
	t.Helper()
	for _, p := range []string{"/usr/lib/ocf/resource.d/pacemaker/Dummy", "/usr/lib/ocf/resource.d/pacemaker/Stateful", "/usr/lib/ocf/resource.d/heartbeat/Filesystem"} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s missing: install resource-agents and pacemaker-resource-agents (scripts/install-deps.sh)", p)
		}
	}
	root := shortTempDir(t)
	dir := filepath.Join(root, "resource.d", "hacstest")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"pacemaker", "heartbeat"} {
		if err := os.Symlink("/usr/lib/ocf/resource.d/"+p, filepath.Join(root, "resource.d", p)); err != nil {
			t.Fatal(err)
		}
	}
	os.Symlink("/usr/lib/ocf/lib", filepath.Join(root, "lib"))
	meta := `<?xml version="1.0"?><resource-agent name="X"><parameters/><actions><action name="start"/></actions></resource-agent>`
	agents := map[string]string{
		// start hangs (the stop after it works)
		"Hang": `case "$1" in start) echo "starting, then hanging" >&2; sleep 600;; stop) exit 0;; monitor) exit 7;; meta-data) echo '` + meta + `';; esac; exit 0`,
		// start exits with a code the OCF standard does not know
		"Code42": `case "$1" in start) echo "weird failure" >&2; exit 42;; stop) exit 0;; monitor) exit 7;; esac; exit 0`,
		// start prints binary garbage, then fails
		"Garbage": `case "$1" in start) head -c 3000 /dev/urandom; head -c 9000 /dev/urandom >&2; exit 1;; stop) exit 0;; monitor) exit 7;; esac; exit 0`,
	}
	for name, body := range agents {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// resCluster is a 3-agent cluster whose agents run OCF agents from a test
// OCF_ROOT, each with its own HA_VARRUN (where Dummy and Stateful keep their
// state files), so that "running on n2" is a file in n2's directory.
type resCluster struct {
	*rmCluster
	ocfRoot string
	varrun  map[string]string
}

func newResCluster(t *testing.T, n int, extra ...string) *resCluster {
	c := &resCluster{rmCluster: &rmCluster{t: t, dir: shortTempDir(t), procs: map[string]*proc{}, ports: map[string][5]string{}},
		ocfRoot: testOCFRoot(t), varrun: map[string]string{}}
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("n%d", i)
		c.ports[name] = nodePorts(t)
		c.varrun[name] = filepath.Join(c.dir, "varrun-"+name)
		os.MkdirAll(c.varrun[name], 0o755)
		c.startNode(name, extra...)
	}
	c.waitOnline(n)
	return c
}

func (c *resCluster) startNode(name string, extra ...string) {
	c.t.Helper()
	c.extra = append([]string{"--ocf-root", c.ocfRoot, "--ocf-env", "HA_VARRUN=" + c.varrun[name], "--ocf-env", "HA_RSCTMP=" + c.varrun[name]}, extra...)
	c.start(name)
}

// do calls the first live agent's API and returns the status and body.
func (c *resCluster) do(method, path string, body any) (int, []byte) {
	c.t.Helper()
	for name, p := range c.procs {
		if p.exited() {
			continue
		}
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, _ := http.NewRequest(method, c.api(name)+path, rd)
		req.Header.Set(cluster.ActorHeader, "tester@res")
		resp, err := c.hc().Do(req)
		if err != nil {
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == 503 {
			continue
		}
		return resp.StatusCode, b
	}
	c.t.Fatalf("%s %s: no agent answered", method, path)
	return 0, nil
}

func (c *resCluster) mustDo(method, path string, body any, want int) []byte {
	c.t.Helper()
	code, b := c.do(method, path, body)
	if code != want {
		c.t.Fatalf("%s %s: %d, want %d: %s", method, path, code, want, b)
	}
	return b
}

func (c *resCluster) resource(name string) rm.ResourceInfo {
	c.t.Helper()
	var ri rm.ResourceInfo
	code, b := c.do("GET", "/v1/resources/"+name, nil)
	if code == 200 {
		json.Unmarshal(b, &ri)
	}
	return ri
}

// waitRunning waits until the resource runs on exactly one node (not in
// except) and returns it.
func (c *resCluster) waitRunning(name string, limit time.Duration, except ...string) string {
	c.t.Helper()
	var ri rm.ResourceInfo
	c.waitFor(name+" running", limit, func() bool {
		ri = c.resource(name)
		return ri.Health == "running" && len(ri.Running) == 1 && !slices.Contains(except, ri.Running[0])
	})
	return ri.Running[0]
}

// stateFiles lists the nodes whose HA_VARRUN holds the Dummy/Stateful state
// file of a resource (where the agent really runs it).
func (c *resCluster) stateFiles(agent, name string) []string {
	var out []string
	for node, dir := range c.varrun {
		if _, err := os.Stat(filepath.Join(dir, agent+"-"+name+".state")); err == nil {
			out = append(out, node)
		}
	}
	slices.Sort(out)
	return out
}

// events returns the events of a resource, oldest first.
func (c *resCluster) events(resource string) []cluster.Event {
	var out struct {
		Events []cluster.Event `json:"events"`
	}
	_, b := c.do("GET", "/v1/events?resource="+url.QueryEscape("resource/"+resource), nil)
	json.Unmarshal(b, &out)
	var evs []cluster.Event
	for _, e := range out.Events {
		if e.Resource == "resource/"+resource {
			evs = append(evs, e)
		}
	}
	return evs
}

// dumpOnFailure logs the resources' info and events when t fails.
func (c *resCluster) dumpOnFailure(t *testing.T, names ...string) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, n := range names {
			_, b := c.do("GET", "/v1/resources/"+n, nil)
			t.Logf("resource %s: %s", n, b)
			for _, e := range c.events(n) {
				t.Logf("  %s %s %s: %s %v", e.Time.Format("15:04:05.000"), e.Node, e.Kind, e.Message, e.Fields)
			}
		}
	})
}

func otherThan(nodes []string, not ...string) string {
	for _, n := range nodes {
		if !slices.Contains(not, n) {
			return n
		}
	}
	return ""
}

// TestResourcesOCF runs Debian's OCF agents (pacemaker Dummy and Stateful)
// and misbehaving agents under a 3-agent cluster: placement, constraints of
// every kind, monitor failures and migration-threshold, hard failures with
// the agent's stderr kept, an agent SIGKILLed (recovery only without
// fencing requirement) and its restart (probes: nothing starts twice).
func TestResourcesOCF(t *testing.T) {
	c := newResCluster(t, 3)
	root := t // processes started in a subtest live until the end of the test
	nodes := []string{"n1", "n2", "n3"}
	fast := map[string]any{"monitor_interval": "1s"}

	t.Run("dummy", func(t *testing.T) {
		c.t = t
		c.mustDo("POST", "/v1/resources", map[string]any{"name": "d1", "type": "ocf:pacemaker:Dummy", "ops": fast}, 201)
		node := c.waitRunning("d1", 20*time.Second)
		if got := c.stateFiles("Dummy", "d1"); !slices.Equal(got, []string{node}) {
			t.Fatalf("Dummy d1 state files on %v, want only %s", got, node)
		}
		c.mustDo("POST", "/v1/resources", map[string]any{"name": "s1", "type": "ocf:pacemaker:Stateful", "ops": fast}, 201)
		c.waitRunning("s1", 20*time.Second)
		// Validation: unknown fields, unknown parameters, bad types are 4xx with a JSON error.
		for _, bad := range []struct {
			body any
			want string
		}{
			{map[string]any{"name": "x1", "type": "ocf:pacemaker:Dummy", "bogus": 1}, "unknown field"},
			{map[string]any{"name": "x1", "type": "ocf:pacemaker:Dummy", "params": map[string]string{"nosuch": "1"}}, "unknown parameter(s) nosuch"},
			{map[string]any{"name": "x1", "type": "lsb:foo"}, "unknown type"},
			{map[string]any{"name": "x1", "type": "ip", "params": map[string]string{"ip": "300.1.1.1", "nic": "eth0"}}, "parameter ip"},
			{map[string]any{"name": "x1", "type": "ocf:nosuch:Agent"}, "not installed"},
			{map[string]any{"name": "x1", "type": "group", "members": []string{"nosuch"}}, "no such resource"},
			{map[string]any{"name": "d1", "type": "ocf:pacemaker:Dummy"}, "exists already"},
		} {
			code, b := c.do("POST", "/v1/resources", bad.body)
			var e map[string]string
			if code/100 != 4 || json.Unmarshal(b, &e) != nil || !strings.Contains(e["error"], bad.want) {
				t.Errorf("%v: %d %s, want 4xx with %q", bad.body, code, b, bad.want)
			}
		}
	})

	t.Run("location-and-move", func(t *testing.T) {
		c.t = t
		from := c.resource("d1").Running[0]
		to := otherThan(nodes, from)
		c.mustDo("POST", "/v1/constraints", map[string]any{"kind": "location", "resource": "d1", "node": to, "score": 500}, 201)
		if got := c.waitRunning("d1", 20*time.Second, from); got != to {
			t.Fatalf("d1 on %s, want %s", got, to)
		}
		if got := c.stateFiles("Dummy", "d1"); !slices.Equal(got, []string{to}) {
			t.Fatalf("state files on %v, want only %s", got, to)
		}
		// hacs resource move through the CLI, then --clear.
		third := otherThan(nodes, from, to)
		apis := c.ports["n1"][0] + "," + c.ports["n2"][0] + "," + c.ports["n3"][0]
		out := mustRun(t, hacsBin, "resource", "move", "d1", third, "--cluster", apis, "--ca-file", caFileOf(filepath.Join(c.dir, "n1")), "--token-file", filepath.Join(c.dir, "n1", cluster.AdminTokenFile), "--json")
		if !strings.Contains(out.stdout, `"cli-move-d1"`) {
			t.Fatalf("move --json: %s", out.stdout)
		}
		if got := c.waitRunning("d1", 20*time.Second, to); got != third {
			t.Fatalf("d1 on %s after move, want %s", got, third)
		}
		mustRun(t, hacsBin, "resource", "move", "d1", "--clear", "--cluster", apis, "--ca-file", caFileOf(filepath.Join(c.dir, "n1")), "--token-file", filepath.Join(c.dir, "n1", cluster.AdminTokenFile))
		c.mustDo("DELETE", "/v1/constraints/location-d1-"+to, nil, 200)
		// The move is in the event log with the actor: the authenticated
		// token, not what the CLI claims.
		found := false
		for _, e := range c.events("d1") {
			if e.Kind == "resource-move-requested" && strings.Contains(e.Message, "by token admin (from 127.0.0.1)") {
				found = true
			}
		}
		if !found {
			t.Errorf("no resource-move-requested event with the actor: %+v", c.events("d1"))
		}
		lst := mustRun(t, hacsBin, "resource", "list", "--cluster", apis, "--ca-file", caFileOf(filepath.Join(c.dir, "n1")), "--token-file", filepath.Join(c.dir, "n1", cluster.AdminTokenFile))
		if !strings.Contains(lst.stdout, "d1") || !strings.Contains(lst.stdout, "running") {
			t.Fatalf("resource list:\n%s", lst.stdout)
		}
	})

	t.Run("colocation-and-order", func(t *testing.T) {
		c.t = t
		c.mustDo("POST", "/v1/resources", map[string]any{"name": "d2", "type": "ocf:pacemaker:Dummy", "ops": fast}, 201)
		c.mustDo("POST", "/v1/constraints", map[string]any{"kind": "colocation", "resource": "d2", "with": "d1"}, 201)
		c.mustDo("POST", "/v1/constraints", map[string]any{"kind": "order", "resource": "d2", "first": "d1"}, 201)
		// d2 may have started elsewhere before its colocation was added:
		// it must end up with d1 (and stay, checked below).
		d1 := c.resource("d1").Running[0]
		c.waitFor("d2 with d1", 20*time.Second, func() bool {
			r2 := c.resource("d2")
			return r2.Health == "running" && slices.Equal(r2.Running, []string{d1})
		})
		if got := c.waitRunning("d2", 20*time.Second); got != d1 {
			t.Fatalf("d2 on %s, d1 on %s: colocation not honoured", got, d1)
		}
		// Move d1: d2 stops first, d1 moves, d2 starts after it.
		to := otherThan(nodes, d1)
		mark := time.Now()
		c.mustDo("POST", "/v1/resources/d1/move", map[string]any{"node": to}, 200)
		c.waitRunning("d1", 20*time.Second, d1)
		if got := c.waitRunning("d2", 20*time.Second, d1); got != to {
			t.Fatalf("d2 on %s, want %s with d1", got, to)
		}
		at := func(res, kind string) time.Time {
			for _, e := range c.events(res) {
				if e.Kind == kind && e.Time.After(mark) {
					return e.Time
				}
			}
			t.Fatalf("no %s event for %s", kind, res)
			return time.Time{}
		}
		if d2stop, d1stop := at("d2", "resource-stopped"), at("d1", "resource-stopped"); d2stop.After(d1stop) {
			t.Errorf("d2 stopped at %v, after d1 (%v)", d2stop, d1stop)
		}
		if d1start, d2start := at("d1", "resource-started"), at("d2", "resource-started"); d2start.Before(d1start) {
			t.Errorf("d2 started at %v, before d1 (%v)", d2start, d1start)
		}
		c.mustDo("POST", "/v1/resources/d1/move", map[string]any{"clear": true}, 200)
	})

	t.Run("monitor-failure-threshold", func(t *testing.T) {
		c.t = t
		c.dumpOnFailure(t, "d3")
		c.mustDo("POST", "/v1/resources", map[string]any{"name": "d3", "type": "ocf:pacemaker:Dummy", "ops": fast,
			"constraints": map[string]any{"migration_threshold": 2}}, 201)
		first := c.waitRunning("d3", 20*time.Second)
		// The "process" dies: Dummy's monitor then says not running (rc 7).
		os.Remove(filepath.Join(c.varrun[first], "Dummy-d3.state"))
		c.waitFor("d3 failed once and restarted in place", 20*time.Second, func() bool {
			ri := c.resource("d3")
			return ri.Failures[first].Count == 1 && ri.Health == "running" && slices.Equal(ri.Running, []string{first})
		})
		os.Remove(filepath.Join(c.varrun[first], "Dummy-d3.state"))
		second := c.waitRunning("d3", 20*time.Second, first)
		ri := c.resource("d3")
		if ri.Failures[first].Count != 2 || !strings.Contains(ri.Failures[first].Message, "not running (rc 7)") {
			t.Fatalf("failures: %+v", ri.Failures)
		}
		t.Logf("d3 moved from %s to %s after 2 monitor failures", first, second)
		// unfail clears the counts.
		c.mustDo("POST", "/v1/resources/d3/unfail", nil, 200)
		c.waitFor("failures cleared", 5*time.Second, func() bool { return len(c.resource("d3").Failures) == 0 })
	})

	t.Run("on-fail-stop-and-cleanup", func(t *testing.T) {
		c.t = t
		c.dumpOnFailure(t, "d5")
		c.mustDo("POST", "/v1/resources", map[string]any{"name": "d5", "type": "ocf:pacemaker:Dummy", "ops": fast, "on_fail": "stop"}, 201)
		node := c.waitRunning("d5", 20*time.Second)
		os.Remove(filepath.Join(c.varrun[node], "Dummy-d5.state"))
		var ri rm.ResourceInfo
		c.waitFor("d5 stopped after its failure (on-fail=stop)", 20*time.Second, func() bool {
			ri = c.resource("d5")
			return ri.Health == "blocked" && ri.Blocked != nil && strings.Contains(ri.Blocked.Reason, "on-fail=stop")
		})
		time.Sleep(2 * time.Second)
		if files := c.stateFiles("Dummy", "d5"); len(files) != 0 {
			t.Fatalf("d5 restarted on %v despite on-fail=stop", files)
		}
		t.Logf("d5: %s", ri.Blocked.Reason)
		// cleanup clears the failure and probes again: it starts.
		c.mustDo("POST", "/v1/resources/d5/cleanup", nil, 200)
		c.waitRunning("d5", 20*time.Second)
		c.mustDo("DELETE", "/v1/resources/d5", nil, 200)
		c.waitFor("d5 stopped after delete", 20*time.Second, func() bool { return len(c.stateFiles("Dummy", "d5")) == 0 })
	})

	t.Run("bad-agents", func(t *testing.T) {
		c.t = t
		c.dumpOnFailure(t, "bad-missing", "bad-hang")
		for _, typ := range []string{"Hang", "Code42", "Garbage"} {
			c.mustDo("POST", "/v1/resources?force=1", map[string]any{"name": "bad-" + strings.ToLower(typ), "type": "ocf:hacstest:" + typ,
				"ops": map[string]any{"start_timeout": "1s", "stop_timeout": "2s"}}, 201)
		}
		c.mustDo("POST", "/v1/resources?force=1", map[string]any{"name": "bad-missing", "type": "ocf:hacstest:Missing"}, 201)
		want := map[string]string{"bad-hang": "timed out after 1s: killed", "bad-code42": "unknown exit code 42 (not an OCF code): weird failure",
			"bad-garbage": "start: generic error (rc 1)", "bad-missing": "is not installed"}
		for name, msg := range want {
			var ri rm.ResourceInfo
			c.waitFor(name+" blocked after failing on every node", 40*time.Second, func() bool {
				ri = c.resource(name)
				return ri.Health == "blocked" && len(ri.Failures) == 3
			})
			for _, n := range nodes {
				f := ri.Failures[n]
				if !f.Fatal || f.Op != "start" || !strings.Contains(f.Message, msg) {
					t.Errorf("%s on %s: failure %+v, want a fatal start failure with %q", name, n, f, msg)
				}
			}
			if !strings.Contains(ri.Blocked.Reason, "no node can run it") {
				t.Errorf("%s blocked: %s", name, ri.Blocked.Reason)
			}
			t.Logf("%s: %s", name, ri.Blocked.Reason)
		}
		// stderr is kept, bounded and printable.
		g := c.resource("bad-garbage")
		for n, st := range g.Status {
			if len(st.Stderr) == 0 || len(st.Stderr) > 4200 || !json.Valid(mustJSONBytes(st.Stderr)) {
				t.Errorf("bad-garbage stderr on %s: %d bytes", n, len(st.Stderr))
			}
		}
		h := c.resource("bad-hang")
		if st := h.Status[nodes[0]]; !strings.Contains(st.Stderr, "starting, then hanging") {
			t.Errorf("bad-hang stderr not kept: %+v", st)
		}
		// The cluster carried on: the good ones still run, a new one starts.
		for _, r := range []string{"d1", "d2", "s1"} {
			if ri := c.resource(r); ri.Health != "running" {
				t.Errorf("%s: %s", r, ri.Health)
			}
		}
		c.mustDo("POST", "/v1/resources", map[string]any{"name": "d4", "type": "ocf:pacemaker:Dummy"}, 201)
		c.waitRunning("d4", 20*time.Second)
		// info through the CLI shows the kept output.
		apis := c.ports["n1"][0] + "," + c.ports["n2"][0]
		out := mustRun(t, hacsBin, "resource", "info", "bad-code42", "--cluster", apis, "--ca-file", caFileOf(filepath.Join(c.dir, "n1")), "--token-file", filepath.Join(c.dir, "n1", cluster.AdminTokenFile))
		if !strings.Contains(out.stdout, "weird failure") || !strings.Contains(out.stdout, "blocked") {
			t.Errorf("resource info:\n%s", out.stdout)
		}
		for name := range want {
			c.mustDo("DELETE", "/v1/resources/"+name, nil, 200)
		}
	})

	t.Run("agent-killed", func(t *testing.T) {
		c.t = t
		c.dumpOnFailure(t, "q1", "d1")
		// Both on one node: q1 may be recovered without fencing, d1 not.
		node := c.resource("d1").Running[0]
		c.mustDo("POST", "/v1/resources", map[string]any{"name": "q1", "type": "ocf:pacemaker:Dummy", "requires": "quorum", "ops": fast,
			"constraints": map[string]any{"prefer": []string{node}, "stickiness": 5000}}, 201)
		if got := c.waitRunning("q1", 20*time.Second); got != node {
			t.Fatalf("q1 on %s, want %s", got, node)
		}
		killed := time.Now()
		c.kill(node)
		moved := c.waitRunning("q1", 20*time.Second, node)
		t.Logf("q1 (requires=quorum) recovered on %s %v after %s's agent was SIGKILLed", moved, time.Since(killed).Round(time.Millisecond), node)
		// d1 requires fencing: it waits until the lost incarnation of its
		// node is confirmed fenced (here by level 0: the lease is gone and
		// the self-fence grace passed), then is recovered elsewhere.
		d1to := c.waitRunning("d1", 30*time.Second, node)
		d1at := time.Since(killed)
		var fencedAt, blockedAt, startedAt time.Time
		var out struct {
			Events []cluster.Event `json:"events"`
		}
		_, b := c.do("GET", "/v1/events?kind=fence-succeeded", nil)
		json.Unmarshal(b, &out)
		for _, e := range out.Events {
			if e.Fields["subject"] == node && e.Time.After(killed) {
				fencedAt = e.Time
			}
		}
		for _, e := range c.events("d1") {
			switch {
			case e.Kind == "resource-blocked" && strings.Contains(e.Message, "confirmed fenced") && blockedAt.IsZero() && e.Time.After(killed):
				blockedAt = e.Time
				t.Logf("d1 was blocked: %s", e.Message)
			case e.Kind == "resource-started" && e.Time.After(killed):
				startedAt = e.Time
			}
		}
		if fencedAt.IsZero() || blockedAt.IsZero() || startedAt.Before(fencedAt) {
			t.Fatalf("d1 restarted at %v; blocked at %v; %s fenced at %v: want blocked, then fenced, then started", startedAt, blockedAt, node, fencedAt)
		}
		t.Logf("d1 (requires=fencing) recovered on %s %v after the kill, once %s was confirmed fenced (%v after the kill)",
			d1to, d1at.Round(time.Millisecond), node, fencedAt.Sub(killed).Round(time.Millisecond))
		// The node comes back: its probes find the state files a SIGKILLed
		// agent left (what level-0 fencing does not cover), and stop them
		// there: each resource ends on one node.
		c.t = root
		c.startNode(node)
		c.t = t
		for _, r := range []string{"d1", "d2", "q1"} {
			c.waitFor(r+" stopped on "+node+" by the probe", 30*time.Second, func() bool {
				files := c.stateFiles("Dummy", r)
				return len(files) == 1 && files[0] != node
			})
		}
		if got := c.waitRunning("d1", 10*time.Second); got != d1to {
			t.Fatalf("d1 on %s after the restart, want %s", got, d1to)
		}
	})

	t.Run("on-fail-fence", func(t *testing.T) {
		c.t = t
		c.dumpOnFailure(t, "d6")
		c.mustDo("POST", "/v1/resources", map[string]any{"name": "d6", "type": "ocf:pacemaker:Dummy", "ops": fast, "on_fail": "fence"}, 201)
		node := c.waitRunning("d6", 20*time.Second)
		failed := time.Now()
		os.Remove(filepath.Join(c.varrun[node], "Dummy-d6.state"))
		// The node is fenced (level 0 on a node that is online: its lease is
		// revoked, so it self-fences: it stops what it runs), then d6 runs
		// elsewhere — only once n1 stopped it or was confirmed fenced.
		other := c.waitRunning("d6", 30*time.Second, node)
		var out struct {
			Events []cluster.Event `json:"events"`
		}
		_, b := c.do("GET", "/v1/events?kind=fence-started", nil)
		json.Unmarshal(b, &out)
		var fenceStarted time.Time
		for _, e := range out.Events {
			if e.Fields["subject"] == node && e.Time.After(failed) && fenceStarted.IsZero() {
				fenceStarted = e.Time
			}
		}
		var stoppedThere, startedElsewhere time.Time
		for _, e := range c.events("d6") {
			switch {
			case e.Kind == "resource-stopped" && e.Node == node && e.Time.After(failed):
				stoppedThere = e.Time
			case e.Kind == "resource-started" && e.Node == other:
				startedElsewhere = e.Time
			}
		}
		if fenceStarted.IsZero() || stoppedThere.IsZero() || startedElsewhere.Before(stoppedThere) {
			t.Fatalf("fencing of %s started %v; d6 stopped there %v, started on %s %v: want fencing, then the stop, then the start", node, fenceStarted, stoppedThere, other, startedElsewhere)
		}
		t.Logf("d6 (on-fail=fence) failed on %s: fencing started +%v, stopped there by the self-fence +%v, started on %s +%v",
			node, fenceStarted.Sub(failed).Round(time.Millisecond), stoppedThere.Sub(failed).Round(time.Millisecond), other, startedElsewhere.Sub(failed).Round(time.Millisecond))
		c.waitFor(node+" back online", 30*time.Second, func() bool {
			var m cluster.Membership
			_, b := c.do("GET", "/v1/nodes", nil)
			json.Unmarshal(b, &m)
			n, ok := m.Node(node)
			return ok && n.Online
		})
	})

}

func mustJSONBytes(s string) []byte {
	b, _ := json.Marshal(s)
	return b
}
