package mirror

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/device"
	"github.com/hacs/hacs/internal/nbd"
	"github.com/hacs/hacs/internal/replica"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// memReplicas builds in-memory replicas wrapped for fault injection; a
// replica whose down flag is set refuses connections.
type memReplicas struct {
	mu   sync.Mutex
	devs map[string]*device.Faulty
	down map[string]bool
}

func newMemReplicas(size int64, ids ...string) *memReplicas {
	r := &memReplicas{devs: map[string]*device.Faulty{}, down: map[string]bool{}}
	for _, id := range ids {
		r.devs[id] = device.NewFaulty(device.NewMemory(ReplicaSize(size)))
	}
	return r
}

func (r *memReplicas) setDown(id string, down bool) {
	r.mu.Lock()
	r.down[id] = down
	r.mu.Unlock()
}

func (r *memReplicas) config(self string, ids ...string) []Replica {
	var out []Replica
	for _, id := range ids {
		out = append(out, Replica{ID: id, Local: id == self, Dial: func(ctx context.Context, epoch uint64) (device.Device, error) {
			r.mu.Lock()
			defer r.mu.Unlock()
			if r.down[id] {
				return nil, fmt.Errorf("replica %s is down: %w", id, syscall.ECONNREFUSED)
			}
			return r.devs[id], nil
		}})
	}
	return out
}

// newVolume opens a mirror on replica "a" over in-memory replicas ids, all
// in sync, with a fresh in-memory store.
func newVolume(t *testing.T, size int64, ids []string, tweak func(*Config)) (*memReplicas, *MemStore, *Mirror) {
	t.Helper()
	reps := newMemReplicas(size, ids...)
	store := NewMemStore()
	_, err := Init(context.Background(), store, "vol", "a", ids)
	must(t, err)
	return reps, store, openMirror(t, store, "a", size, reps.config("a", ids...), tweak)
}

// configFor is the test configuration of the volume "vol" served by self.
func configFor(store StateStore, self string, size int64, reps []Replica, tweak func(*Config)) Config {
	cfg := Config{Volume: "vol", Self: self, Size: size, Replicas: reps, Store: store, Logger: quiet,
		Timeout: 2 * time.Second, RetryInterval: 50 * time.Millisecond, StoreTimeout: time.Second}
	if tweak != nil {
		tweak(&cfg)
	}
	return cfg
}

