package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/testlog"
	"github.com/hacs/hacs/internal/testnet"
	"github.com/hacs/hacs/internal/testnode"

	"github.com/hacs/hacs/internal/cluster"
	"github.com/hacs/hacs/internal/device"
	"github.com/hacs/hacs/internal/mirror"
	"github.com/hacs/hacs/internal/nbd"
	"github.com/hacs/hacs/internal/policy"
	"github.com/hacs/hacs/internal/store"
)

// startTestAgent starts an in-process node (joining join's cluster, if
// given) and prepares its agent; hook, if set, is its mirrorHook. The
// agent runs until the test ends. opts, if any, change its Config.
func startTestAgent(t *testing.T, name string, join *cluster.Node, hook func(*mirror.Config), opts ...func(*Config)) (*cluster.Node, *Agent) {
	t.Helper()
	cfg := cluster.Config{
		DataDir: t.TempDir(), Name: name, APIAddr: "127.0.0.1:0",
		PeerListen: testnet.FreeAddr(t), ClientListen: testnet.FreeAddr(t),
		LeaseTTL: 2 * time.Second, EtcdUnsafeNoFsync: true,
		Logger: testlog.Logger(t), Out: io.Discard,
	}
	if join != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		tok, _, err := join.CreateJoinToken(ctx, time.Minute, 1, "test")
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		cfg.Join, cfg.Token = join.APIAddr(), tok.String()
	}
	n, err := cluster.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	testnode.Start(t, name, n)
	pool, err := store.OpenOrCreatePool(t.TempDir(), store.PoolOptions{})
	if err != nil {
		t.Fatal(err)
	}
	acfg := Config{Node: n, Pool: pool, StateDir: t.TempDir(), ReplicaListen: "127.0.0.1:0", ExportListen: "127.0.0.1:0",
		Tick: 500 * time.Millisecond, Logger: testlog.Logger(t)}
	for _, o := range opts {
		o(&acfg)
	}
	a, err := New(acfg)
	if err != nil {
		t.Fatal(err)
	}
	a.mirrorHook = hook
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Errorf("agent %s still running 30 s after its context ended", name)
		}
	})
	return n, a
}

