package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/hacs/hacs/internal/agent"
	"github.com/hacs/hacs/internal/cluster"
	"github.com/hacs/hacs/internal/mirror"
	"github.com/hacs/hacs/internal/policy"
)

var update = flag.Bool("update", false, "rewrite the golden files of the CLI tests")

func TestCLIExpandNames(t *testing.T) {
	all := func() ([]string, error) { return []string{"n1", "n2", "n3"}, nil }
	good := []struct {
		spec string
		want []string
	}{
		{"node1-3,node5", []string{"node1", "node2", "node3", "node5"}},
		{"vm01-03", []string{"vm01", "vm02", "vm03"}},
		{"vm8-10", []string{"vm8", "vm9", "vm10"}},
		{"vm-1-2", []string{"vm-1", "vm-2"}},
		{"a, b ,,a", []string{"a", "b"}},
		{"node-a", []string{"node-a"}},
		{"ALL", []string{"n1", "n2", "n3"}},
		{"n2,ALL", []string{"n2", "n1", "n3"}},
		{"x7-7", []string{"x7"}},
		{"7-9", []string{"7", "8", "9"}},
	}
	for _, c := range good {
		got, err := expandNames(c.spec, all)
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("%q: %v %v, want %v", c.spec, got, err, c.want)
		}
	}
	bad := []struct{ spec, want string }{
		{"node3-1", `invalid range "node3-1": 3 is above 1`},
		{"node1-", `invalid range "node1-": the high end is missing`},
		{"vm1-2000", "at most 1000"},
		{"", "no names"},
		{" , ", "no names"},
		{"Node1", `invalid name "Node1"`},
		{"-3", `invalid name "-3"`},
		{"a b", `invalid name "a b"`},
		{"vm1-99999999999999999999", "numbers too large"},
		{strings.Repeat("x", 64), "invalid name"},
		{"x", ""}, // placeholder, see below
	}
	for _, c := range bad[:len(bad)-1] {
		_, err := expandNames(c.spec, all)
		var ue *usageError
		if err == nil || !strings.Contains(err.Error(), c.want) || !errors.As(err, &ue) {
			t.Errorf("%q: %v, want a usage error with %q", c.spec, err, c.want)
		}
	}
	if _, err := expandNames("ALL", nil); err == nil || !strings.Contains(err.Error(), "ALL is not allowed") {
		t.Errorf("ALL where not allowed: %v", err)
	}
	if _, err := expandNames("ALL", func() ([]string, error) { return nil, nil }); err == nil || !strings.Contains(err.Error(), "none") {
		t.Errorf("ALL of nothing: %v", err)
	}
}

func FuzzCLIExpandNames(f *testing.F) {
	for _, s := range []string{"node1-3,node5", "vm01-10", "ALL", "a-1-2", "node3-1", "x-", "0-0", "a,,b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		names, err := expandNames(spec, func() ([]string, error) { return []string{"n1"}, nil })
		if err != nil {
			return
		}
		if len(names) == 0 || len(names) > 1000*(strings.Count(spec, ",")+1) {
			t.Fatalf("%q: %d names", spec, len(names))
		}
		seen := map[string]bool{}
		for _, n := range names {
			if cluster.ValidName("x", n) != nil || seen[n] {
				t.Fatalf("%q: bad or repeated name %q in %v", spec, n, names)
			}
			seen[n] = true
		}
	})
}