func openMirror(t *testing.T, store StateStore, self string, size int64, reps []Replica, tweak func(*Config)) *Mirror {
	t.Helper()
	m, err := Open(context.Background(), configFor(store, self, size, reps, tweak))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// dataOf reads the data part of a replica device.
func dataOf(t testing.TB, d device.Device, size int64) []byte {
	t.Helper()
	b := make([]byte, size)
	must(t, d.ReadAt(b, 0))
	return b
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func randomWrites(t *testing.T, d device.Device, rng *rand.Rand, n int, size int64) int64 {
	t.Helper()
	var bytesWritten int64
	for i := 0; i < n; i++ {
		l := 1 + rng.IntN(20000)
		off := rng.Int64N(size - int64(l))
		p := make([]byte, l)
		for j := range p {
			p[j] = byte(rng.Uint32())
		}
		must(t, d.WriteAt(p, off, rng.IntN(8) == 0))
		bytesWritten += int64(l)
	}
	return bytesWritten
}

func TestMirrorWritesReachEveryReplica(t *testing.T) {
	for n := 1; n <= MaxReplicas; n++ {
		t.Run(fmt.Sprintf("%d-replicas", n), func(t *testing.T) {
			const size = 16 << 20
			var ids []string
			for i := 0; i < n; i++ {
				ids = append(ids, fmt.Sprintf("n%d", i))
			}
			reps := newMemReplicas(size, ids...)
			store := NewMemStore()
			_, err := Init(context.Background(), store, "vol", "n0", ids)
			must(t, err)
			m := openMirror(t, store, "n0", size, reps.config("n0", ids...), nil)
			rng := rand.New(rand.NewPCG(uint64(n), 1))
			randomWrites(t, m, rng, 200, size)
			must(t, m.Trim(1<<20, 1<<20))
			must(t, m.WriteZeroes(3<<20, 65536, 0))
			must(t, m.Flush())
			want := dataOf(t, m, size)
			for _, id := range ids {
				if !bytes.Equal(dataOf(t, reps.devs[id], size), want) {
					t.Fatalf("replica %s differs from the volume", id)
				}
			}
			rep, err := m.Verify(context.Background(), false, nil)
			must(t, err)
			if len(rep.Differences) != 0 || rep.Bytes != size {
				t.Fatalf("verify: %+v", rep)
			}
		})
	}
}

func TestFailedReplicaIsDroppedThenResyncsOnlyDirty(t *testing.T) {
	const size = 64 << 20
	ids := []string{"a", "b", "c"}
	reps := newMemReplicas(size, ids...)
	store := NewMemStore()
	_, err := Init(context.Background(), store, "vol", "a", ids)
	must(t, err)
	var events []Event
	var evMu sync.Mutex
	m := openMirror(t, store, "a", size, reps.config("a", ids...), func(c *Config) {
		c.OnEvent = func(e Event) { evMu.Lock(); events = append(events, e); evMu.Unlock() }
	})
	rng := rand.New(rand.NewPCG(7, 7))
	randomWrites(t, m, rng, 100, size)
	must(t, m.Flush())

	// c fails: the next write drops it through the store, and succeeds.
	reps.setDown("c", true)
	reps.devs["c"].FailAll(device.ErrInjected)
	must(t, m.WriteAt([]byte("after"), 12345, false))
	st, _ := store.Load(context.Background(), "vol")
	if st.Has("c") || !st.Has("a") || !st.Has("b") {
		t.Fatalf("in-sync set after failure: %v", st.InSync)
	}
	// Writes while c is away.
	var away int64
	for i := 0; i < 50; i++ {
		p := bytes.Repeat([]byte{byte(i + 1)}, 4096)
		off := int64(i) * 1 << 20
		must(t, m.WriteAt(p, off, false))
		away += 4096
	}
	must(t, m.Flush())
	// c returns with its data intact: only what it missed is sent.
	reps.devs["c"].FailAll(nil)
	reps.setDown("c", false)
	waitFor(t, "c back in sync", func() bool { st, _ := store.Load(context.Background(), "vol"); return st.Has("c") })
	var sent int64
	for _, r := range m.Status().Replicas {
		if r.ID == "c" {
			sent = r.ResyncSent
		}
	}
	// Each write while away dirties one 64 KiB chunk; hot regions are
	// compared, not sent.
	if limit := 50 * int64(ChunkSize) * 2; sent > limit || sent == 0 {
		t.Fatalf("resync sent %d bytes for %d bytes written while away (limit %d)", sent, away, limit)
	}
	want := dataOf(t, m, size)
	for _, id := range ids {
		if !bytes.Equal(dataOf(t, reps.devs[id], size), want) {
			t.Fatalf("replica %s differs after resync", id)
		}
	}
	evMu.Lock()
	kinds := map[string]bool{}
	for _, e := range events {
		kinds[e.Kind] = true
	}
	evMu.Unlock()
	for _, k := range []string{"replica-failed", "replica-dropped", "resync-started", "resync-finished"} {
		if !kinds[k] {
			t.Errorf("no %s event", k)
		}
	}
}

func TestResyncWhileWriting(t *testing.T) {
	const size = 32 << 20
	ids := []string{"a", "b"}
	reps, store, m := newVolume(t, size, ids, func(c *Config) { c.ResyncRate = 64 << 20 })
	reps.setDown("b", true)
	reps.devs["b"].FailAll(device.ErrInjected)
	rng := rand.New(rand.NewPCG(3, 3))
	randomWrites(t, m, rng, 300, size)
	reps.devs["b"].FailAll(nil)
	reps.setDown("b", false)
	// Keep writing while b resyncs.
	deadline := time.Now().Add(15 * time.Second)
	for {
		randomWrites(t, m, rng, 20, size)
		if st, _ := store.Load(context.Background(), "vol"); st.Has("b") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("b never caught up")
		}
	}
	randomWrites(t, m, rng, 50, size)
	must(t, m.Flush())
	if !bytes.Equal(dataOf(t, reps.devs["a"], size), dataOf(t, reps.devs["b"], size)) {
		t.Fatal("replicas differ after resync under load")
	}
}

func TestWriteNotAcknowledgedWhenStoreUnreachable(t *testing.T) {
	const size = 8 << 20
	ids := []string{"a", "b"}
	reps, store, m := newVolume(t, size, ids, nil)
	must(t, m.WriteAt([]byte("x"), 0, false))
	// b fails and the store is cut off: the write must fail, b stays in
	// the in-sync set, nothing is acknowledged that b lacks.
	store.mu.Lock()
	store.Fail = errors.New("no quorum")
	store.mu.Unlock()
	reps.devs["b"].FailAll(device.ErrInjected)
	if err := m.WriteAt([]byte("y"), 0, false); err == nil {
		t.Fatal("write acknowledged although the failed replica could not be dropped")
	}
	st, _ := store.Load(context.Background(), "vol")
	if !st.Has("b") {
		t.Fatal("b left the in-sync set without a store update")
	}
	// The store returns: the next write drops b and succeeds.
	store.mu.Lock()
	store.Fail = nil
	store.mu.Unlock()
	must(t, m.WriteAt([]byte("z"), 0, false))
	if st, _ := store.Load(context.Background(), "vol"); st.Has("b") {
		t.Fatal("b still in sync")
	}
}

func TestTimeoutDropsSlowReplica(t *testing.T) {
	const size = 8 << 20
	ids := []string{"a", "b"}
	reps, store, m := newVolume(t, size, ids, func(c *Config) { c.Timeout = 200 * time.Millisecond })
	reps.devs["b"].Hang()
	reps.setDown("b", true)
	start := time.Now()
	must(t, m.WriteAt([]byte("x"), 0, false))
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("write took %v with a hung replica", el)
	}
	if st, _ := store.Load(context.Background(), "vol"); st.Has("b") {
		t.Fatal("hung replica not dropped")
	}
	reps.devs["b"].Release()
}

