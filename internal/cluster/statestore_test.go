package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/hacs/hacs/internal/mirror"
)

func TestClusterVolumeStoreBasics(t *testing.T) {
	_, cli := startTestEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := NewVolumeStore(cli)

	// no state yet: epoch 0
	st, err := s.Load(ctx, "vol1")
	if err != nil || st.Epoch != 0 || st.Primary != "" || len(st.InSync) != 0 {
		t.Fatalf("empty Load: %+v %v", st, err)
	}
	// Init goes through Update(epoch 0)
	st, err = mirror.Init(ctx, s, "vol1", "a", []string{"a", "b", "c"})
	if err != nil || st.Epoch != 1 || st.Primary != "a" {
		t.Fatalf("Init: %+v %v", st, err)
	}
	// a second Init finds epoch 1 and fails
	if _, err := mirror.Init(ctx, s, "vol1", "b", []string{"b"}); !errors.Is(err, mirror.ErrEpochChanged) {
		t.Fatalf("second Init: %v", err)
	}
	// the primary drops a replica, conditioned on its epoch
	st, err = s.Update(ctx, "vol1", 1, func(st *mirror.State) error {
		st.InSync = slices.DeleteFunc(st.InSync, func(id string) bool { return id == "c" })
		return nil
	})
	if err != nil || !slices.Equal(st.InSync, []string{"a", "b"}) || st.Epoch != 1 {
		t.Fatalf("drop c: %+v %v", st, err)
	}
	got, _ := s.Load(ctx, "vol1")
	if !slices.Equal(got.InSync, []string{"a", "b"}) {
		t.Fatalf("Load after update: %+v", got)
	}
	// takeover from the in-sync set bumps the epoch
	st, err = mirror.TakeOver(ctx, s, "vol1", "b")
	if err != nil || st.Epoch != 2 || st.Primary != "b" {
		t.Fatalf("TakeOver: %+v %v", st, err)
	}
	// a node outside the in-sync set cannot take over
	if _, err := mirror.TakeOver(ctx, s, "vol1", "c"); err == nil || errors.Is(err, mirror.ErrEpochChanged) {
		t.Fatalf("TakeOver by c: %v", err)
	}
	// the old primary, fenced at epoch 1, cannot change anything
	_, err = s.Update(ctx, "vol1", 1, func(st *mirror.State) error {
		st.InSync = []string{"a"}
		return nil
	})
	if !errors.Is(err, mirror.ErrEpochChanged) {
		t.Fatalf("update at an old epoch: %v", err)
	}
	// fn's error is returned and nothing is written
	boom := errors.New("boom")
	if _, err := s.Update(ctx, "vol1", 2, func(st *mirror.State) error { st.Primary = "x"; return boom }); !errors.Is(err, boom) {
		t.Fatalf("fn error: %v", err)
	}
	if got, _ := s.Load(ctx, "vol1"); got.Primary != "b" {
		t.Fatalf("a failed fn changed the state: %+v", got)
	}
	// fn works on a copy: changing the slice in place does not leak
	var seen []string
	s.Update(ctx, "vol1", 2, func(st *mirror.State) error {
		seen = st.InSync
		st.InSync[0] = "mutated"
		return boom
	})
	if got, _ := s.Load(ctx, "vol1"); got.InSync[0] == "mutated" || &seen[0] == &got.InSync[0] {
		t.Fatalf("fn's state aliased the stored one: %+v", got)
	}
	// List and Delete
	mirror.Init(ctx, s, "vol2", "a", []string{"a"})
	all, rev, err := s.List(ctx)
	if err != nil || len(all) != 2 || all["vol1"].Epoch != 2 || all["vol2"].Epoch != 1 || rev == 0 {
		t.Fatalf("List: %+v %d %v", all, rev, err)
	}
	if err := s.Delete(ctx, "vol2", 7); !errors.Is(err, mirror.ErrEpochChanged) {
		t.Fatalf("Delete at a wrong epoch: %v", err)
	}
	if err := s.Delete(ctx, "vol2", 1); err != nil {
		t.Fatal(err)
	}
	if st, _ := s.Load(ctx, "vol2"); st.Epoch != 0 {
		t.Fatalf("deleted volume: %+v", st)
	}
	// bad names and corrupt records
	if _, err := s.Load(ctx, "../x"); err == nil {
		t.Fatal("bad volume name accepted")
	}
	cli.Put(ctx, VolumeStateKey("bad"), "{not json")
	if _, err := s.Load(ctx, "bad"); err == nil {
		t.Fatal("corrupt state accepted")
	}
}

