package mirror

import (
	"context"
	"math/rand/v2"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/device"
)

// BenchmarkResync measures quick resync over real NBD links (Unix sockets)
// with file-backed replicas: a 4 GiB volume, 2 replicas, 256 MiB written in
// 1 MiB pieces at random places while one replica was away. Run with
//
//	go test ./internal/mirror -run '^$' -bench Resync -benchtime 1x -count 5
func BenchmarkResync(b *testing.B) {
	const (
		size  = 4 << 30
		dirty = 256 << 20
		piece = 1 << 20
	)
	if testing.Short() {
		b.Skip("4 GiB benchmark")
	}
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		nodes := map[string]*nbdNode{"a": newNBDNode(b, "a"), "b": newNBDNode(b, "b")}
		store := NewMemStore()
		if _, err := Init(context.Background(), store, "vol", "a", []string{"a", "b"}); err != nil {
			b.Fatal(err)
		}
		reps := nbdReplicas("a", size, nodes, "a", "b")
		var down atomic.Bool
		inner := reps[1].Dial
		reps[1].Dial = func(ctx context.Context, epoch uint64) (device.Device, error) {
			if down.Load() {
				return nil, os.ErrDeadlineExceeded
			}
			return inner(ctx, epoch)
		}
		m, err := Open(context.Background(), Config{Volume: "vol", Self: "a", Size: size, Replicas: reps, Store: store,
			Logger: quiet, RetryInterval: 10 * time.Millisecond})
		if err != nil {
			b.Fatal(err)
		}
		// Take b out through the store, as after a failure.
		down.Store(true)
		m.mu.Lock()
		for _, l := range m.legs {
			if l.ID == "b" {
				if err := m.dropLocked([]*leg{l}, os.ErrClosed); err != nil {
					b.Fatal(err)
				}
			}
		}
		m.mu.Unlock()
		rng := rand.New(rand.NewPCG(1, uint64(i)))
		p := make([]byte, piece)
		for j := range p {
			p[j] = byte(rng.Uint32())
		}
		for w := int64(0); w < dirty; w += piece {
			off := rng.Int64N(size/piece) * piece
			if err := m.WriteAt(p, off, false); err != nil {
				b.Fatal(err)
			}
		}
		if err := m.Flush(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		down.Store(false)
		for {
			st, _ := store.Load(context.Background(), "vol")
			if st.Has("b") {
				break
			}
			time.Sleep(time.Millisecond)
		}
		el := time.Since(start)
		b.StopTimer()
		var sent int64
		for _, r := range m.Status().Replicas {
			if r.ID == "b" {
				sent = r.ResyncSent
			}
		}
		b.ReportMetric(float64(sent)/el.Seconds()/(1<<20), "MiB/s")
		b.ReportMetric(el.Seconds(), "s/resync")
		b.ReportMetric(float64(sent)/(1<<20), "MiB-sent")
		m.Close()
		for _, n := range nodes {
			n.srv.Close()
		}
	}
}
