package test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	rm "github.com/hacs/hacs/internal/agent"
	"github.com/hacs/hacs/internal/cluster"
)

// TestCLIAgainstCluster runs the real hacs binary's management commands
// against three `hacs agent` processes: volumes created with the range
// syntax and VHACS short flags, tables and JSON, cluster status and check
// (healthy: exit 0; after a SIGKILL of a node: exit 1 naming the problem),
// node standby/active and roles, the join token, events (also followed)
// and the live monitor writing to a pipe.
func TestCLIAgainstCluster(t *testing.T) {
	start := time.Now()
	c := newRMCluster(t, 3)
	t.Logf("3 agents up in %v", time.Since(start).Round(time.Millisecond))
	var eps []string
	for _, n := range []string{"n1", "n2", "n3"} {
		eps = append(eps, c.ports[n][0])
	}
	t.Setenv("HACS_CLUSTER", strings.Join(eps, ","))

	hacs := func(args ...string) result {
		t.Helper()
		return runCmdTimeout(t, 60*time.Second, hacsBin, args...)
	}
	ok := func(args ...string) result {
		t.Helper()
		r := hacs(args...)
		if r.code != 0 {
			t.Fatalf("%v", r)
		}
		return r
	}
	fails := func(code int, want string, args ...string) result {
		t.Helper()
		r := hacs(args...)
		if r.code != code || !strings.Contains(r.stderr+r.stdout, want) {
			t.Fatalf("want exit %d and %q: %v", code, want, r)
		}
		return r
	}
	volumes := func() []rm.VolumeInfo {
		t.Helper()
		var vols []rm.VolumeInfo
		if err := json.Unmarshal([]byte(ok("volume", "list", "--json").stdout), &vols); err != nil {
			t.Fatal(err)
		}
		return vols
	}
	type view struct {
		DC     string `json:"dc"`
		Quorum struct {
			OK bool `json:"ok"`
		} `json:"quorum"`
		Nodes []struct {
			Name      string   `json:"name"`
			State     string   `json:"state"`
			Roles     []string `json:"roles"`
			Primaries []string `json:"primaries"`
		} `json:"nodes"`
		Volumes []struct {
			Spec struct {
				Name string `json:"name"`
			} `json:"spec"`
			ReplicaStates []struct {
				Node, Role, State string
			} `json:"replica_states"`
		} `json:"volumes"`
		Problems []struct{ Kind, Subject, Message string } `json:"problems"`
	}
	status := func() view {
		t.Helper()
		var v view
		if err := json.Unmarshal([]byte(ok("cluster", "status", "--json").stdout), &v); err != nil {
			t.Fatal(err)
		}
		return v
	}

	// create: range syntax, and VHACS short flags
	r := ok("volume", "create", "vm1-2", "--size", "64M")
	if !strings.Contains(r.stdout, "created vm1") || !strings.Contains(r.stdout, "created vm2") {
		t.Fatalf("create: %v", r)
	}
	ok("storage", "-c", "db1", "-s", "32M", "-n", "n2,n3")
	c.waitFor("3 volumes healthy", 60*time.Second, func() bool {
		vols := volumes()
		for _, v := range vols {
			if v.Health != "ok" {
				return false
			}
		}
		return len(vols) == 3
	})

	// bad arguments: exit 2, the problem named, nothing created
	fails(2, "-c and -D exclude each other", "storage", "-c", "vm9", "-D")
	fails(2, `invalid range "vm3-1"`, "volume", "create", "vm3-1", "--size", "1G")
	fails(2, `invalid size "1Q"`, "storage", "-c", "vm9", "-s", "1Q")
	fails(2, "volume info: missing NAME", "volume", "info")
	fails(1, "no node named n9", "node", "info", "n9")
	fails(1, `no volume named "vm9"`, "storage", "-i", "vm9")
	if n := len(volumes()); n != 3 {
		t.Fatalf("%d volumes after refused commands", n)
	}

	// list and info: tables and JSON
	r = ok("storage", "-l")
	for _, want := range []string{"NAME", "db1", "vm1", "vm2", "ok", "nbd://"} {
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("storage -l lacks %q:\n%s", want, r.stdout)
		}
	}
	var db1 rm.VolumeInfo
	if err := json.Unmarshal([]byte(ok("storage", "-i", "db1", "--json").stdout), &db1); err != nil {
		t.Fatal(err)
	}
	if db1.Spec.Size != 32<<20 || !slices.Equal(db1.Spec.Policy.Prefer, []string{"n2", "n3"}) || db1.Export == nil || db1.State == nil || db1.Mirror == nil {
		t.Fatalf("storage -i db1 --json: %+v", db1)
	}
	if r := ok("volume", "info", "vm1"); !strings.Contains(r.stdout, "primary") || !strings.Contains(r.stdout, "in-sync") {
		t.Fatalf("volume info vm1:\n%s", r.stdout)
	}

	// the cluster is healthy
	r = ok("cluster", "status")
	if !strings.Contains(r.stdout, "Quorum: ok (3/3 voters online)") || !strings.Contains(r.stdout, "No problems.") {
		t.Fatalf("cluster status:\n%s", r.stdout)
	}
	v := status()
	if v.DC == "" || !v.Quorum.OK || len(v.Nodes) != 3 || len(v.Volumes) != 3 || len(v.Problems) != 0 {
		t.Fatalf("cluster status --json: %+v", v)
	}
	if r := ok("cluster", "check"); !strings.HasPrefix(r.stdout, "OK: ") {
		t.Fatalf("cluster check: %v", r)
	}
	if r := ok("cluster", "monitor", "-1"); !strings.Contains(r.stdout, "DC: "+v.DC) {
		t.Fatalf("monitor -1:\n%s", r.stdout)
	}
	r = ok("node", "list")
	for _, n := range []string{"n1", "n2", "n3"} {
		if !strings.Contains(r.stdout, n+" ") {
			t.Fatalf("node list lacks %s:\n%s", n, r.stdout)
		}
	}
	var ni struct {
		Name   string `json:"name"`
		Online bool   `json:"online"`
	}
	if err := json.Unmarshal([]byte(ok("node", "info", "n2", "--json").stdout), &ni); err != nil || ni.Name != "n2" || !ni.Online {
		t.Fatalf("node info n2 --json: %+v %v", ni, err)
	}

	// the join token, on the local socket only
	tok := ok("cluster", "token", "--data-dir", filepath.Join(c.dir, "n2"), "--cluster", "").stdout
	if strings.TrimSpace(tok) != c.token {
		t.Fatalf("cluster token %q, want %q", tok, c.token)
	}
	fails(2, "only on the agent's local API socket", "cluster", "token")
	if r := ok("agent", "status", "--data-dir", filepath.Join(c.dir, "n3"), "--cluster", ""); !strings.Contains(r.stdout, "node n3") || !strings.Contains(r.stdout, "serving: true") {
		t.Fatalf("agent status:\n%s", r.stdout)
	}

	// events, followed by a background process; the live monitor on a pipe
	follow := startProc(t, false, hacsBin, "events", "--follow", "--json", "--limit", "1", "--interval", "200ms")
	mon := startProc(t, false, hacsBin, "cluster", "monitor", "--interval", "200ms")
	// the monitor shows node in state (a line of its node table)
	monShows := func(node, state string) bool {
		out := mon.out.String()
		out = out[max(strings.LastIndex(out, "=== "), 0):] // the last snapshot
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) > 1 && f[0] == node && f[1] == state {
				return true
			}
		}
		return false
	}
	c.waitFor("the monitor's first snapshot", 10*time.Second, func() bool { return monShows("n1", "online") })

	// node standby / active, setrole / delrole
	node := "n3"
	if v.DC == node {
		node = "n2"
	}
	ok("node", "standby", node)
	c.waitFor(node+" in standby without primaries", 30*time.Second, func() bool {
		for _, n := range status().Nodes {
			if n.Name == node {
				return n.State == "standby" && len(n.Primaries) == 0
			}
		}
		return false
	})
	c.waitFor("the monitor to show "+node+" in standby", 10*time.Second, func() bool { return monShows(node, "standby") })
	ok("node", "active", "ALL")
	r = ok("node", "delrole", node, "vhost", "--json")
	if !strings.Contains(r.stdout, `"storage"`) || strings.Contains(r.stdout, `"vhost"`) {
		t.Fatalf("delrole: %s", r.stdout)
	}
	ok("node", "setrole", node, "vhost")
	c.waitFor("roles back", 10*time.Second, func() bool {
		for _, n := range status().Nodes {
			if n.Name == node {
				return slices.Equal(n.Roles, []string{"storage", "vhost"})
			}
		}
		return false
	})
	r = ok("events", "--kind", "node-roles")
	if !strings.Contains(r.stdout, "roles of node "+node+" changed from storage,vhost to storage by ") {
		t.Fatalf("role events:\n%s", r.stdout)
	}
	c.waitFor("the standby followed", 10*time.Second, func() bool {
		return strings.Contains(follow.out.String(), `"kind":"node-standby"`) && strings.Contains(follow.out.String(), `"kind":"node-roles"`)
	})
	for _, line := range strings.Split(strings.TrimSpace(follow.out.String()), "\n") {
		var e cluster.Event
		if err := json.Unmarshal([]byte(line), &e); err != nil || e.Kind == "" {
			t.Fatalf("events --follow --json line %q: %v", line, err)
		}
	}
	c.waitFor("the monitor to show "+node+" active again", 10*time.Second, func() bool { return monShows(node, "online") })
	for _, p := range []*proc{follow, mon} {
		if p.exited() {
			t.Fatalf("%s exited early: %v\n%s", p.cmdline, p.err, p.out.String())
		}
		p.stop()
		if p.err != nil {
			t.Fatalf("%s did not exit cleanly on SIGTERM: %v", p.cmdline, p.err)
		}
	}
	if out := mon.out.String(); strings.Contains(out, "\x1b[") {
		t.Fatalf("monitor on a pipe wrote escape codes:\n%s", out)
	}

	// destroy
	ok("storage", "-D", "db1")
	if n := len(volumes()); n != 2 {
		t.Fatalf("%d volumes after destroying db1", n)
	}

	// SIGKILL of a node: check fails and names it
	c.waitFor("healthy again", 30*time.Second, func() bool { return hacs("cluster", "check").code == 0 })
	c.kill(node)
	killed := time.Now()
	var last result
	c.waitFor("check to name "+node+" offline", 30*time.Second, func() bool {
		last = hacs("cluster", "check")
		return last.code == 1 && strings.Contains(last.stdout, "node "+node+" is offline")
	})
	t.Logf("check reported %s offline %v after the SIGKILL:\n%s", node, time.Since(killed).Round(time.Millisecond), last.stdout)
	if !strings.Contains(last.stderr, "problem(s) found") {
		t.Fatalf("check stderr: %q", last.stderr)
	}
	var chk struct {
		Healthy  bool                                      `json:"healthy"`
		Problems []struct{ Kind, Subject, Message string } `json:"problems"`
	}
	r = hacs("cluster", "check", "--json")
	if err := json.Unmarshal([]byte(r.stdout), &chk); err != nil || r.code != 1 || chk.Healthy ||
		!slices.ContainsFunc(chk.Problems, func(p struct{ Kind, Subject, Message string }) bool {
			return p.Kind == "node-offline" && p.Subject == node
		}) {
		t.Fatalf("check --json after the kill: %v %+v\n%v", err, chk, r)
	}
	// the other commands still answer
	ok("node", "list")
	ok("storage", "-l")
	if _, err := os.Stat(hacsBin); err != nil {
		t.Fatal(err)
	}
	t.Logf("total %v", time.Since(start).Round(time.Millisecond))
}
