package mirror

import (
	"sync"
	"testing"
)

func TestStats(t *testing.T) {
	stats := NewStats()
	_, _, m := newVolume(t, 8<<20, []string{"a", "b"}, func(c *Config) { c.Stats = stats })
	if m.Stats() != stats {
		t.Fatal("Stats() is not the configured Stats")
	}
	buf := make([]byte, 4096)
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := make([]byte, 4096)
			for i := 0; i < 25; i++ {
				must(t, m.WriteAt(p, int64(g*100+i)*4096, false))
				must(t, m.ReadAt(p, int64(g*100+i)*4096))
			}
		}()
	}
	wg.Wait()
	must(t, m.Flush())
	must(t, m.Trim(0, 1<<20))
	must(t, m.WriteZeroes(1<<20, 2<<20, 0))
	if err := m.ReadAt(buf, 8<<20); err == nil {
		t.Fatal("read past the end succeeded")
	}
	s := stats.Snapshot()
	check := func(op Op, ops, bytes uint64) {
		t.Helper()
		o := s.Ops[op]
		if o.Ops != ops || o.Bytes != bytes || o.Errors != 0 {
			t.Errorf("%s: ops %d bytes %d errors %d, want %d %d 0", op, o.Ops, o.Bytes, o.Errors, ops, bytes)
		}
		if o.Buckets[len(o.Buckets)-1] > o.Ops || o.SumSeconds <= 0 {
			t.Errorf("%s: histogram %v sum %v", op, o.Buckets, o.SumSeconds)
		}
		for i := 1; i < len(o.Buckets); i++ {
			if o.Buckets[i] < o.Buckets[i-1] {
				t.Errorf("%s: buckets not cumulative: %v", op, o.Buckets)
			}
		}
	}
	check(OpWrite, 100, 100*4096)
	check(OpRead, 100, 100*4096) // the out-of-range read fails its range check first: not counted
	check(OpFlush, 1, 0)
	check(OpTrim, 1, 1<<20)
	check(OpZero, 1, 2<<20)
	if s.InFlight != 0 {
		t.Errorf("in flight %d after the I/O", s.InFlight)
	}
}

func BenchmarkStatsEnd(b *testing.B) {
	s := NewStats()
	b.ReportAllocs()
	for b.Loop() {
		t := s.begin()
		s.end(OpWrite, t, 4096, nil)
	}
}
