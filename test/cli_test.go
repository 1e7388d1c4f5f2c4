package test

import (
	"bytes"
	"encoding/json"
	"maps"
	"net/http"
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
	hacs, ok := clusterCLI(t, c)
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
	for _, want := range []string{"NAME", "db1", "vm1", "vm2", "ok", "nbds://"} {
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

	// a new single-use join token at each call, on the local socket only
	tok1 := strings.TrimSpace(ok("cluster", "token", "--data-dir", filepath.Join(c.dir, "n2"), "--cluster", "").stdout)
	tok2 := strings.TrimSpace(ok("cluster", "token", "--data-dir", filepath.Join(c.dir, "n2"), "--cluster", "").stdout)
	for _, tok := range []string{tok1, tok2} {
		if _, err := cluster.ParseToken(tok); err != nil {
			t.Fatalf("cluster token: %v", err)
		}
	}
	if tok1 == tok2 {
		t.Fatalf("cluster token: the same token twice (%s)", tok1)
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

// TestCLIVolumeAdmin runs resize, snapshots (create, list, delete, revert)
// and clone through the real hacs binary against three agents, checking
// the data through the NBD exports: write, snapshot, overwrite, revert, the
// old data read back on the primary and, after a SIGKILL of the primary's
// agent, on the replica that took over; a clone reads like its source. The
// API's validation (unknown fields, sizes, names, state) is checked on the
// same cluster.
func TestCLIVolumeAdmin(t *testing.T) {
	c := newRMCluster(t, 3)
	hacs, ok := clusterCLI(t, c)
	fails := func(code int, want string, args ...string) {
		t.Helper()
		r := hacs(args...)
		if r.code != code || !strings.Contains(r.stderr, want) {
			t.Fatalf("want exit %d and %q: %v", code, want, r)
		}
	}
	const MiB = 1 << 20
	pattern := func(b byte, n int) []byte { return bytes.Repeat([]byte{b, b ^ 0x5a, 'h', 'a'}, n/4) }
	read := func(v rm.VolumeInfo, off int64, n int) []byte {
		t.Helper()
		cl := c.dial(v)
		defer cl.Close()
		p := make([]byte, n)
		if err := cl.ReadAt(p, off); err != nil {
			t.Fatalf("read [%d,+%d) from %s: %v", off, n, v.Export.Node, err)
		}
		return p
	}
	write := func(v rm.VolumeInfo, off int64, p []byte) {
		t.Helper()
		cl := c.dial(v)
		defer cl.Close()
		if err := cl.WriteAt(p, off, true); err != nil {
			t.Fatal(err)
		}
	}
	healthy := func(name string, replicas int) rm.VolumeInfo {
		t.Helper()
		var v rm.VolumeInfo
		c.waitFor(name+" healthy", 60*time.Second, func() bool {
			v = c.volume(name)
			return v.Health == "ok" && v.Export != nil && len(v.State.InSync) == replicas
		})
		return v
	}

	ok("volume", "create", "av1", "--size", "16M", "--replicas", "3")
	v := healthy("av1", 3)
	a, b := pattern(0xa1, MiB), pattern(0xb2, MiB)
	write(v, 0, a)
	write(v, 12*MiB, a)

	// snapshot create / list / delete
	var s rm.SnapshotInfo
	if err := json.Unmarshal([]byte(ok("volume", "snapshot", "create", "av1", "s1", "--json").stdout), &s); err != nil {
		t.Fatal(err)
	}
	if len(s.Replicas) != 3 || s.Size != 16*MiB {
		t.Fatalf("snapshot s1: %+v", s)
	}
	write(v, 0, b)
	write(v, 12*MiB, b)
	ok("volume", "snapshot", "create", "av1", "s2")
	fails(1, `snapshot named "s2" already`, "volume", "snapshot", "create", "av1", "s2")
	fails(2, "invalid name", "volume", "snapshot", "create", "av1", "Bad/Name")
	r := ok("volume", "snapshot", "list", "av1")
	if !strings.Contains(r.stdout, "s1") || !strings.Contains(r.stdout, "s2") || !strings.Contains(r.stdout, "n1,n2,n3") {
		t.Fatalf("snapshot list: %v", r)
	}
	ok("volume", "snapshot", "delete", "av1", "s2")
	fails(1, `no snapshot named "s2"`, "volume", "snapshot", "delete", "av1", "s2")
	var list []rm.SnapshotInfo
	if err := json.Unmarshal([]byte(ok("storage", "snapshot", "list", "av1", "--json").stdout), &list); err != nil || len(list) != 1 || list[0].Name != "s1" {
		t.Fatalf("snapshots after delete: %+v %v", list, err)
	}

	// resize: grow online; shrink refused without --force, and while served
	fails(1, "discards the data past the new end", "volume", "resize", "av1", "--size", "8M")
	fails(1, "needs the volume stopped", "volume", "resize", "av1", "--size", "8M", "--force")
	fails(2, "not a multiple of 4 KiB", "volume", "resize", "av1", "--size", "1000")
	r = ok("volume", "resize", "av1", "--size", "32M")
	if !strings.Contains(r.stdout, "resized from 16.0M to 32.0M") && !strings.Contains(r.stdout, "resized from") {
		t.Fatalf("resize: %v", r)
	}
	v = healthy("av1", 3)
	if v.Spec.Size != 32*MiB {
		t.Fatalf("size after resize: %d", v.Spec.Size)
	}
	if cl := c.dial(v); cl.Size() != 32*MiB {
		t.Fatalf("export size after resize: %d", cl.Size())
	}
	if !bytes.Equal(read(v, 0, MiB), b) || !bytes.Equal(read(v, 12*MiB, MiB), b) {
		t.Fatal("data changed by the resize")
	}
	if !bytes.Equal(read(v, 16*MiB, MiB), make([]byte, MiB)) {
		t.Fatal("the grown part (where the replication metadata was) does not read as zeroes")
	}
	write(v, 20*MiB, b)

	// clone: now, and of a snapshot
	ok("volume", "clone", "av1", "av1-now")
	cn := healthy("av1-now", 3)
	if cn.Spec.Size != 32*MiB || !bytes.Equal(read(cn, 0, 32*MiB), read(v, 0, 32*MiB)) {
		t.Fatalf("clone av1-now differs from av1 (size %d)", cn.Spec.Size)
	}
	ok("volume", "clone", "av1", "av1-s1", "--snapshot", "s1")
	cs := healthy("av1-s1", 3)
	if cs.Spec.Size != 16*MiB || !bytes.Equal(read(cs, 0, MiB), a) || !bytes.Equal(read(cs, 12*MiB, MiB), a) {
		t.Fatal("clone of s1 does not read like s1")
	}
	fails(1, "exists already", "volume", "clone", "av1", "av1-now")
	if got := read(v, 0, MiB); !bytes.Equal(got, b) {
		t.Fatal("source changed by the clone")
	}

	// through an agent that is not the primary: passed on to it, with the
	// caller's actor
	other := "n1"
	if v.Export.Node == "n1" {
		other = "n2"
	}
	post := func(node, method, path string, body any) int {
		t.Helper()
		b, _ := json.Marshal(body)
		req, _ := http.NewRequest(method, c.api(node)+path, bytes.NewReader(b))
		req.Header.Set(cluster.ActorHeader, "tester@ci")
		resp, err := c.hc().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post(other, "POST", "/v1/volumes/av1/snapshots", rm.SnapshotRequest{Name: "via-other"}); code != 201 {
		t.Fatalf("snapshot through %s (primary %s): status %d", other, v.Export.Node, code)
	}
	if code := post(other, "DELETE", "/v1/volumes/av1/snapshots/via-other", nil); code != 200 {
		t.Fatalf("snapshot delete through %s: status %d", other, code)
	}
	list = nil
	if err := json.Unmarshal([]byte(ok("volume", "snapshot", "list", "av1", "--json").stdout), &list); err != nil || len(list) != 1 {
		t.Fatalf("snapshots left after clone and delete (want only s1): %+v %v", list, err)
	}

	// a stopped volume: snapshot, shrink (--force) and grow back offline
	ok("volume", "standby", "av1-s1")
	c.waitFor("av1-s1 stopped", 60*time.Second, func() bool {
		x := c.volume("av1-s1")
		return x.Export == nil && x.State != nil && x.State.Primary == ""
	})
	ok("volume", "snapshot", "create", "av1-s1", "cold")
	ok("volume", "resize", "av1-s1", "--size", "8M", "--force")
	ok("volume", "active", "av1-s1")
	cs = healthy("av1-s1", 3)
	if cs.Spec.Size != 8*MiB || c.dial(cs).Size() != 8*MiB || !bytes.Equal(read(cs, 0, MiB), a) {
		t.Fatalf("after an offline shrink: size %d", cs.Spec.Size)
	}

	// revert: refused while served; --restart stops, reverts, serves
	fails(1, "is being served", "volume", "snapshot", "revert", "av1", "s1")
	ok("volume", "snapshot", "create", "av1", "s3")
	fails(1, "discards the newer snapshots s3", "volume", "snapshot", "revert", "av1", "s1", "--restart")
	ok("volume", "active", "av1")
	r = ok("volume", "snapshot", "revert", "av1", "s1", "--restart", "--force")
	if !strings.Contains(r.stdout, "reverted to s1 on") || !strings.Contains(r.stdout, "s3") {
		t.Fatalf("revert: %v", r)
	}
	v = healthy("av1", 3)
	if !bytes.Equal(read(v, 0, MiB), a) || !bytes.Equal(read(v, 12*MiB, MiB), a) {
		t.Fatal("revert: the snapshot's data is not back on the primary")
	}
	if !bytes.Equal(read(v, 16*MiB, 16*MiB), make([]byte, 16*MiB)) {
		t.Fatal("revert: past the snapshot's end (taken at 16M) does not read as zeroes")
	}
	// ... and after failover to another replica
	c.kill(v.Export.Node)
	v2 := c.waitServed("av1", v.Export.Epoch)
	if !bytes.Equal(read(v2, 0, MiB), a) || !bytes.Equal(read(v2, 12*MiB, MiB), a) || !bytes.Equal(read(v2, 20*MiB, MiB), make([]byte, MiB)) {
		t.Fatalf("revert: the snapshot's data is not on %s after failover", v2.Export.Node)
	}

	// who did it: the actor is in the events
	var evs []struct {
		Kind   string            `json:"kind"`
		Fields map[string]string `json:"fields"`
	}
	if err := json.Unmarshal([]byte(ok("events", "--json", "--limit", "0").stdout), &evs); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, e := range evs {
		// the CLI's requests are authenticated with the admin token
		if strings.HasPrefix(e.Fields["by"], "token admin (from 127.0.0.1)") {
			seen[e.Kind] = true
		}
	}
	forwarded := false
	for _, e := range evs {
		if e.Kind == "snapshot-created" && strings.HasPrefix(e.Fields["by"], "token admin (from 127.0.0.1) via node ") {
			forwarded = true
		}
	}
	if !forwarded {
		t.Error("the snapshot passed on to the primary does not record the caller (the admin token; the X-Hacs-Actor header is not trusted from a client)")
	}
	for _, k := range []string{"volume-created", "snapshot-created", "snapshot-deleted", "volume-resized", "volume-cloned", "volume-reverted", "volume-changed"} {
		if !seen[k] {
			t.Errorf("no %s event recording the CLI's actor (seen %v)", k, seen)
		}
	}

	// API validation: 4xx with a JSON error, unknown fields refused
	for _, tc := range []struct {
		method, path string
		body         any
		code         int
	}{
		{"POST", "/v1/volumes/av1/resize", map[string]any{"size": 64 * MiB, "sise": 1}, 400},
		{"POST", "/v1/volumes/av1/resize", map[string]any{"size": 1000}, 400},
		{"POST", "/v1/volumes/av1/resize", map[string]any{"size": -4096}, 400},
		{"POST", "/v1/volumes/av1/resize", map[string]any{"size": "1G"}, 400},
		{"POST", "/v1/volumes/nope/resize", map[string]any{"size": 4096}, 404},
		{"POST", "/v1/volumes/av1/snapshots", map[string]any{"name": "UPPER"}, 400},
		{"POST", "/v1/volumes/av1/snapshots", map[string]any{"name": "ok", "extra": true}, 400},
		{"POST", "/v1/volumes/av1/snapshots/s1/revert", nil, 409},
		{"POST", "/v1/volumes/av1/snapshots/nope/revert", nil, 404},
		{"DELETE", "/v1/volumes/av1/snapshots/nope", nil, 404},
		{"POST", "/v1/volumes/av1/clone", map[string]any{"name": "-bad"}, 400},
		{"POST", "/v1/volumes/av1/clone", map[string]any{"name": "x", "snapshot": "nope"}, 404},
		{"POST", "/v1/volumes", map[string]any{"name": "v9", "size": 4096, "replica": 2}, 400},
		{"POST", "/v1/volumes/av1/prefer", map[string]any{"nodes": []string{"n1"}, "x": 1}, 400},
		// the agents' own endpoint: not for clients, even with the admin token
		{"POST", "/v1/replicas/av1", map[string]any{"op": "revert", "snapshot": "s1"}, 403},
	} {
		code, err := c.call(tc.method, tc.path, tc.body, nil)
		if err != nil || code != tc.code {
			t.Errorf("%s %s %v: status %d (want %d) %v", tc.method, tc.path, tc.body, code, tc.code, err)
		}
	}
}

// clusterCLI points the test's hacs commands at c (HACS_CLUSTER: every
// node's API; n1's credentials) and returns hacs, which runs one, and ok,
// which also fails the test unless it exits 0.
func clusterCLI(t *testing.T, c *rmCluster) (hacs, ok func(args ...string) result) {
	t.Helper()
	var eps []string
	for _, n := range slices.Sorted(maps.Keys(c.ports)) {
		eps = append(eps, c.ports[n][0])
	}
	t.Setenv("HACS_CLUSTER", strings.Join(eps, ","))
	credEnv(t, filepath.Join(c.dir, "n1"))
	hacs = func(args ...string) result {
		t.Helper()
		return runCmdTimeout(t, 60*time.Second, hacsBin, args...)
	}
	ok = func(args ...string) result {
		t.Helper()
		r := hacs(args...)
		if r.code != 0 {
			t.Fatalf("%v", r)
		}
		return r
	}
	return hacs, ok
}
