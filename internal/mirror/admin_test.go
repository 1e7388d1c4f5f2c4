package mirror

import (
	"bytes"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/device"
)

// TestQuiesceIsOnePointOfTheWrites: while fn runs no write completes, and
// every in-sync replica holds the same data.
func TestQuiesceIsOnePointOfTheWrites(t *testing.T) {
	const size = 8 << 20
	reps, _, m := newVolume(t, size, []string{"a", "b", "c"}, nil)
	var done atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			buf := make([]byte, 8192)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				for k := range buf {
					buf[k] = byte(i + w)
				}
				if err := m.WriteAt(buf, int64((i*4+w)%1000)*8192, false); err != nil {
					t.Error(err)
					return
				}
				done.Add(1)
			}
		}(w)
	}
	defer func() { close(stop); wg.Wait() }()
	for round := 0; round < 5; round++ {
		waitFor(t, "writes", func() bool { return done.Load() > int64(50*(round+1)) })
		err := m.Quiesce(func(ids []string) error {
			if len(ids) != 3 {
				t.Errorf("in sync: %v", ids)
			}
			a := dataOf(t, reps.devs["a"], size)
			for _, id := range []string{"b", "c"} {
				if !bytes.Equal(a, dataOf(t, reps.devs[id], size)) {
					t.Errorf("round %d: replica %s differs from a while quiesced", round, id)
				}
			}
			time.Sleep(20 * time.Millisecond)
			if !bytes.Equal(a, dataOf(t, reps.devs["a"], size)) {
				t.Errorf("round %d: a write landed while quiesced", round)
			}
			return nil
		})
		must(t, err)
	}
}

// TestResizeReplica grows and shrinks replica devices of a closed mirror:
// the data stays, the grown part reads as zeroes, the metadata record moves
// (a mirror opens at the new size and reconciles its hot regions), and a
// second call changes nothing.
func TestResizeReplica(t *testing.T) {
	const size = 8 << 20
	ids := []string{"a", "b"}
	reps, store, m := newVolume(t, size, ids, nil)
	data := bytes.Repeat([]byte("resize!!"), 128<<10) // 1 MiB
	must(t, m.WriteAt(data, 6<<20, true))
	must(t, m.Close())
	resize := func(id string) func(int64) error {
		return reps.devs[id].Device.(*device.Memory).Resize
	}
	for _, step := range []struct{ from, to int64 }{{size, 3 * size}, {3 * size, 3 * size}, {3 * size, size + 4096}} {
		for _, id := range ids {
			must(t, ResizeReplica(reps.devs[id], resize(id), step.from, step.to))
			if got := reps.devs[id].Size(); got != ReplicaSize(step.to) {
				t.Fatalf("%s: size %d, want %d", id, got, ReplicaSize(step.to))
			}
			rec, err := readMeta(reps.devs[id], step.to)
			if err != nil || rec.Size != step.to || len(rec.AL) == 0 {
				t.Fatalf("%s: metadata after resize to %d: %+v %v", id, step.to, rec, err)
			}
		}
		if step.to > step.from {
			tail := make([]byte, step.to-step.from)
			must(t, reps.devs["a"].ReadAt(tail, step.from))
			if !bytes.Equal(tail, make([]byte, len(tail))) {
				t.Fatalf("the grown part [%d,%d) is not zeroes", step.from, step.to)
			}
		}
		m2 := openMirror(t, store, "a", step.to, reps.config("a", ids...), nil)
		got := make([]byte, len(data))
		must(t, m2.ReadAt(got, 6<<20))
		if !bytes.Equal(got, data) {
			t.Fatalf("data lost by resize to %d", step.to)
		}
		must(t, m2.Close())
	}
	if err := ResizeReplica(reps.devs["a"], resize("a"), 5*size, 6*size); err == nil {
		t.Fatal("a device of neither size was resized")
	}
}