func TestCLIVHACSArgs(t *testing.T) {
	cases := []struct {
		flags   vhacsFlags
		changed []string
		args    []string
		want    []string
		err     string
	}{
		{vhacsFlags{create: true, size: "10G", nodes: "node1,node2"}, []string{"size", "nodes"}, []string{"vm1"},
			[]string{"create", "vm1", "--size", "10G", "--nodes", "node1,node2"}, ""},
		{vhacsFlags{create: true, size: "1G", replicas: 3}, []string{"size", "replicas"}, []string{"vm1-3"},
			[]string{"create", "vm1-3", "--size", "1G", "--replicas", "3"}, ""},
		{vhacsFlags{list: true}, nil, nil, []string{"list"}, ""},
		{vhacsFlags{destroy: true}, nil, []string{"vm1"}, []string{"destroy", "vm1"}, ""},
		{vhacsFlags{info: true}, nil, []string{"vm1"}, []string{"info", "vm1"}, ""},
		{vhacsFlags{standby: true}, nil, []string{"ALL"}, []string{"standby", "ALL"}, ""},
		{vhacsFlags{active: true}, nil, []string{"vm2"}, []string{"active", "vm2"}, ""},
		{vhacsFlags{prefer: "n2,n1"}, []string{"prefers"}, []string{"vm1"}, []string{"prefer", "n2,n1", "vm1"}, ""},
		{vhacsFlags{}, nil, nil, nil, ""},
		{vhacsFlags{create: true, destroy: true}, nil, []string{"vm1"}, nil, "-c and -D exclude each other"},
		{vhacsFlags{create: true}, nil, []string{"vm1"}, nil, "-c (create) needs -s SIZE"},
		{vhacsFlags{create: true, size: "1G"}, []string{"size"}, nil, nil, "needs the volume NAMES"},
		{vhacsFlags{destroy: true, size: "1G"}, []string{"size"}, []string{"vm1"}, nil, "-s (--size) goes with -c (create), not -D"},
		{vhacsFlags{list: true, nodes: "n1"}, []string{"nodes"}, nil, nil, "-n (--nodes) goes with -c"},
		{vhacsFlags{list: true}, nil, []string{"vm1"}, nil, "-l (list) takes no names"},
		{vhacsFlags{info: true}, nil, []string{"vm1", "vm2"}, nil, `unexpected argument "vm2"`},
		{vhacsFlags{prefer: ""}, []string{"prefers"}, []string{"vm1"}, nil, "-p (prefers) needs the nodes"},
		{vhacsFlags{standby: true, active: true, list: true}, nil, nil, nil, "-l and -S and -A exclude each other"},
	}
	for _, c := range cases {
		got, err := c.flags.toArgs(c.args, func(n string) bool { return slices.Contains(c.changed, n) })
		if c.err != "" {
			var ue *usageError
			if err == nil || !strings.Contains(err.Error(), c.err) || !errors.As(err, &ue) {
				t.Errorf("%+v %v: %v, want a usage error with %q", c.flags, c.args, err, c.err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("%+v %v: %v %v, want %v", c.flags, c.args, got, err, c.want)
		}
	}
}

func TestCLIUseArgs(t *testing.T) {
	cases := []struct {
		use      string
		required []string
		optional int
		variadic bool
	}{
		{"create NAMES --size SIZE [--replicas N] [--nodes NODES]", []string{"NAMES"}, 0, false},
		{"prefer NODES NAMES", []string{"NODES", "NAMES"}, 0, false},
		{"attach NAME [--listen unix:PATH | HOST:PORT] [--fuse DIR]", []string{"NAME"}, 0, false},
		{"token --data-dir DIR", nil, 0, false},
		{"events [--follow]", nil, 0, false},
		{"cat [FILE...]", nil, 1, true},
		{"serve FILE [NAME]", []string{"FILE"}, 1, false},
	}
	for _, c := range cases {
		r, o, v := useArgs(c.use)
		if !slices.Equal(r, c.required) || o != c.optional || v != c.variadic {
			t.Errorf("%q: %v %d %v, want %v %d %v", c.use, r, o, v, c.required, c.optional, c.variadic)
		}
	}
}

func TestCLIParseSize(t *testing.T) {
	for s, want := range map[string]int64{"4096": 4096, "10G": 10 << 30, "1.5g": 3 << 29, "512K": 512 << 10, "2TiB": 2 << 40, "1MB": 1 << 20} {
		if got, err := parseSize(s); err != nil || got != want {
			t.Errorf("%q: %d %v, want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"", "1X", "G", "-1G", "0", "1e30T", "0x10", "1.5", "ten"} {
		if got, err := parseSize(s); err == nil {
			t.Errorf("%q: %d accepted", s, got)
		}
	}
}

// fakeAPI is an agent API answering from a saved cluster state and
// recording the requests that change something.
type fakeAPI struct {
	mu      sync.Mutex
	status  cluster.Status
	members cluster.Membership
	volumes []agent.VolumeInfo
	writes  []string // "METHOD PATH BODY"
	actors  []string
	srv     *httptest.Server
}

func newFakeAPI(t *testing.T, state string) *fakeAPI {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", state))
	if err != nil {
		t.Fatal(err)
	}
	var saved struct {
		Status  cluster.Status     `json:"status"`
		Nodes   cluster.Membership `json:"nodes"`
		Volumes []agent.VolumeInfo `json:"volumes"`
	}
	if err := json.Unmarshal(b, &saved); err != nil {
		t.Fatal(err)
	}
	f := &fakeAPI{status: saved.Status, members: saved.Nodes, volumes: saved.Volumes}
	// HTTPS, like a secure cluster's agents: the CLI checks the server
	// against the CA of HACS_CA_FILE and sends the token of HACS_TOKEN
	f.srv = httptest.NewTLSServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	ca := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("HACS_CA_FILE", ca)
	t.Setenv("HACS_TOKEN", "hacsapi1.test.token")
	return f
}

func (f *fakeAPI) addr() string { return strings.TrimPrefix(f.srv.URL, "https://") }

func (f *fakeAPI) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	reply := func(v any) { cluster.WriteJSON(w, 200, v) }
	switch {
	case r.Method == "GET" && r.URL.Path == "/v1/status":
		reply(f.status)
	case r.Method == "GET" && r.URL.Path == "/v1/nodes":
		reply(f.members)
	case r.Method == "GET" && r.URL.Path == "/v1/volumes":
		list := slices.Clone(f.volumes)
		for i := range list {
			list[i].Mirror = nil // only info asks the primary
		}
		reply(list)
	case r.Method == "GET" && r.URL.Path == "/v1/volumes/vm1/snapshots":
		created := time.Date(2026, 11, 22, 1, 0, 0, 0, time.UTC)
		reply([]agent.SnapshotInfo{
			{Volume: "vm1", Name: "daily-1", Created: created, By: "alice@admin (from 10.0.0.9)", Size: 10 << 30, Epoch: 3, Replicas: []string{"n1", "n2"}},
			{Volume: "vm1", Name: "pre-upgrade", Created: created.Add(time.Hour), By: "bob@admin (from 10.0.0.9)", Size: 20 << 30, Epoch: 4, Replicas: []string{"n2"}, Missing: []string{"n1"}},
		})
	case r.Method == "GET" && strings.HasPrefix(r.URL.Path, "/v1/volumes/"):
		name := strings.TrimPrefix(r.URL.Path, "/v1/volumes/")
		for _, v := range f.volumes {
			if v.Spec.Name == name {
				reply(v)
				return
			}
		}
		cluster.WriteError(w, cluster.HTTPError(404, "no volume named %q", name))
	case r.Method == "GET" && r.URL.Path == "/v1/events":
		reply(map[string]any{"events": []cluster.Event{{Time: time.Unix(1700000000, 0), Node: "n1", Kind: "node-joined", Message: "node n1 joined", Key: "k1"}}})
	case r.Method == "GET" && r.URL.Path == "/v1/resources":
		reply([]agent.ResourceInfo{
			{Spec: agent.ResourceSpec{Name: "vip", Type: "ip"}, Group: "web", Running: []string{"n1"}, Health: "running"},
			{Spec: agent.ResourceSpec{Name: "web", Type: "group", Members: []string{"volume:vm1", "vip"}}, Assigned: &agent.Assignment{Node: "n1"}, Running: []string{"n1"}, Health: "running"},
			{Spec: agent.ResourceSpec{Name: "db", Type: "ocf:heartbeat:pgsql"}, Health: "blocked", Blocked: &agent.Degraded{Reason: "no node can run it (n1: start failed there (db: not installed (rc 5)))"},
				Failures: map[string]policy.Failure{"n1": {Count: 1, Fatal: true, Op: "start"}}},
		})
	case r.Method == "GET" && strings.HasPrefix(r.URL.Path, "/v1/fence"):
		cluster.WriteError(w, cluster.HTTPError(404, "no fencing API (an agent older than it)"))
	case r.Method == "GET" && r.URL.Path == "/v1/pki/rotate":
		reply(cluster.CARotationStatus{Next: "no CA rotation was ever started"})
	case r.Method == "GET" && r.URL.Path == "/v1/token":
		cluster.WriteError(w, cluster.HTTPError(403, "the join token is served only on the agent's local API socket"))
	case r.Method == "POST" && strings.HasSuffix(r.URL.Path, "/roles"):
		b, _ := io.ReadAll(r.Body)
		f.writes = append(f.writes, r.Method+" "+r.URL.RequestURI()+" "+strings.TrimSpace(string(b)))
		f.actors = append(f.actors, r.Header.Get(cluster.ActorHeader))
		reply(map[string]any{"name": r.PathValue("name"), "roles": []string{"storage"}})
	default:
		b, _ := io.ReadAll(r.Body)
		f.writes = append(f.writes, r.Method+" "+r.URL.RequestURI()+" "+strings.TrimSpace(string(b)))
		f.actors = append(f.actors, r.Header.Get(cluster.ActorHeader))
		reply(map[string]any{})
	}
}

func (f *fakeAPI) takeWrites() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.writes
	f.writes = nil
	return w
}

type cliResult struct {
	code           int
	stdout, stderr string
}

func runCLI(args ...string) cliResult {
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return cliResult{code, out.String(), errb.String()}
}

// TestCLIAgainstSavedState runs commands against a fake agent API serving
// a saved state of a 3-node cluster (n3 offline, one volume degraded):
// the requests they send, their exit codes, and golden tables and JSON.
func TestCLIAgainstSavedState(t *testing.T) {
	api := newFakeAPI(t, "degraded.json")
	t.Setenv("HACS_CLUSTER", "127.0.0.1:1,"+api.addr()) // the first is down: the CLI goes on to the next
	displayLoc = time.UTC
	defer func() { displayLoc = time.Local }()
	timeNow = func() time.Time { return api.status.Time }
	defer func() { timeNow = time.Now }()

	// writes: the requests sent
	writes := []struct {
		args []string
		want []string
	}{
		{[]string{"storage", "-c", "vm7-8", "-s", "10G", "-n", "n1,n2"}, []string{
			`POST /v1/volumes {"name":"vm7","size":10737418240,"replicas":2,"constraints":{"prefer":["n1","n2"]}}`,
			`POST /v1/volumes {"name":"vm8","size":10737418240,"replicas":2,"constraints":{"prefer":["n1","n2"]}}`}},
		{[]string{"storage", "-D", "vm1"}, []string{`DELETE /v1/volumes/vm1 `}},
		{[]string{"storage", "-S", "ALL"}, []string{`POST /v1/volumes/vm1/standby `, `POST /v1/volumes/vm2/standby `, `POST /v1/volumes/web/standby `}},
		{[]string{"storage", "-A", "vm2"}, []string{`POST /v1/volumes/vm2/active `}},
		{[]string{"storage", "-p", "n3,n1", "vm1"}, []string{`POST /v1/volumes/vm1/prefer {"nodes":["n3","n1"]}`}},
		{[]string{"storage", "create", "db1", "--size", "1G", "--replicas", "3"}, []string{`POST /v1/volumes {"name":"db1","size":1073741824,"replicas":3}`}},
		{[]string{"volume", "resize", "vm1-2", "--size", "20G"}, []string{`POST /v1/volumes/vm1/resize {"size":21474836480}`, `POST /v1/volumes/vm2/resize {"size":21474836480}`}},
		{[]string{"storage", "resize", "vm1", "-s", "5G", "--force"}, []string{`POST /v1/volumes/vm1/resize {"size":5368709120,"force":true}`}},
		{[]string{"volume", "snapshot", "create", "vm1", "daily-2"}, []string{`POST /v1/volumes/vm1/snapshots {"name":"daily-2"}`}},
		{[]string{"volume", "snapshot", "delete", "vm1", "daily-1"}, []string{`DELETE /v1/volumes/vm1/snapshots/daily-1 `}},
		{[]string{"volume", "snapshot", "revert", "vm1", "daily-1"}, []string{`POST /v1/volumes/vm1/snapshots/daily-1/revert {}`}},
		{[]string{"volume", "snapshot", "revert", "vm1", "daily-1", "--force"}, []string{`POST /v1/volumes/vm1/snapshots/daily-1/revert {"force":true}`}},
		{[]string{"volume", "clone", "vm1", "vm1-copy"}, []string{`POST /v1/volumes/vm1/clone {"name":"vm1-copy"}`}},
		{[]string{"storage", "clone", "vm1", "vm1-old", "--snapshot", "daily-1"}, []string{`POST /v1/volumes/vm1/clone {"name":"vm1-old","snapshot":"daily-1"}`}},
		{[]string{"node", "standby", "n1-2"}, []string{`POST /v1/nodes/n1/standby {"standby":true}`, `POST /v1/nodes/n2/standby {"standby":true}`}},
		{[]string{"node", "active", "ALL"}, []string{`POST /v1/nodes/n1/standby {"standby":false}`, `POST /v1/nodes/n2/standby {"standby":false}`, `POST /v1/nodes/n3/standby {"standby":false}`}},
		{[]string{"node", "setrole", "n3", "storage"}, []string{`POST /v1/nodes/n3/roles {"add":["storage"]}`}},
		{[]string{"node", "setrole", "n3", "vhost", "--exact"}, []string{`POST /v1/nodes/n3/roles {"roles":["vhost"]}`}},
		{[]string{"node", "delrole", "n1,n3", "vhost,storage"}, []string{`POST /v1/nodes/n1/roles {"remove":["vhost","storage"]}`, `POST /v1/nodes/n3/roles {"remove":["vhost","storage"]}`}},
		{[]string{"node", "remove", "n3", "--force"}, []string{`DELETE /v1/nodes/n3?force=true `}},
		{[]string{"agent", "remove", "n3", "--api", api.addr()}, []string{`DELETE /v1/nodes/n3 `}},
		{[]string{"agent", "standby", "n2", "--off", "--api", api.addr()}, []string{`POST /v1/nodes/n2/standby {"standby":false}`}},
	}
	for _, w := range writes {
		r := runCLI(w.args...)
		if r.code != 0 {
			t.Errorf("%v: exit %d\n%s%s", w.args, r.code, r.stdout, r.stderr)
		}
		if got := api.takeWrites(); !slices.Equal(got, w.want) {
			t.Errorf("%v sent\n  %s\nwant\n  %s", w.args, strings.Join(got, "\n  "), strings.Join(w.want, "\n  "))
		}
	}
	if a := api.actors[0]; !strings.Contains(a, "@") {
		t.Errorf("actor header %q: want user@host", a)
	}

	// usage errors: exit 2, the problem named, nothing sent
	usage := []struct {
		args []string
		want string
	}{
		{[]string{"storage", "-c", "vm1", "-D"}, "-c and -D exclude each other"},
		{[]string{"storage", "-c", "vm1"}, "-c (create) needs -s SIZE"},
		{[]string{"storage", "-c", "vm1", "-s", "10Q"}, `invalid size "10Q"`},
		{[]string{"storage", "-l", "-s", "1G"}, "-s (--size) goes with -c (create)"},
		{[]string{"storage", "lsit"}, `unknown command "lsit" for "hacs storage"`},
		{[]string{"volume", "create", "vm3-1", "--size", "1G"}, `invalid range "vm3-1"`},
		{[]string{"volume", "create", "vm1", "--size", "1G", "--replicas", "x"}, `invalid argument "x"`},
		{[]string{"volume", "destroy"}, "volume destroy: missing NAMES"},
		{[]string{"node", "info", "n1", "n2"}, `node info: unexpected argument "n2"`},
		{[]string{"node", "standby", "node1-"}, `invalid range "node1-"`},
		{[]string{"node", "setrole", "n1"}, "missing ROLES"},
		{[]string{"node", "setrole", "storage", "n1"}, "the node names come first, then the roles: hacs node setrole n1 storage"},
		{[]string{"node", "setrole", "n1", "gpu"}, `unknown role "gpu"`},
		{[]string{"node", "remove", "ALL"}, "ALL is not allowed here"},
		{[]string{"node", "frob"}, `unknown command "frob" for "hacs node"`},
		{[]string{"node", "list", "--cluster", "nohost"}, `"nohost" is not HOST:PORT`},
		{[]string{"node", "list", "--cluster", api.addr(), "--data-dir", "/x"}, "--cluster and --data-dir exclude each other"},
		{[]string{"cluster", "monitor", "--interval", "1ms"}, "--interval 1ms: at least 100ms"},
		{[]string{"cluster", "status", "extra"}, `unexpected argument "extra"`},
		{[]string{"events", "--since", "yesterday"}, `--since "yesterday"`},
		{[]string{"events", "--limit", "-1"}, "--limit -1"},
		{[]string{"cluster", "token"}, "only on the agent's local API socket"},
		{[]string{"frob"}, `unknown command "frob" for "hacs"`},
		{[]string{"node", "list", "--bogus"}, "unknown flag: --bogus"},
		{[]string{"volume", "resize", "vm1"}, `required flag(s) "size" not set`},
		{[]string{"volume", "resize", "vm1", "--size", "1x"}, `invalid size "1x"`},
		{[]string{"volume", "resize", "vm1", "--size", "1001"}, "not a multiple of 4 KiB"},
		{[]string{"volume", "snapshot", "create", "vm1"}, "missing SNAPSHOT"},
		{[]string{"volume", "snapshot", "create", "vm1", "Snap!"}, `invalid name "Snap!"`},
		{[]string{"volume", "snapshot", "frob"}, `unknown command "frob"`},
		{[]string{"volume", "clone", "vm1"}, "missing NEW"},
		{[]string{"volume", "clone", "vm1", "UPPER"}, `invalid name "UPPER"`},
	}
	for _, u := range usage {
		r := runCLI(u.args...)
		if r.code != 2 || !strings.Contains(r.stderr, u.want) || strings.Contains(r.stderr, "goroutine") {
			t.Errorf("%v: exit %d, stderr %q; want exit 2 and %q", u.args, r.code, r.stderr, u.want)
		}
		if got := api.takeWrites(); len(got) > 0 {
			t.Errorf("%v changed the cluster: %v", u.args, got)
		}
	}

	// failures: exit 1
	if r := runCLI("node", "info", "n9"); r.code != 1 || !strings.Contains(r.stderr, "no node named n9") {
		t.Errorf("unknown node: %+v", r)
	}
	if r := runCLI("volume", "info", "nope"); r.code != 1 || !strings.Contains(r.stderr, `no volume named "nope"`) {
		t.Errorf("unknown volume: %+v", r)
	}
	if r := runCLI("node", "list", "--cluster", "127.0.0.1:1"); r.code != 1 || !strings.Contains(r.stderr, "no agent answered (tried 127.0.0.1:1)") {
		t.Errorf("unreachable: %+v", r)
	}

	// reads: golden tables and JSON
	for _, g := range []struct {
		golden string
		args   []string
		code   int
	}{
		{"status.txt", []string{"cluster", "status"}, 0},
		{"status.json", []string{"cluster", "status", "--json"}, 0},
		{"check.txt", []string{"cluster", "check", "--no-probe"}, 1},
		{"check.json", []string{"cluster", "check", "--no-probe", "--json"}, 1},
		{"node-list.txt", []string{"node", "list"}, 0},
		{"node-info.txt", []string{"node", "info", "n2"}, 0},
		{"storage-list.txt", []string{"storage", "-l"}, 0},
		{"events.txt", []string{"events"}, 0},
		{"monitor-once.txt", []string{"cluster", "monitor", "-1"}, 0},
		{"snapshot-list.txt", []string{"volume", "snapshot", "list", "vm1"}, 0},
		{"snapshot-list.json", []string{"storage", "snapshot", "list", "vm1", "--json"}, 0},
	} {
		r := runCLI(g.args...)
		if r.code != g.code {
			t.Errorf("%v: exit %d, want %d\n%s", g.args, r.code, g.code, r.stderr)
		}
		checkGolden(t, g.golden, r.stdout)
	}
	// JSON is the full structured data
	r := runCLI("node", "info", "n2", "--json")
	var nv nodeView
	if err := json.Unmarshal([]byte(r.stdout), &nv); err != nil || nv.Name != "n2" || len(nv.Primaries) != 2 || nv.Alive == nil {
		t.Errorf("node info --json: %v %+v", err, nv)
	}
	r = runCLI("node", "info", "n1-2", "--json")
	var nvs []nodeView
	if err := json.Unmarshal([]byte(r.stdout), &nvs); err != nil || len(nvs) != 2 {
		t.Errorf("node info n1-2 --json: %v %s", err, r.stdout)
	}
	for _, args := range [][]string{{"node", "standby", "n1", "--json"}, {"storage", "-c", "vm7-8", "-s", "1G", "--json"}, {"volume", "destroy", "vm1", "--json"}} {
		r = runCLI(args...)
		var res []result
		if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || len(res) == 0 || !res[0].OK || r.code != 0 {
			t.Errorf("%v: %v %+v", args, err, r)
		}
	}
	api.takeWrites()
	// volume info --json: name, size, epoch, primary, replicas (node,
	// state, progress) and the NBD URI
	r = runCLI("volume", "info", "vm1", "--json")
	var vi struct {
		Spec struct {
			Name string `json:"name"`
			Size int64  `json:"size"`
		} `json:"spec"`
		State struct {
			Epoch   uint64 `json:"epoch"`
			Primary string `json:"primary"`
		} `json:"state"`
		Replicas []replicaState `json:"replica_states"`
		URI      string         `json:"uri"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &vi); err != nil || vi.Spec.Name != "vm1" || vi.Spec.Size == 0 || vi.State.Epoch == 0 ||
		vi.State.Primary != "n2" || len(vi.Replicas) != 2 || vi.Replicas[1].State != "failed" || !strings.HasPrefix(vi.URI, "nbd://") {
		t.Errorf("volume info --json: %v %+v", err, vi)
	}
}

func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", "golden", name)
	if *update {
		os.MkdirAll(filepath.Dir(path), 0o755)
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./internal/cli -run CLIAgainstSavedState -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from the golden file (-update rewrites it):\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

// TestCLIUnixSocket: --data-dir talks to the agent's API socket, and
// unix:PATH endpoints mix with TCP ones in --cluster.
func TestCLIUnixSocket(t *testing.T) {
	api := newFakeAPI(t, "degraded.json")
	dir := t.TempDir()
	ln, err := net.Listen("unix", filepath.Join(dir, cluster.APISocket))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(api.serve)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	t.Setenv("HACS_CLUSTER", "")
	if r := runCLI("node", "list", "--data-dir", dir); r.code != 0 || !strings.Contains(r.stdout, "n3") {
		t.Fatalf("--data-dir: %+v", r)
	}
	if r := runCLI("cluster", "status", "--cluster", "127.0.0.1:1,unix:"+filepath.Join(dir, cluster.APISocket)); r.code != 0 || !strings.Contains(r.stdout, "as seen by n1") {
		t.Fatalf("unix: endpoint after a dead one: %+v", r)
	}
	if r := runCLI("node", "standby", "n2", "--data-dir", dir); r.code != 0 {
		t.Fatalf("standby over the socket: %+v", r)
	}
	if w := api.takeWrites(); len(w) != 1 || w[0] != `POST /v1/nodes/n2/standby {"standby":true}` {
		t.Fatalf("writes %v", w)
	}
	if r := runCLI("node", "list", "--data-dir", t.TempDir()); r.code != 1 || !strings.Contains(r.stderr, "is the agent of that --data-dir running?") {
		t.Fatalf("no agent at --data-dir: %+v", r)
	}
}

// TestCLIMonitorNotATerminal: monitor, writing to a pipe, prints the
// status once per change with a dated separator, no escape codes, and
// stops cleanly.
func TestCLIMonitorNotATerminal(t *testing.T) {
	var n int
	var mu sync.Mutex
	look := func(context.Context) (clusterView, error) {
		mu.Lock()
		defer mu.Unlock()
		n++
		v := clusterView{Cluster: "c1", AskedNode: "n1", DC: "n1", Time: time.Now(),
			Quorum: quorumView{OK: true, Serving: true, Voters: 1, VotersOnline: 1},
			Nodes:  []nodeView{{NodeInfo: cluster.NodeInfo{NodeConfig: cluster.NodeConfig{Name: "n1"}, Online: true, State: cluster.StateOnline}, DC: true}}}
		switch {
		case n == 3:
			return clusterView{}, errors.New("boom")
		case n >= 5:
			v.Nodes[0].State, v.Nodes[0].Online = cluster.StateOffline, false
		}
		v.Problems = audit(v)
		return v, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 800*time.Millisecond)
	defer cancel()
	var out bytes.Buffer
	if err := monitor(ctx, &out, false, false, 100*time.Millisecond, look); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	// ok, ok (same: not printed), error, ok again, offline, offline...
	if c := strings.Count(s, "=== "); c != 4 || strings.Contains(s, "\x1b") || !strings.Contains(s, "cannot read the cluster: boom") ||
		!strings.Contains(s, "node n1 is offline") {
		t.Fatalf("%d snapshots:\n%s", c, s)
	}
	var js bytes.Buffer
	n = 0
	ctx2, cancel2 := context.WithTimeout(context.Background(), 350*time.Millisecond)
	defer cancel2()
	monitor(ctx2, &js, false, true, 100*time.Millisecond, look)
	line, _, _ := strings.Cut(js.String(), "\n")
	var v clusterView
	if err := json.Unmarshal([]byte(line), &v); err != nil || v.Cluster != "c1" {
		t.Fatalf("monitor --json line %q: %v", line, err)
	}
}

func TestCLIAudit(t *testing.T) {
	now := time.Now()
	vi := agent.VolumeInfo{Spec: agent.Spec{Name: "v", Size: 1 << 20, Replicas: 2}, Placement: []string{"a", "b"},
		State: &mirror.State{Epoch: 3, Primary: "a", InSync: []string{"a"}}, Health: "degraded",
		Export: &agent.Export{Node: "a", Addr: "x:1", Name: "v", Epoch: 3},
		Mirror: &mirror.Status{Replicas: []mirror.ReplicaStatus{{ID: "a", State: "in-sync", Connected: true}, {ID: "b", State: "resyncing", Connected: true, ResyncDone: 1, ResyncTotal: 4}}}}
	v := clusterView{AskedNode: "a", Time: now, Quorum: quorumView{Serving: true}}
	m := cluster.Membership{Nodes: []cluster.NodeInfo{
		{NodeConfig: cluster.NodeConfig{Name: "a", Voter: true}, Online: true, State: cluster.StateOnline, Alive: &cluster.Liveness{Version: "1", Capacity: &cluster.Capacity{TotalBytes: 100, FreeBytes: 5}}},
		{NodeConfig: cluster.NodeConfig{Name: "b", Voter: true}, Online: true, State: cluster.StateOnline, Alive: &cluster.Liveness{Version: "2"}},
		{NodeConfig: cluster.NodeConfig{Name: "c", Voter: true}, State: cluster.StateOffline, Since: now.Add(-time.Minute)},
	}}
	v.build(m, []agent.VolumeInfo{vi})
	var kinds []string
	for _, p := range audit(v) {
		kinds = append(kinds, p.Kind+":"+p.Message)
	}
	want := []string{
		"no-dc:no DC (designated coordinator) is elected: nothing fails over or re-replicates",
		"storage-full:node a: storage 95% full (5 B free of 100 B)",
		"node-offline:node c is offline for 1m0s (its agent is down or cut off): 0 primaries and 0 replicas were on it",
		"version-skew:nodes run different hacs versions: 1 on a; 2 on b",
		"replica-out-of-sync:volume v: replica on b is out of sync: resyncing (25% done)",
	}
	if !slices.Equal(kinds, want) {
		t.Errorf("audit:\n  %s\nwant\n  %s", strings.Join(kinds, "\n  "), strings.Join(want, "\n  "))
	}
	if !v.Quorum.OK || v.Quorum.VotersOnline != 2 {
		t.Errorf("quorum %+v", v.Quorum)
	}
	// quorum lost, not serving
	v.Quorum.Serving = false
	v.Nodes[1].Online = false
	m.Nodes[1].Online = false
	v.build(m, nil)
	if ps := audit(v); ps[0].Kind != "no-quorum" || ps[1].Kind != "no-quorum" || v.Quorum.OK {
		t.Errorf("no quorum: %+v", ps)
	}
}

// TestCLIHelp: every command has a short description, and every command
// that does something has examples.
func TestCLIHelp(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Hidden || c.Name() == "help" || c.Name() == "completion" {
			return
		}
		if c.Short == "" {
			t.Errorf("%s: no Short", c.CommandPath())
		}
		for _, group := range []string{"cluster", "node", "storage", "volume", "events"} {
			if strings.HasPrefix(c.CommandPath(), "hacs "+group) && c.Runnable() && !c.HasSubCommands() && c.Example == "" {
				t.Errorf("%s: no Example", c.CommandPath())
			}
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(newRoot())
	r := runCLI("node", "setrole", "--help")
	if r.code != 0 || !strings.Contains(r.stdout, "Examples:") || !strings.Contains(r.stdout, "hacs node setrole node4 storage") {
		t.Errorf("node setrole --help: %+v", r)
	}
}
