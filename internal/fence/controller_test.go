package fence

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/testlog"
	"github.com/hacs/hacs/internal/testnet"
	"github.com/hacs/hacs/internal/testnode"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hacs/hacs/internal/cluster"
)

func startNode(t testing.TB, name, join, token string) *cluster.Node {
	t.Helper()
	n, err := cluster.New(cluster.Config{DataDir: t.TempDir(), Name: name, APIAddr: "127.0.0.1:0",
		PeerListen: testnet.FreeAddr(t), ClientListen: testnet.FreeAddr(t), LeaseTTL: time.Second, EtcdUnsafeNoFsync: true,
		Logger: testlog.Logger(t), Out: io.Discard, Join: join, Token: token})
	if err != nil {
		t.Fatal(err)
	}
	testnode.Start(t, name, n)
	return n
}

func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func events(t testing.TB, n *cluster.Node, kind, node string) []cluster.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	evs, _, err := cluster.ListEvents(ctx, n.Client(), cluster.EventFilter{Kind: kind})
	if err != nil {
		t.Fatal(err)
	}
	return slices.DeleteFunc(evs, func(e cluster.Event) bool { return e.Fields["node"] != node })
}

func put(t testing.TB, n *cluster.Node, key, value string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := n.Client().Put(ctx, key, value); err != nil {
		t.Fatal(err)
	}
}

