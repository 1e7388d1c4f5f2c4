package cluster

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/testlog"
	"github.com/hacs/hacs/internal/testnet"
	"github.com/hacs/hacs/internal/testnode"

	"github.com/hacs/hacs/internal/mirror"
)

func testConfig(t testing.TB, name string) Config {
	return Config{
		DataDir: t.TempDir(), Name: name, APIAddr: "127.0.0.1:0",
		PeerListen: testnet.FreeAddr(t), ClientListen: testnet.FreeAddr(t),
		LeaseTTL: time.Second, EtcdUnsafeNoFsync: true,
		Logger: testlog.Logger(t), Out: io.Discard, EtcdLogLevel: os.Getenv("HACS_TEST_ETCD_LOG"), Insecure: os.Getenv("HACS_TEST_INSECURE") != "",
	}
}

func startNode(t testing.TB, cfg Config) *Node {
	t.Helper()
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	testnode.Start(t, cfg.Name, n)
	return n
}

// startSoloNode starts a cluster of one voter, the node name, and returns
// the node and its configuration.
func startSoloNode(t testing.TB, name string) (*Node, Config) {
	t.Helper()
	cfg := testConfig(t, name)
	cfg.Voters = 1
	return startNode(t, cfg), cfg
}

// skipWithoutTLS skips a test of certificates when the tests run without
// TLS (HACS_TEST_INSECURE).
func skipWithoutTLS(t testing.TB) {
	t.Helper()
	if testConfig(t, "x").Insecure {
		t.Skip("no certificates without TLS")
	}
}

