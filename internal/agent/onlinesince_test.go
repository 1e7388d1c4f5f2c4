package agent

import (
	"context"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/mirror"
	"github.com/hacs/hacs/internal/policy"
)

// TestOnlineTracker: how the DC dates each node's current lease for the
// planner's failback settle time.
func TestOnlineTracker(t *testing.T) {
	t0 := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	type obs struct {
		now     int
		node    string
		lease   int64
		granted time.Time // the liveness record's started_at
		want    time.Time
	}
	tests := []struct {
		name string
		obs  []obs
	}{
		{"first seen: the lease's grant time from the store", []obs{
			{now: 100, node: "n1", lease: 7, granted: at(-3600), want: at(-3600)},
			{now: 101, node: "n1", lease: 7, granted: at(-3600), want: at(-3600)},
		}},
		{"first seen without started_at: from now (conservative)", []obs{
			{now: 100, node: "n1", lease: 7, want: at(100)},
			{now: 120, node: "n1", lease: 7, want: at(100)},
		}},
		{"first seen, the node's clock ahead: never later than now", []obs{
			{now: 100, node: "n1", lease: 7, granted: at(500), want: at(100)},
		}},
		{"a new lease (the node came back while unobserved): dated by the DC's clock", []obs{
			{now: 100, node: "n1", lease: 7, granted: at(0), want: at(0)},
			{now: 130, node: "n1", lease: 8, granted: at(50), want: at(130)}, // its clock is 80 s behind
			{now: 140, node: "n1", lease: 8, granted: at(50), want: at(130)},
		}},
		{"offline, then online again", []obs{
			{now: 100, node: "n1", lease: 7, granted: at(0), want: at(0)},
			{now: 101, node: "n1", lease: 0, want: time.Time{}},
			{now: 104, node: "n1", lease: 9, granted: at(103), want: at(104)},
			{now: 105, node: "n1", lease: 0, want: time.Time{}},
			{now: 106, node: "n1", lease: 10, granted: at(106), want: at(106)},
			{now: 200, node: "n1", lease: 10, granted: at(106), want: at(106)},
		}},
		{"first seen offline, then online: from the DC's clock", []obs{
			{now: 100, node: "n1", lease: 0, want: time.Time{}},
			{now: 103, node: "n1", lease: 5, granted: at(90), want: at(103)},
		}},
		{"nodes are independent", []obs{
			{now: 100, node: "n1", lease: 7, granted: at(0), want: at(0)},
			{now: 100, node: "n2", lease: 8, granted: at(50), want: at(50)},
			{now: 110, node: "n2", lease: 9, granted: at(105), want: at(110)},
			{now: 110, node: "n1", lease: 7, granted: at(0), want: at(0)},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var tr onlineTracker
			for i, o := range tc.obs {
				if got := tr.observe(at(o.now), o.node, o.lease, o.granted); !got.Equal(o.want) {
					t.Fatalf("observation %d (%+v): online since %v, want %v", i, o, got, o.want)
				}
			}
		})
	}
	var tr onlineTracker
	tr.observe(at(0), "gone", 3, at(-10))
	tr.forget(map[string]bool{"n1": true})
	if got := tr.observe(at(5), "gone", 3, at(-10)); !got.Equal(at(-10)) {
		t.Fatalf("a forgotten node is first seen again: %v", got)
	}
}

// TestFailbackWaitsForSettle: a volume whose preference names a node that
// has just come online moves there only once that node has been online for
// the failback settle time (the DC dates n2's lease by its liveness
// record's started_at, the first time it sees n2).
func TestFailbackWaitsForSettle(t *testing.T) {
	const settle = 5 * time.Second
	withSettle := func(c *Config) { c.Settings.FailbackSettle = policy.Duration(settle) }
	n1, a1 := startTestAgent(t, "n1", nil, nil, withSettle)
	_, a2 := startTestAgent(t, "n2", n1, nil, withSettle)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	waitFor(t, 30*time.Second, "n2 online with its replica server published", func() bool {
		info, ok := n1.Members().Node("n2")
		return ok && info.Online && info.Alive != nil && info.ReplicaAddr != "" && a1.started.Load()
	})
	info, _ := n1.Members().Node("n2")
	granted := info.Alive.StartedAt
	if err := a1.createVolume(ctx, VolumeRequest{Name: "fb", Size: 8 << 20, Replicas: 2, Policy: policy.Constraints{Prefer: []string{"n1"}}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "fb served on n1 with both replicas in sync", func() bool {
		st, ok := a1.Primaries()["fb"]
		if !ok || len(st.Replicas) != 2 || !exports(a1, "fb") {
			return false
		}
		for _, r := range st.Replicas {
			if !r.Connected || r.State != mirror.InSync.String() {
				return false
			}
		}
		return true
	})
	if _, err := a1.changeSpec(ctx, "fb", func(s *Spec) error { s.Policy.Prefer = []string{"n2"}; return nil }); err != nil {
		t.Fatal(err)
	}
	changed := time.Now()
	if changed.Sub(granted) > settle-2*time.Second {
		t.Fatalf("the setup took too long: n2 had its lease %v before the preference changed (settle %v); nothing to test", changed.Sub(granted), settle)
	}
	waitFor(t, settle+20*time.Second, "n2 exports fb", func() bool { return exports(a2, "fb") })
	moved := time.Now()
	t.Logf("n2 took its lease at %s; preference changed %v later, n2 exported fb %v after its lease (settle %v)",
		granted.Format("15:04:05.000"), changed.Sub(granted).Round(time.Millisecond), moved.Sub(granted).Round(time.Millisecond), settle)
	if moved.Sub(granted) < settle {
		t.Fatalf("fb moved to n2 %v after n2 took its lease, before the settle time %v", moved.Sub(granted), settle)
	}
}