// TestControllerFencesLostNodes runs the DC's fencing on a real 3-node
// cluster (embedded etcd, leases), with a stand-in list of needs in place
// of the resource planner: fencing by lease of a node asked to fence itself
// (on-fail=fence), level fallback to the real fence_dummy after a failing
// device, exactly once per loss, and a node whose every level fails stays
// unfenced (retried with backoff) until nobody needs it any more.
func TestControllerFencesLostNodes(t *testing.T) {
	r, dir := scriptAgents(t)
	if _, err := r.Path("fence_dummy"); err != nil {
		t.Fatalf("%v: run scripts/install-deps.sh", err)
	}
	n1 := startNode(t, "c1", "", "")
	tctx, tcancel := context.WithTimeout(context.Background(), 10*time.Second)
	tok, _, err := n1.CreateJoinToken(tctx, time.Minute, 2, "test")
	tcancel()
	if err != nil {
		t.Fatal(err)
	}
	n2 := startNode(t, "c2", n1.APIAddr(), tok.String())
	n3 := startNode(t, "c3", n1.APIAddr(), tok.String())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var ctls []*Controller
	for _, n := range []*cluster.Node{n1, n2, n3} {
		c := NewController(Config{Node: n, Runner: r, Backoff: 300 * time.Millisecond, MaxBackoff: time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		go c.Run(ctx)
		ctls = append(ctls, c)
	}
	dc := ctls[0] // views are alike on every node
	// require gives the list to every controller, as the planner of
	// whichever node is the DC would (with a 1 s lease on a loaded machine
	// the DC may move during the test; only the DC acts)
	require := func(needs []Need) {
		for _, c := range ctls {
			c.Require(needs)
		}
	}
	waitFor(t, 30*time.Second, "a DC", func() bool { return n1.IsDC() || n2.IsDC() || n3.IsDC() })
	record := func(node string) Record {
		v, _ := dc.View()
		rec, _ := v.Record(node)
		return rec
	}

	// 1. on-fail=fence of an online node without levels: its lease is
	// revoked, it stops serving, and fencing is confirmed at revoke + TTL
	// + grace (if c2 is the DC, it revokes its own lease and the next DC
	// confirms).
	lease2 := n2.ServingStatus().LeaseID
	serving2 := n2.Serving()
	start := time.Now()
	require([]Need{{Node: "c2", Lease: lease2, Reason: "on-fail=fence: monitor of web failed", Resources: []string{"web"}}})
	select {
	case <-serving2.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("c2 kept serving after its lease was revoked")
	}
	stoppedAfter := time.Since(start)
	waitFor(t, 15*time.Second, "c2 fenced by lease", func() bool { v, _ := dc.View(); return v.Fenced("c2", lease2) })
	rec := record("c2")
	if rec.Method != MethodLease || rec.Level != 0 || rec.Attempts < 1 {
		t.Fatalf("record %+v", rec)
	}
	ttl := n1.Config().LeaseTTL
	if got, min := rec.Confirmed.Sub(start), ttl+revokeBound+ttl; got < min { // attempt + TTL + revocation bound + grace (= TTL)
		t.Fatalf("fencing by lease confirmed %v after it began, before attempt + TTL + revocation bound + grace (%v)", got, min)
	}
	t.Logf("c2 stopped serving %v after the request; fencing by lease confirmed after %v", stoppedAfter.Round(time.Millisecond), rec.Confirmed.Sub(start).Round(time.Millisecond))
	waitFor(t, 10*time.Second, "c2 serving again (rejoins with a new lease)", func() bool {
		return n2.IsServing() && n2.ServingStatus().LeaseID != lease2
	})
	// exactly once: asking again for the same loss does nothing
	for range 3 {
		require([]Need{{Node: "c2", Lease: lease2, Reason: "again"}})
		time.Sleep(200 * time.Millisecond)
	}
	if r := record("c2"); r.Attempts != rec.Attempts || r.State != StateFenced || !r.Confirmed.Equal(rec.Confirmed) {
		t.Fatalf("fenced twice: %+v", r)
	}
	// one attempt per DC that worked on it (more only if the DC moved)
	if n := len(events(t, n1, EventStarted, "c2")); n != rec.Attempts {
		t.Fatalf("%d fence-started events for one loss, %d attempts", n, rec.Attempts)
	}

	// 2. a lost node with levels: level 1 fails, level 2 (fence_dummy)
	// fences it; the lease alone does not count.
	status := filepath.Join(dir, "dummy.status")
	put(t, n1, DeviceKey("broken"), `{"name":"broken","agent":"fence_fail"}`)
	put(t, n1, DeviceKey("dummy"), `{"name":"dummy","agent":"fence_dummy","params":{"type":"file","status_file":"`+status+`"},"timeout":"20s"}`)
	put(t, n1, LevelsKey("c3"), `{"node":"c3","levels":[["broken"],["dummy"]]}`)
	lease3 := n3.ServingStatus().LeaseID
	n3.Stop(ctx) // lost
	// an operator fences it by hand first (hacs fence c3 --yes) ...
	put(t, n1, RequestKey("c3"), `{"node":"c3","action":"reboot","reason":"hung","by":"test","time":"2026-01-01T00:00:00Z","lease":"`+strconv.FormatInt(lease3, 10)+`"}`)
	waitFor(t, 20*time.Second, "c3 fenced by a device", func() bool { v, _ := dc.View(); return v.Fenced("c3", lease3) })
	rec = record("c3")
	if rec.Method != MethodDevice || rec.Level != 2 || !slices.Equal(rec.Devices, []string{"dummy"}) || !rec.Manual {
		t.Fatalf("record %+v", rec)
	}
	waitFor(t, 5*time.Second, "the request consumed", func() bool { v, _ := dc.View(); return len(v.Requests) == 0 })
	// ... then the planner finds it ran ip1: that loss is fenced already
	for range 3 {
		require([]Need{{Node: "c3", Lease: lease3, Reason: "it ran ip1", Resources: []string{"ip1"}}})
		time.Sleep(200 * time.Millisecond)
	}
	if r := record("c3"); r.Attempts != rec.Attempts || !r.Confirmed.Equal(rec.Confirmed) {
		t.Fatalf("fenced again: %+v", r)
	}
	if b, _ := os.ReadFile(status); strings.TrimSpace(string(b)) != "on" { // rebooted: off, then on
		t.Errorf("fence_dummy status %q after a reboot", b)
	}
	if evs := events(t, n1, EventLevelFailed, "c3"); len(evs) != 1 || evs[0].Fields["level"] != "1" || evs[0].Fields["device"] != "broken" {
		t.Errorf("fence-level-failed events %+v", evs)
	}
	waitFor(t, 5*time.Second, "fence-succeeded event", func() bool {
		evs := events(t, n1, EventSucceeded, "c3")
		return len(evs) == 1 && evs[0].Fields["level"] == "2" && evs[0].Fields["device"] == "dummy"
	})

	// the DC reports it in its metrics
	reg := prometheus.NewRegistry()
	reg.MustRegister(dc.Collector())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				key += "," + l.GetName() + "=" + l.GetValue()
			}
			got[key] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	for key, want := range map[string]float64{
		"hacs_fence_node_state,node=c3,state=fenced":                               1,
		"hacs_fence_node_state,node=c3,state=failed":                               0,
		"hacs_fence_attempts,node=c3":                                              1,
		"hacs_fence_devices":                                                       2,
		"hacs_fence_agent_runs_total,action=reboot,agent=fence_fail,result=failed": 1,
		"hacs_fence_agent_runs_total,action=reboot,agent=fence_dummy,result=ok":    1,
	} {
		if got[key] != want {
			t.Errorf("metric %s = %v, want %v (all: %v)", key, got[key], want, got)
		}
	}

	// a later fencing of c3 (another incarnation) replaces the record, and
	// the earlier loss stays fenced: the planner's need for it starts nothing
	put(t, n1, RequestKey("c3"), `{"node":"c3","action":"off","by":"test","time":"2026-01-02T00:00:00Z","lease":"12345"}`)
	waitFor(t, 20*time.Second, "c3 fenced again", func() bool { v, _ := dc.View(); return v.Fenced("c3", 12345) })
	for range 3 {
		require([]Need{{Node: "c3", Lease: lease3, Reason: "it ran ip1"}})
		time.Sleep(200 * time.Millisecond)
	}
	if r := record("c3"); r.Lease != 12345 || len(r.Earlier) != 1 || r.Earlier[0].Lease != lease3 {
		t.Fatalf("record %+v", r)
	}
	if v, _ := dc.View(); !v.Fenced("c3", lease3) {
		t.Fatal("the earlier loss is no longer fenced")
	}

	// 3. every level fails: the node stays unfenced, retried with backoff,
	// fence-failed each time; then nobody needs it: cancelled.
	put(t, n1, LevelsKey("c2"), `{"node":"c2","levels":[["broken"]]}`)
	lease2b := n2.ServingStatus().LeaseID
	require([]Need{{Node: "c2", Lease: lease2b, Reason: "on-fail=fence: stop of db failed"}})
	waitFor(t, 15*time.Second, "three failed attempts", func() bool { return record("c2").Attempts >= 3 })
	v, _ := dc.View()
	if v.Fenced("c2", lease2b) || record("c2").Lease != lease2b {
		t.Fatalf("c2 counted as fenced though every level failed: %+v", record("c2"))
	}
	if rec := record("c2"); rec.LastError == "" || !strings.Contains(rec.LastError, "Unable to connect") {
		t.Errorf("the record does not say why: %+v", rec)
	}
	if n := len(events(t, n1, EventFailed, "c2")); n < 2 {
		t.Errorf("%d fence-failed events", n)
	}
	require(nil)
	waitFor(t, 10*time.Second, "cancelled", func() bool { return record("c2").State == StateCancelled })
	attempts := record("c2").Attempts
	time.Sleep(1500 * time.Millisecond)
	if rec := record("c2"); rec.Attempts != attempts || rec.State != StateCancelled {
		t.Fatalf("retried after the need was withdrawn: %+v", rec)
	}

	// 4. on-fail=fence of the DC's own node: it does not power itself off;
	// it gives up its lease (and so the DC role), and the next DC, whose
	// planner names the same loss, fences it.
	var self *cluster.Node
	waitFor(t, 10*time.Second, "a DC", func() bool {
		for _, n := range []*cluster.Node{n1, n2} {
			if n.IsDC() {
				self = n
			}
		}
		return self != nil
	})
	leaseDC := self.ServingStatus().LeaseID
	require([]Need{{Node: self.Name(), Lease: leaseDC, Reason: "on-fail=fence on the DC"}})
	waitFor(t, 15*time.Second, self.Name()+" fenced by the next DC", func() bool { v, _ := dc.View(); return v.Fenced(self.Name(), leaseDC) })
	v, _ = dc.View()
	rec, _ = v.Record(self.Name())
	if rec.DC == self.Name() || rec.Method != MethodLease || rec.Attempts < 2 {
		t.Fatalf("record %+v", rec)
	}
	waitFor(t, 10*time.Second, self.Name()+" serving again", func() bool { return self.IsServing() && self.ServingStatus().LeaseID != leaseDC })
}