func TestAllReplicasFailedStalls(t *testing.T) {
	const size = 8 << 20
	ids := []string{"a", "b"}
	reps, store, m := newVolume(t, size, ids, nil)
	reps.devs["a"].FailAll(device.ErrInjected)
	reps.devs["b"].FailAll(device.ErrInjected)
	if err := m.WriteAt([]byte("x"), 0, false); !errors.Is(err, ErrNoQuorm) {
		t.Fatalf("write with every replica failing: %v", err)
	}
	if st, _ := store.Load(context.Background(), "vol"); len(st.InSync) == 0 {
		t.Fatal("in-sync set emptied")
	}
}

// nbdNode is a replica host served over NBD on a Unix socket.
type nbdNode struct {
	host *replica.Host
	srv  *nbd.Server
	sock string
}

func newNBDNode(t testing.TB, name string) *nbdNode {
	t.Helper()
	dir := t.TempDir()
	h, err := replica.NewHost(filepath.Join(dir, "state"), replica.DirOpener{Dir: filepath.Join(dir, "data")})
	must(t, err)
	srv := replica.NewServer(h, quiet)
	sock := filepath.Join(dir, name+".sock")
	ln, err := net.Listen("unix", sock)
	must(t, err)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return &nbdNode{host: h, srv: srv, sock: sock}
}

