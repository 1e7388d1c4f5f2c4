package mirror

import (
	"bytes"
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/device"
)

// slowStore is a StateStore whose updates wait, while hold is set, until
// the context ends or release is closed (a cluster store that this node
// reaches badly).
type slowStore struct {
	*MemStore
	mu      sync.Mutex
	hold    bool
	entered chan struct{}
	release chan struct{}
}

func (s *slowStore) Update(ctx context.Context, volume string, epoch uint64, fn func(*State) error) (State, error) {
	s.mu.Lock()
	hold := s.hold
	s.mu.Unlock()
	if hold {
		select {
		case s.entered <- struct{}{}:
		default:
		}
		select {
		case <-ctx.Done():
			return State{}, ctx.Err()
		case <-s.release:
		}
	}
	return s.MemStore.Update(ctx, volume, epoch, fn)
}

// openSlowStoreMirror opens a mirror of the volume "vol" on the replicas a
// (its primary) and b over a slowStore, with a StoreTimeout of 10 s.
func openSlowStoreMirror(t *testing.T, size int64) (*memReplicas, *slowStore, *Mirror) {
	t.Helper()
	ids := []string{"a", "b"}
	reps := newMemReplicas(size, ids...)
	store := &slowStore{MemStore: NewMemStore(), entered: make(chan struct{}, 1), release: make(chan struct{})}
	_, err := Init(context.Background(), store, "vol", "a", ids)
	must(t, err)
	m := openMirror(t, store, "a", size, reps.config("a", ids...), func(c *Config) { c.StoreTimeout = 10 * time.Second })
	return reps, store, m
}

// promotionWaiting opens a mirror on a and b over a slowStore, drops b,
// makes the store slow and lets b return: its resync ends in an in-sync
// update that waits in the store until release is closed.
func promotionWaiting(t *testing.T, size int64) (*memReplicas, *slowStore, *Mirror) {
	t.Helper()
	reps, store, m := openSlowStoreMirror(t, size)
	must(t, m.WriteAt([]byte("x"), 0, false))
	// b fails and is dropped (the store answers) ...
	reps.setDown("b", true)
	reps.devs["b"].FailAll(device.ErrInjected)
	must(t, m.WriteAt([]byte("y"), 4096, false))
	if st, _ := store.Load(context.Background(), "vol"); !slices.Equal(st.InSync, []string{"a"}) {
		t.Fatalf("in sync after b failed: %v, want [a]", st.InSync)
	}
	// ... and returns while the store has become slow: its resync ends in
	// an in-sync update that waits.
	store.mu.Lock()
	store.hold = true
	store.mu.Unlock()
	reps.devs["b"].FailAll(nil)
	reps.setDown("b", false)
	select {
	case <-store.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the resync did not reach its in-sync update")
	}
	return reps, store, m
}

// TestMirrorAnswersWhileResyncWaitsForStore is the regression test of a
// finding of the fault-injection suite (issue 9; long run with seed
// 1795315269205234622, round 19, volume cv0): n2, primary at epoch 4 and
// DC, was resyncing n1; the resync's last step, the in-sync update, waited
// 10 s (StoreTimeout) for a cluster store n2 reached badly, holding the
// mirror's lock. The DC (n2 itself) had moved the volume to n1 at epoch 5,
// but n2's agent loop, blocked on that lock (Replicas, Flush), could not
// stop serving: n2's export stayed up 7.4 s after n1 served epoch 5 (its
// requests failed, the replica host having fenced epoch 4). Reading the
// mirror's state, and stopping it, must not wait for the store.
//
// Fixed: the promotion's store update runs without the mirror's lock.
func TestMirrorAnswersWhileResyncWaitsForStore(t *testing.T) {
	_, store, m := promotionWaiting(t, 8<<20)
	defer close(store.release)
	done := make(chan struct{})
	go func() { m.Replicas(); m.Status(); must(t, m.Flush()); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("the mirror's state could not be read while the resync's in-sync update waited for the store")
	}
	// Stopping it does not wait for the store either.
	closed := make(chan struct{})
	go func() { m.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(2 * time.Second):
		t.Fatal("the mirror could not be closed while the resync's in-sync update waited for the store")
	}
}