// TestVolumeStoreConcurrent: many writers race at the same epoch; updates
// that find the record changed are retried on the fresh state, so none is
// lost; writers at a stale epoch are all refused.
func TestClusterVolumeStoreConcurrent(t *testing.T) {
	_, cli := startTestEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s := NewVolumeStore(cli)
	if _, err := mirror.Init(ctx, s, "v", "p", nil); err != nil {
		t.Fatal(err)
	}
	const writers, each = 8, 10
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				id := fmt.Sprintf("r%d-%d", w, i)
				_, err := s.Update(ctx, "v", 1, func(st *mirror.State) error {
					st.InSync = append(st.InSync, id)
					return nil
				})
				if err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	st, _ := s.Load(ctx, "v")
	if len(st.InSync) != writers*each {
		t.Fatalf("%d of %d concurrent updates survived", len(st.InSync), writers*each)
	}

	// two would-be primaries take over concurrently from epoch 1: exactly
	// one wins, the other is fenced
	var wins, fenced int
	var mu sync.Mutex
	for _, p := range []string{"r0-0", "r1-0"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.Update(ctx, "v", 1, func(st *mirror.State) error {
				st.Primary = p
				st.Epoch++
				return nil
			})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins++
			case errors.Is(err, mirror.ErrEpochChanged):
				fenced++
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 || fenced != 1 {
		t.Fatalf("concurrent takeovers: %d won, %d fenced", wins, fenced)
	}
	if st, _ := s.Load(ctx, "v"); st.Epoch != 2 {
		t.Fatalf("epoch %d after one takeover", st.Epoch)
	}
}

// TestVolumeStoreGuard: a guard that fails (the node lost its lease) makes
// the update fail with ErrNotServing, leaving the state untouched.
func TestClusterVolumeStoreGuard(t *testing.T) {
	_, cli := startTestEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	g, err := cli.Grant(ctx, 5)
	if err != nil {
		t.Fatal(err)
	}
	cli.Put(ctx, "/lease-holder", "x", clientv3.WithLease(g.ID))
	s := NewVolumeStore(cli)
	s.guard = func() ([]clientv3.Cmp, error) {
		return []clientv3.Cmp{clientv3.Compare(clientv3.LeaseValue("/lease-holder"), "=", g.ID)}, nil
	}
	if _, err := mirror.Init(ctx, s, "v", "a", []string{"a", "b"}); err != nil {
		t.Fatal(err)
	}
	cli.Revoke(ctx, g.ID)
	_, err = s.Update(ctx, "v", 1, func(st *mirror.State) error { st.InSync = []string{"a"}; return nil })
	if !errors.Is(err, ErrNotServing) {
		t.Fatalf("update without the lease: %v", err)
	}
	if st, _ := s.Load(ctx, "v"); len(st.InSync) != 2 {
		t.Fatalf("state changed without the lease: %+v", st)
	}
	s.guard = func() ([]clientv3.Cmp, error) { return nil, ErrNotServing }
	if _, err := s.Update(ctx, "v", 1, func(*mirror.State) error { return nil }); !errors.Is(err, ErrNotServing) {
		t.Fatalf("update while not serving: %v", err)
	}
}

// TestClusterVolumeStoreUpdateIsABarrier checks what mirror.Open relies on:
// an update that changes nothing still commits a new revision, so that a
// transaction prepared from an earlier read (an update whose caller gave
// up while etcd had it) can no longer commit after it.
func TestClusterVolumeStoreUpdateIsABarrier(t *testing.T) {
	_, cli := startTestEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := NewVolumeStore(cli)
	if _, err := mirror.Init(ctx, s, "vol1", "a", []string{"a", "b"}); err != nil {
		t.Fatal(err)
	}
	_, oldRev, err := s.load(ctx, "vol1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Update(ctx, "vol1", 1, func(*mirror.State) error { return nil }); err != nil {
		t.Fatal(err)
	}
	key := VolumeStateKey("vol1")
	late, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", oldRev)).
		Then(clientv3.OpPut(key, `{"epoch":1,"primary":"a","in_sync":["a"]}`)).Commit()
	if err != nil {
		t.Fatal(err)
	}
	if late.Succeeded {
		t.Fatal("a transaction read before an update committed after it")
	}
	if st, _ := s.Load(ctx, "vol1"); !slices.Equal(st.InSync, []string{"a", "b"}) {
		t.Fatalf("in sync %v, want [a b]", st.InSync)
	}
}