// adminToken is the administrator's token the cluster's creation wrote in
// dataDir.
func adminToken(t testing.TB, dataDir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestClusterNodeSingle(t *testing.T) {
	cfg := testConfig(t, "solo")
	cfg.Voters = 1
	cfg.Labels = map[string]string{"zone": "z1"}
	var mu sync.Mutex
	var servingCalls []bool
	cfg.OnServing = func(on bool, _ string) { mu.Lock(); servingCalls = append(servingCalls, on); mu.Unlock() }
	n := startNode(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	if !n.IsServing() || n.Serving().Err() != nil {
		t.Fatal("ready but not serving")
	}
	l, err := n.WaitDC(ctx)
	if err != nil || !l.IsDC || l.DC != "solo" || l.Term == 0 || l.Ctx.Err() != nil {
		t.Fatalf("leadership %+v %v", l, err)
	}
	m := n.Members()
	me, ok := m.Node("solo")
	if !ok || !me.Online || me.State != StateOnline || me.Labels["zone"] != "z1" || !me.Voter || me.Alive.Pid != os.Getpid() {
		t.Fatalf("membership %+v", m)
	}
	// records the agent fills in
	if err := n.UpdateSelf(ctx, func(c *NodeConfig) { c.ReplicaAddr = "127.0.0.1:9999" }); err != nil {
		t.Fatal(err)
	}
	if err := n.SetCapacity(ctx, Capacity{TotalBytes: 100, FreeBytes: 40}); err != nil {
		t.Fatal(err)
	}
	waitCond(t, 5*time.Second, func() bool {
		me, _ := n.Members().Node("solo")
		return me.ReplicaAddr == "127.0.0.1:9999" && me.Alive != nil && me.Alive.Capacity != nil && me.Alive.Capacity.FreeBytes == 40
	})
	// standby
	ch := n.Changes()
	if err := n.SetStandby(ctx, "solo", true); err != nil {
		t.Fatal(err)
	}
	waitCond(t, 5*time.Second, func() bool { me, _ := n.Members().Node("solo"); return me.State == StateStandby })
	select {
	case <-ch:
	default:
		t.Fatal("Changes not closed after a membership change")
	}
	if err := n.SetStandby(ctx, "nobody", true); err == nil {
		t.Fatal("standby of an unknown node accepted")
	}
	// the DC's guard holds while it is DC
	tr, err := n.Client().Txn(ctx).If(l.Guard()).Commit()
	if err != nil || !tr.Succeeded {
		t.Fatalf("DC guard: %v %v", tr, err)
	}
	// the lease-guarded volume store works while serving
	if _, err := mirror.Init(ctx, n.Volumes(), "v", "solo", []string{"solo"}); err != nil {
		t.Fatal(err)
	}
	// events
	if err := n.AppendEvent(ctx, Event{Kind: "test", Message: "hello"}); err != nil {
		t.Fatal(err)
	}
	evs, _, err := ListEvents(ctx, n.Client(), EventFilter{Kind: "test"})
	if err != nil || len(evs) != 1 || evs[0].Node != "solo" {
		t.Fatalf("events %+v %v", evs, err)
	}
	id := n.ID()
	sctx := n.Serving()

	// a clean stop ends serving and DC
	n.Stop(ctx)
	if n.Err() != nil || sctx.Err() == nil || l.Ctx.Err() == nil || n.IsDC() {
		t.Fatalf("after Stop: err %v serving %v dc %v", n.Err(), sctx.Err(), l.Ctx.Err())
	}
	mu.Lock()
	if len(servingCalls) != 2 || !servingCalls[0] || servingCalls[1] {
		t.Errorf("OnServing calls %v, want [true false]", servingCalls)
	}
	mu.Unlock()

	// restart from the same directory: same node, state kept
	cfg2 := cfg
	cfg2.Name = ""
	cfg2.PeerListen, cfg2.ClientListen = "", ""
	cfg2.OnServing = nil
	n2 := startNode(t, cfg2)
	if n2.ID() != id || n2.Name() != "solo" {
		t.Fatalf("restarted as %s/%s, was solo/%s", n2.Name(), n2.ID(), id)
	}
	if st, err := n2.Volumes().Load(ctx, "v"); err != nil || st.Epoch != 1 {
		t.Fatalf("volume state after restart: %+v %v", st, err)
	}
	me, _ = n2.Members().Node("solo")
	if me.State != StateStandby || me.ReplicaAddr != "127.0.0.1:9999" {
		t.Fatalf("after restart: %+v", me)
	}
}

func waitCond(t testing.TB, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestNodeFencing: three in-process nodes; when two stop, the third stops
// serving and coordinating, and the lease-guarded store refuses its writes.
func TestClusterNodeFencing(t *testing.T) {
	var lostAt time.Time
	var mu sync.Mutex
	c1 := testConfig(t, "f1")
	c1.OnServing = func(on bool, _ string) {
		if !on {
			mu.Lock()
			if lostAt.IsZero() {
				lostAt = time.Now()
			}
			mu.Unlock()
		}
	}
	c1.JoinTokenUses = 2
	n1 := startNode(t, c1)
	tok, err := os.ReadFile(c1.DataDir + "/join-token")
	if err != nil {
		t.Fatal(err)
	}
	var others []*Node
	for _, name := range []string{"f2", "f3"} {
		c := testConfig(t, name)
		c.Join, c.Token = n1.APIAddr(), string(tok)
		others = append(others, startNode(t, c))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l, err := n1.WaitDC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range others {
		waitCond(t, 10*time.Second, func() bool { return o.Leadership().DC == "f1" })
		if o.IsDC() {
			t.Fatalf("%s also DC", o.Name())
		}
	}
	if _, err := mirror.Init(ctx, n1.Volumes(), "v", "f1", []string{"f1", "f2"}); err != nil {
		t.Fatal(err)
	}
	sctx := n1.Serving()
	others[0].Stop(ctx)
	if !n1.IsServing() {
		t.Fatal("n1 stopped serving with 2 of 3 voters")
	}
	others[1].Stop(ctx)
	stopped := time.Now()
	select {
	case <-sctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("n1 still serving 5 s after losing its quorum")
	}
	took := time.Since(stopped)
	t.Logf("n1 stopped serving %v after losing its quorum (TTL %v)", took.Round(time.Millisecond), c1.LeaseTTL)
	waitCond(t, 5*time.Second, func() bool { return !n1.IsServing() && !n1.IsDC() })
	if l.Ctx.Err() == nil {
		t.Fatal("n1 still DC without serving")
	}
	waitCond(t, 5*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return !lostAt.IsZero() })
	_, err = n1.Volumes().Update(ctx, "v", 1, func(st *mirror.State) error { st.InSync = []string{"f1"}; return nil })
	if !errors.Is(err, ErrNotServing) {
		t.Fatalf("update without quorum: %v", err)
	}
	if st := n1.ServingStatus(); st.Serving || st.Reason == "" {
		t.Fatalf("serving status %+v", st)
	}
	// the lease counters (metrics) tell the story: renewals, a self-fence
	// (two when the first voter's stop already cost a renewal in time), a
	// DC election; the renewals sent since fail when they time out (after
	// TTL minus the safety margin)
	waitCond(t, 10*time.Second, func() bool { return n1.LeaseCounters().RenewalFailures > 0 })
	lc := n1.LeaseCounters()
	if lc.Grants < 1 || lc.Renewals < 1 || lc.SelfFences < 1 || lc.DCElections < 1 || lc.LastRenewal.IsZero() {
		t.Fatalf("lease counters %+v", lc)
	}
	t.Logf("lease counters %+v", lc)
}

// TestNodeExternal: nodes of a cluster on an external etcd (every node a
// client): the first creates the cluster record, the second joins it by
// pointing at the same store; a restart keeps the identity.
func TestClusterNodeExternal(t *testing.T) {
	e, _ := startTestEtcd(t)
	ep := e.Config().AdvertiseClientUrls[0].String()
	c1 := testConfig(t, "x1")
	c1.EtcdEndpoints = []string{ep}
	var logBuf testlog.Buffer
	c1.Logger = slog.New(slog.NewTextHandler(&logBuf, nil))
	n1 := startNode(t, c1)
	if !strings.Contains(logBuf.String(), "the link to the external etcd is NOT encrypted") {
		t.Fatalf("no warning about the plain http:// store link in the log:\n%s", logBuf.String())
	}
	c2 := testConfig(t, "x2")
	c2.EtcdEndpoints = []string{ep}
	n2 := startNode(t, c2)
	if n1.ClusterID() == "" || n1.ClusterID() != n2.ClusterID() {
		t.Fatalf("cluster ids %q and %q", n1.ClusterID(), n2.ClusterID())
	}
	// secure unless --insecure, also on a plain http:// store
	if n1.Secure() == c1.Insecure || n2.Secure() == c2.Insecure {
		t.Fatalf("secure: %v %v, insecure config %v", n1.Secure(), n2.Secure(), c1.Insecure)
	}
	waitCond(t, 10*time.Second, func() bool {
		m := n1.Members()
		return len(m.Online()) == 2
	})
	for _, ni := range n2.Members().Nodes {
		if ni.Voter {
			t.Fatalf("%s is a voter on an external store", ni.Name)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := n1.WaitDC(ctx)
	if err != nil || l.DC != "x1" {
		t.Fatalf("DC %+v %v", l, err)
	}
	id := n2.ID()
	n2.Stop(ctx)
	c2b := c2
	c2b.Name = ""
	n2b := startNode(t, c2b)
	if n2b.ID() != id {
		t.Fatalf("restarted external node has id %s, was %s", n2b.ID(), id)
	}
}