// TestWritesDuringPromotionReachTheReplica: while the in-sync update of a
// caught-up replica waits for the store, writes are acknowledged (they
// reach it too), and once the store answers it is in sync with them.
func TestWritesDuringPromotionReachTheReplica(t *testing.T) {
	const size = 8 << 20
	reps, store, m := promotionWaiting(t, size)
	p := bytes.Repeat([]byte{7}, 3*4096)
	wrote := make(chan error, 1)
	go func() { wrote <- m.WriteAt(p, 1<<20, true) }()
	select {
	case err := <-wrote:
		must(t, err)
	case <-time.After(2 * time.Second):
		t.Fatal("a write waited for the store while the resync's in-sync update did")
	}
	close(store.release)
	waitFor(t, "b in sync", func() bool { return slices.Equal(m.InSync(), []string{"a", "b"}) })
	if st, _ := store.Load(context.Background(), "vol"); !slices.Equal(st.InSync, []string{"a", "b"}) {
		t.Fatalf("store's in-sync set %v, want [a b]", st.InSync)
	}
	must(t, m.Flush())
	if !bytes.Equal(dataOf(t, reps.devs["a"].Device, size), dataOf(t, reps.devs["b"].Device, size)) {
		t.Fatal("replicas differ after the promotion")
	}
}

// TestReplicaFailingDuringPromotionLeavesTheStore: a write that fails on a
// replica whose in-sync update is waiting for the store (the store may
// list it already) is acknowledged only after the store no longer lists
// it, and the promotion then gives up: the store never lists a replica
// that lacks an acknowledged write.
func TestReplicaFailingDuringPromotionLeavesTheStore(t *testing.T) {
	const size = 8 << 20
	reps, store, m := promotionWaiting(t, size)
	reps.devs["b"].FailAll(device.ErrInjected)
	reps.setDown("b", true)
	p := bytes.Repeat([]byte{9}, 4096)
	wrote := make(chan error, 1)
	go func() { wrote <- m.WriteAt(p, 2<<20, false) }()
	select {
	case err := <-wrote:
		t.Fatalf("a write that b lacks returned (%v) while the store may still list b", err)
	case <-time.After(500 * time.Millisecond):
	}
	close(store.release)
	select {
	case err := <-wrote:
		must(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("the write did not complete once the store answered")
	}
	if st, _ := store.Load(context.Background(), "vol"); !slices.Equal(st.InSync, []string{"a"}) {
		t.Fatalf("store's in-sync set %v after b failed, want [a]", st.InSync)
	}
	// The promotion gave up: b stays out until a new resync brings it back.
	time.Sleep(200 * time.Millisecond)
	if got := m.InSync(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("mirror's in-sync set %v, want [a]", got)
	}
	if st, _ := store.Load(context.Background(), "vol"); !slices.Equal(st.InSync, []string{"a"}) {
		t.Fatalf("store's in-sync set %v, want [a]", st.InSync)
	}
	// b returns: resynced (it missed the write), then in sync again.
	reps.devs["b"].FailAll(nil)
	reps.setDown("b", false)
	waitFor(t, "b in sync", func() bool { return slices.Equal(m.InSync(), []string{"a", "b"}) })
	must(t, m.Flush())
	if !bytes.Equal(dataOf(t, reps.devs["a"].Device, size), dataOf(t, reps.devs["b"].Device, size)) {
		t.Fatal("replicas differ after b's second resync")
	}
}

// TestReplicasListedWhileDropWaitsForStore is the regression test of a
// finding of the fault-injection suite (CI short profile, seed
// 1795320872590207730, round 7, volume cv1): n2, primary at epoch 3, was
// cut off from the cluster; a write failed on n3 and the mirror's drop of
// n3, holding the mirror's lock, waited for the store (StoreTimeout). The
// agent's loop, in Replicas under its own lock, waited behind it, so n2
// did not stop serving when it lost its lease: its export stayed up 1.5 s
// after n3 served epoch 4. Listing the replicas must not wait for the
// store (and the agent cuts its exports off on losing its lease without
// its loop: agent.fenceLoop).
func TestReplicasListedWhileDropWaitsForStore(t *testing.T) {
	reps, store, m := openSlowStoreMirror(t, 8<<20)
	defer close(store.release)
	store.mu.Lock()
	store.hold = true
	store.mu.Unlock()
	reps.setDown("b", true)
	reps.devs["b"].FailAll(device.ErrInjected)
	wrote := make(chan error, 1)
	go func() { wrote <- m.WriteAt([]byte("y"), 4096, false) }()
	select {
	case <-store.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the drop of b did not reach the store")
	}
	listed := make(chan []string, 1)
	go func() { listed <- m.Replicas() }()
	select {
	case got := <-listed:
		if ids := []string{"a", "b"}; !slices.Equal(got, ids) {
			t.Fatalf("Replicas() = %v, want %v", got, ids)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Replicas waited for the store while a drop did")
	}
	select {
	case err := <-wrote:
		t.Fatalf("the write that b lacks returned (%v) before the store dropped b", err)
	default:
	}
}