func nbdReplicas(self string, size int64, nodes map[string]*nbdNode, ids ...string) []Replica {
	var out []Replica
	for _, id := range ids {
		n := nodes[id]
		out = append(out, Replica{ID: id, Local: id == self, Dial: func(ctx context.Context, epoch uint64) (device.Device, error) {
			if id == self {
				return n.host.Acquire("vol", epoch, ReplicaSize(size))
			}
			return nbd.Dial(ctx, "unix", n.sock, nbd.ClientOptions{Export: replica.ExportName("vol", epoch, ReplicaSize(size))})
		}})
	}
	return out
}

func TestStalePrimaryIsFenced(t *testing.T) {
	const size = 8 << 20
	ids := []string{"a", "b", "c"}
	nodes := map[string]*nbdNode{}
	for _, id := range ids {
		nodes[id] = newNBDNode(t, id)
	}
	store := NewMemStore()
	_, err := Init(context.Background(), store, "vol", "a", ids)
	must(t, err)
	old := openMirror(t, store, "a", size, nbdReplicas("a", size, nodes, ids...), nil)
	must(t, old.WriteAt(bytes.Repeat([]byte{1}, 4096), 0, false))
	must(t, old.Flush())

	// b takes over (as after a failover) while a still believes it is
	// primary.
	_, err = TakeOver(context.Background(), store, "vol", "b")
	must(t, err)
	newer := openMirror(t, store, "b", size, nbdReplicas("b", size, nodes, ids...), nil)
	must(t, newer.WriteAt(bytes.Repeat([]byte{2}, 4096), 0, false))

	// The old primary's write must not land anywhere.
	err = old.WriteAt(bytes.Repeat([]byte{3}, 4096), 0, false)
	if err == nil {
		t.Fatal("stale primary's write was acknowledged")
	}
	if !old.Fenced() {
		t.Fatalf("old primary not fenced after %v", err)
	}
	must(t, newer.Flush())
	got := make([]byte, 4096)
	for _, id := range ids {
		hd, err := nodes[id].host.Acquire("vol", newer.Epoch(), 0)
		must(t, err)
		must(t, hd.ReadAt(got, 0))
		hd.Close()
		if !bytes.Equal(got, bytes.Repeat([]byte{2}, 4096)) {
			t.Fatalf("replica %s holds %x..., want the newer primary's data", id, got[:4])
		}
	}
	// An older epoch cannot even connect.
	if _, err := nodes["c"].host.Acquire("vol", old.Epoch(), 0); !errors.Is(err, replica.ErrStaleEpoch) {
		t.Fatalf("old epoch acquire: %v", err)
	}
}

func TestCrashRecoveryReconcilesHotRegions(t *testing.T) {
	const size = 32 << 20
	ids := []string{"a", "b", "c"}
	reps, store, m := newVolume(t, size, ids, nil)
	rng := rand.New(rand.NewPCG(5, 5))
	randomWrites(t, m, rng, 100, size)
	must(t, m.Flush())
	// The primary "crashes" with writes in flight: they reached some
	// replicas and not others (simulated by writing replicas directly in
	// hot regions). Nothing more is written through m.
	m.Close()
	hot := m.al.hot
	var region uint32
	for r := range hot {
		region = r
		break
	}
	off := int64(region)*RegionSize + 8192
	reps.devs["a"].WriteAt(bytes.Repeat([]byte{0xaa}, 5000), off, false)
	reps.devs["c"].WriteAt(bytes.Repeat([]byte{0xcc}, 3000), off+100000, false)

	// b takes over: after Open, all replicas are identical.
	_, err := TakeOver(context.Background(), store, "vol", "b")
	must(t, err)
	nm := openMirror(t, store, "b", size, reps.config("b", ids...), nil)
	want := dataOf(t, reps.devs["b"], size)
	for _, id := range ids {
		if !bytes.Equal(dataOf(t, reps.devs[id], size), want) {
			t.Fatalf("replica %s differs after takeover", id)
		}
	}
	rep, err := nm.Verify(context.Background(), false, nil)
	must(t, err)
	if len(rep.Differences) != 0 {
		t.Fatalf("verify after takeover: %+v", rep.Differences)
	}
}