// exports tells whether the agent exports the volume (as its primary). It
// asks the export server, not the agent (whose lock a stuck agent may
// hold).
func exports(a *Agent, name string) bool {
	return slices.Contains(a.esrv.ExportNames(), name)
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < d {
		if cond() {
			return time.Since(start)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s: not after %v", what, d)
	return 0
}

// hangingStore is a mirror's cluster store that, while hung, does not
// answer updates (as an unreachable store): they wait for their context
// (the mirror's StoreTimeout).
type hangingStore struct {
	mirror.StateStore
	mu      sync.Mutex
	hang    chan struct{}
	entered chan struct{}
}

func (s *hangingStore) setHung(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case on && s.hang == nil:
		s.hang = make(chan struct{})
	case !on && s.hang != nil:
		close(s.hang)
		s.hang = nil
	}
}

func (s *hangingStore) Update(ctx context.Context, volume string, epoch uint64, fn func(*mirror.State) error) (mirror.State, error) {
	s.mu.Lock()
	h := s.hang
	s.mu.Unlock()
	if h != nil {
		select {
		case s.entered <- struct{}{}:
		default:
		}
		select {
		case <-h:
		case <-ctx.Done():
			return mirror.State{}, ctx.Err()
		}
	}
	return s.StateStore.Update(ctx, volume, epoch, fn)
}

// TestVolumesDoNotWaitForAnotherVolumesStoreUpdate: while one volume's
// mirror waits for the cluster store to take a failed replica out of its
// in-sync set (up to StoreTimeout, holding the mirror's lock), and the
// agent has a replica change of that volume to make, the node's other
// volumes are moved, and new ones served, at once.
func TestVolumesDoNotWaitForAnotherVolumesStoreUpdate(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two in-process nodes")
	}
	hs := &hangingStore{entered: make(chan struct{}, 1)}
	var faulty atomic.Pointer[device.Faulty]
	hook := func(c *mirror.Config) {
		if c.Volume != "va" {
			return
		}
		hs.StateStore = c.Store
		c.Store = hs
		for i, r := range c.Replicas {
			if r.Local {
				continue
			}
			dial := r.Dial
			c.Replicas[i].Dial = func(ctx context.Context, epoch uint64) (device.Device, error) {
				d, err := dial(ctx, epoch)
				if err != nil {
					return nil, err
				}
				f := device.NewFaulty(d)
				faulty.Store(f)
				return f, nil
			}
		}
	}
	// n2 starts a few seconds before vb is moved to it, which the DC
	// would otherwise delay by the failback settle time (10 s, longer than
	// the limit below): this test is about one volume's store update not
	// holding up the others, so it has no settle time.
	noSettle := func(c *Config) { c.Settings.FailbackSettle = -1 }
	n1, a1 := startTestAgent(t, "n1", nil, hook, noSettle)
	_, a2 := startTestAgent(t, "n2", n1, nil, noSettle)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	waitFor(t, 30*time.Second, "n2's replica server published", func() bool {
		info, ok := n1.Members().Node("n2")
		return ok && info.ReplicaAddr != "" && a1.started.Load()
	})
	prefer1 := policy.Constraints{Prefer: []string{"n1"}}
	for _, name := range []string{"va", "vb"} {
		if err := a1.createVolume(ctx, VolumeRequest{Name: name, Size: 8 << 20, Replicas: 2, Policy: prefer1}); err != nil {
			t.Fatal(err)
		}
	}
	inSync := func(name string) bool {
		st, ok := a1.Primaries()[name]
		if !ok || len(st.Replicas) != 2 {
			return false
		}
		for _, r := range st.Replicas {
			if !r.Connected || r.State != mirror.InSync.String() {
				return false
			}
		}
		return true
	}
	waitFor(t, 30*time.Second, "va and vb served on n1 with both replicas in sync", func() bool {
		return inSync("va") && inSync("vb") && faulty.Load() != nil
	})
	m, err := a1.mirrorOf("va")
	if err != nil {
		t.Fatal(err)
	}

	// va's replica on n2 fails a write while the store hangs: the write
	// waits for the store (StoreTimeout, 10 s), holding va's mirror lock.
	hs.setHung(true)
	defer hs.setHung(false)
	faulty.Load().FailWrites(syscall.EIO)
	writeErr := make(chan error, 1)
	var writeEnd atomic.Int64
	go func() {
		err := m.WriteAt(make([]byte, 4096), 0, false)
		writeEnd.Store(time.Now().UnixNano())
		writeErr <- err
	}()
	select {
	case <-hs.entered:
	case <-time.After(15 * time.Second):
		t.Fatal("the failed write never asked the store to drop the replica")
	}
	dropStart := time.Now()
	// va gets a replica change (one replica fewer): the agent's call into
	// va's mirror waits for that lock.
	if _, err := a1.changeSpec(ctx, "va", func(s *Spec) error { s.Replicas = 1; return nil }); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the DC removes va's replica on n2", func() bool {
		v, err := a1.volume(ctx, "va")
		return err == nil && v.placement != nil && slices.Equal(v.placement.Replicas, []string{"n1"})
	})
	time.Sleep(time.Second) // the node loop reaches va's mirror

	// Meanwhile: a planned move of vb to n2, and a new volume vc on n1.
	start := time.Now()
	if _, err := a1.changeSpec(ctx, "vb", func(s *Spec) error { s.Policy.Prefer = []string{"n2"}; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := a1.createVolume(ctx, VolumeRequest{Name: "vc", Size: 8 << 20, Replicas: 2, Policy: prefer1}); err != nil {
		t.Fatal(err)
	}
	var vbStopped, vbMoved, vcServed time.Duration
	var mu sync.Mutex
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		waitFor(t, 40*time.Second, "n1 stops exporting vb", func() bool { return !exports(a1, "vb") })
		mu.Lock()
		vbStopped = time.Since(start)
		mu.Unlock()
	}()
	go func() {
		defer wg.Done()
		waitFor(t, 40*time.Second, "n2 exports vb", func() bool { return exports(a2, "vb") })
		mu.Lock()
		vbMoved = time.Since(start)
		mu.Unlock()
	}()
	go func() {
		defer wg.Done()
		waitFor(t, 40*time.Second, "n1 exports vc", func() bool { return exports(a1, "vc") })
		mu.Lock()
		vcServed = time.Since(start)
		mu.Unlock()
	}()
	wg.Wait()
	var wrote time.Duration
	if e := writeEnd.Load(); e != 0 {
		wrote = time.Unix(0, e).Sub(dropStart)
	}
	t.Logf("va's drop waiting for the store since %v before the changes; after the changes: n1 stopped exporting vb in %v, n2 exported vb in %v, n1 exported vc in %v (va's write ended after %v of the drop, 0: not yet)",
		start.Sub(dropStart).Round(time.Millisecond), vbStopped.Round(time.Millisecond), vbMoved.Round(time.Millisecond),
		vcServed.Round(time.Millisecond), wrote.Round(time.Millisecond))
	const limit = 5 * time.Second // far below StoreTimeout (10 s), with room for a loaded CI machine
	if vbStopped > limit || vbMoved > limit || vcServed > limit {
		t.Errorf("the other volumes waited for va's store update (limit %v)", limit)
	}
	if wrote != 0 {
		t.Errorf("va's write ended before the other volumes were done: the test did not overlap them")
	}
	// va's write fails once the store update gives up (never acknowledged).
	var werr error
	select {
	case werr = <-writeErr:
	case <-time.After(15 * time.Second):
		t.Fatal("va's write still waiting past StoreTimeout")
	}
	if werr == nil || !errors.Is(werr, syscall.EIO) {
		t.Fatalf("va's write: %v, want EIO (not acknowledged while the store could not drop the replica)", werr)
	}
}

