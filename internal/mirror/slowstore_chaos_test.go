package mirror

import (
	"context"
	"os"
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
// Known bug while this skip is here: run it with HACS_KNOWN_BUGS=1.
func TestMirrorAnswersWhileResyncWaitsForStore(t *testing.T) {
	if os.Getenv("HACS_KNOWN_BUGS") == "" {
		t.Skip("known bug found by the chaos suite (issue 9): a resync's in-sync update holds the mirror's lock while it " +
			"waits for the cluster store; set HACS_KNOWN_BUGS=1 to run this regression test")
	}
	const size = 8 << 20
	ids := []string{"a", "b"}
	reps := newMemReplicas(size, ids...)
	store := &slowStore{MemStore: NewMemStore(), entered: make(chan struct{}, 1), release: make(chan struct{})}
	defer close(store.release)
	_, err := Init(context.Background(), store, "vol", "a", ids)
	must(t, err)
	m := openMirror(t, store, "a", size, reps.config("a", ids...), func(c *Config) { c.StoreTimeout = 10 * time.Second })
	must(t, m.WriteAt([]byte("x"), 0, false))
	// b fails and is dropped (the store answers) ...
	reps.setDown("b", true)
	reps.devs["b"].FailAll(device.ErrInjected)
	must(t, m.WriteAt([]byte("y"), 4096, false))
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
	done := make(chan struct{})
	go func() { m.Replicas(); m.Status(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("the mirror's state could not be read while the resync's in-sync update waited for the store")
	}
}