func TestVerifyFindsAndRepairs(t *testing.T) {
	const size = 8 << 20
	ids := []string{"a", "b"}
	reps, _, m := newVolume(t, size, ids, nil)
	must(t, m.WriteAt(bytes.Repeat([]byte{9}, 1<<20), 0, false))
	// Silent corruption on b.
	reps.devs["b"].WriteAt([]byte("bitrot"), 70000, false)
	rep, err := m.Verify(context.Background(), false, nil)
	must(t, err)
	if len(rep.Differences) != 1 || rep.Differences[0].Replica != "b" || rep.Differences[0].Offset != 65536 {
		t.Fatalf("differences %+v", rep.Differences)
	}
	rep, err = m.Verify(context.Background(), true, nil)
	must(t, err)
	if rep.Repaired != ChunkSize {
		t.Fatalf("repaired %d", rep.Repaired)
	}
	rep, err = m.Verify(context.Background(), false, nil)
	must(t, err)
	if len(rep.Differences) != 0 {
		t.Fatal("difference left after repair")
	}
}

func TestUnknownReplicaGetsFullCompare(t *testing.T) {
	const size = 16 << 20
	reps := newMemReplicas(size, "a", "b")
	store := NewMemStore()
	// Only a is in sync; b is new: its history is unknown.
	_, err := Init(context.Background(), store, "vol", "a", []string{"a"})
	must(t, err)
	m := openMirror(t, store, "a", size, reps.config("a", "a", "b"), nil)
	waitFor(t, "b in sync", func() bool { st, _ := store.Load(context.Background(), "vol"); return st.Has("b") })
	// Now a has data, b gets wiped and a new mirror learns nothing of b.
	must(t, m.WriteAt(bytes.Repeat([]byte{5}, 2<<20), 4<<20, false))
	must(t, m.Flush())
	if !bytes.Equal(dataOf(t, reps.devs["a"], size), dataOf(t, reps.devs["b"], size)) {
		t.Fatal("replicas differ")
	}
	var sent int64
	for _, r := range m.Status().Replicas {
		if r.ID == "b" {
			sent = r.ResyncSent
		}
	}
	if sent != 0 {
		t.Fatalf("empty volume resync sent %d bytes (holes must not be sent)", sent)
	}
}

func TestMetaRoundTrip(t *testing.T) {
	m := &meta{Seq: 9, Epoch: 3, Size: 100 << 20, AL: []uint32{0, 5, 24}, Dirty: map[string][]uint32{"b": {1, 2}, "c": {}}}
	b, err := m.encode(m.Size)
	must(t, err)
	got, err := decodeMeta(b)
	must(t, err)
	if fmt.Sprint(got) != fmt.Sprint(m) {
		t.Fatalf("got %+v want %+v", got, m)
	}
	b[66] ^= 1 // inside the activity log
	if _, err := decodeMeta(b); err == nil {
		t.Fatal("corrupt record accepted")
	}
}