// TestNewerEpochCutsTheOldPrimary: when another primary opens this node's
// replica of a volume at a newer epoch, this node's export of the older
// epoch is cut off before that open returns (so before the new primary
// can serve), even while the volume's worker is busy elsewhere; the worker
// then stops the old primary and says why.
func TestNewerEpochCutsTheOldPrimary(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an in-process node")
	}
	n1, a1 := startTestAgent(t, "n1", nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := a1.createVolume(ctx, VolumeRequest{Name: "vx", Size: 8 << 20, Replicas: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "vx served on n1", func() bool { return exports(a1, "vx") })
	epoch := a1.Primaries()["vx"].Epoch
	// A client of the export, to see it cut off.
	c, err := nbd.Dial(ctx, "tcp", a1.exportAddr, nbd.ClientOptions{Export: "vx"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The worker is kept busy (as one stuck publishing its export record
	// while the store is slow): the cut must not wait for it.
	a1.mu.Lock()
	w := a1.workers["vx"]
	a1.mu.Unlock()
	if w == nil {
		t.Fatal("vx has no worker")
	}
	w.act.Lock()
	acquired := time.Now()
	h, err := a1.host.Acquire("vx", epoch+1, mirror.ReplicaSize(8<<20))
	if err != nil {
		w.act.Unlock()
		t.Fatal(err)
	}
	returned := time.Now()
	still := exports(a1, "vx")
	w.act.Unlock()
	h.Close()
	if still {
		t.Fatalf("n1 still exports vx at epoch %d after a primary of epoch %d opened its replica", epoch, epoch+1)
	}
	if err := c.ReadAt(make([]byte, 4096), 0); err == nil {
		t.Fatal("the old primary's client could still read after the cut")
	}
	var ev cluster.Event
	waitFor(t, 10*time.Second, "vx's old primary stopped, with the reason", func() bool {
		evs, _, err := cluster.ListEvents(ctx, n1.Client(), cluster.EventFilter{Kind: "volume-stopped", Resource: "volume/vx"})
		if err != nil || len(evs) == 0 {
			return false
		}
		ev = evs[len(evs)-1]
		return true
	})
	if !strings.Contains(ev.Message, fmt.Sprintf("a newer primary opened this node's replica at epoch %d", epoch+1)) {
		t.Fatalf("stop event: %q", ev.Message)
	}
	at, err := time.Parse(time.RFC3339Nano, ev.Fields["stopped_at"])
	if err != nil || at.Before(acquired) || at.After(returned) {
		t.Fatalf("stopped_at %v (%v): want the cut, between %v and %v", ev.Fields["stopped_at"], err, acquired, returned)
	}
	t.Logf("export cut %v after the open began; %s", at.Sub(acquired), ev.Message)
}