func TestReplicaDiskFullIsDroppedAndVolumeKeepsServing(t *testing.T) {
	const size = 8 << 20
	ids := []string{"a", "b", "c"}
	var mu sync.Mutex
	var msgs []string
	reps, store, m := newVolume(t, size, ids, func(c *Config) {
		c.OnEvent = func(e Event) { mu.Lock(); msgs = append(msgs, e.Kind+" "+e.Replica+": "+e.Message); mu.Unlock() }
	})
	// The primary's own disk fills up: it leaves the in-sync set and the
	// volume goes on serving reads and writes from b and c.
	reps.devs["a"].FailWrites(fmt.Errorf("pool full: %w", syscall.ENOSPC))
	p := bytes.Repeat([]byte{4}, 8192)
	must(t, m.WriteAt(p, 4096, false))
	st, _ := store.Load(context.Background(), "vol")
	if st.Has("a") || !st.Has("b") || !st.Has("c") {
		t.Fatalf("in-sync set %v", st.InSync)
	}
	got := make([]byte, 8192)
	must(t, m.ReadAt(got, 4096))
	if !bytes.Equal(got, p) {
		t.Fatal("read after local disk full returned wrong data")
	}
	mu.Lock()
	found := false
	for _, s := range msgs {
		if strings.Contains(s, "replica-failed a") && strings.Contains(s, "pool full") {
			found = true
		}
	}
	mu.Unlock()
	if !found {
		t.Fatalf("no event names the replica and the cause: %q", msgs)
	}
	// Space returns: a resyncs and rejoins.
	reps.devs["a"].FailWrites(nil)
	waitFor(t, "a back in sync", func() bool { st, _ := store.Load(context.Background(), "vol"); return st.Has("a") })
	if !bytes.Equal(dataOf(t, reps.devs["a"], size), dataOf(t, reps.devs["b"], size)) {
		t.Fatal("a differs after its disk had space again")
	}
}

func TestAddAndRemoveReplica(t *testing.T) {
	const size = 16 << 20
	reps := newMemReplicas(size, "a", "b", "c")
	store := NewMemStore()
	_, err := Init(context.Background(), store, "vol", "a", []string{"a", "b"})
	must(t, err)
	all := reps.config("a", "a", "b", "c")
	m := openMirror(t, store, "a", size, all[:2], nil)
	rng := rand.New(rand.NewPCG(11, 11))
	randomWrites(t, m, rng, 100, size)
	// Re-replication: c joins, is compared in full, and enters the set.
	must(t, m.AddReplica(all[2]))
	if err := m.AddReplica(all[2]); err == nil {
		t.Fatal("adding c twice succeeded")
	}
	waitFor(t, "c in sync", func() bool { st, _ := store.Load(context.Background(), "vol"); return st.Has("c") })
	must(t, m.Flush())
	want := dataOf(t, m, size)
	if !bytes.Equal(dataOf(t, reps.devs["c"], size), want) {
		t.Fatal("added replica differs")
	}
	// b is removed: it leaves the in-sync set; writes no longer reach it.
	must(t, m.RemoveReplica("b"))
	must(t, m.RemoveReplica("b")) // idempotent
	if st, _ := store.Load(context.Background(), "vol"); st.Has("b") || len(st.InSync) != 2 {
		t.Fatalf("in-sync after removal: %v", st.InSync)
	}
	must(t, m.WriteAt([]byte("only a and c"), 0, false))
	if got := dataOf(t, reps.devs["b"], 12); string(got) == "only a and c" {
		t.Fatal("write reached a removed replica")
	}
	must(t, m.RemoveReplica("c"))
	if err := m.RemoveReplica("a"); err == nil {
		t.Fatal("removed the last in-sync replica")
	}
}

// TestNoWriteAcknowledgedAfterClose: I/O that reaches a mirror after Close
// (a client connection that won the race with the export's removal while
// the agent stops serving) fails instead of being acknowledged with no
// replica left to hold it.
func TestNoWriteAcknowledgedAfterClose(t *testing.T) {
	_, _, m := newVolume(t, 8<<20, []string{"a", "b"}, nil)
	must(t, m.WriteAt([]byte("x"), 0, false))
	m.Close()
	if err := m.WriteAt([]byte("y"), 4096, false); err == nil {
		t.Fatal("a write after Close was acknowledged")
	}
	if err := m.Flush(); err == nil {
		t.Fatal("a flush after Close was acknowledged")
	}
	if err := m.Trim(0, 4096); err == nil {
		t.Fatal("a trim after Close was acknowledged")
	}
	if err := m.ReadAt(make([]byte, 4096), 0); err == nil {
		t.Fatal("a read after Close succeeded")
	}
}
