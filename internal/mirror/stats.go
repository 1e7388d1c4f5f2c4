package mirror

import (
	"sync/atomic"
	"time"
)

// Op is a kind of I/O the mirror serves, for its statistics.
type Op int

// I/O kinds.
const (
	OpRead Op = iota
	OpWrite
	OpFlush
	OpTrim
	OpZero
	NumOps
)

func (o Op) String() string {
	return [...]string{"read", "write", "flush", "trim", "zero"}[o]
}

// LatencyBuckets are the upper bounds, in seconds, of the latency
// histogram buckets (an implicit +Inf bucket follows).
var LatencyBuckets = [...]float64{
	50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3,
	100e-3, 250e-3, 500e-3, 1, 2.5, 5, 10,
}

var latencyBoundsNs = func() (b [len(LatencyBuckets)]int64) {
	for i, s := range LatencyBuckets {
		b[i] = int64(s * 1e9)
	}
	return b
}()

type opCounters struct {
	ops, errors, bytes atomic.Uint64
	sumNs              atomic.Uint64
	buckets            [len(LatencyBuckets) + 1]atomic.Uint64 // not cumulative
}

// Stats counts a volume's I/O with atomics only (no locks, no allocation on
// the I/O path). One Stats may outlive a Mirror: pass it in Config.Stats to
// keep counting across the mirrors of the same volume on this node.
type Stats struct {
	ops      [NumOps]opCounters
	inFlight atomic.Int64
}

// NewStats returns zeroed statistics.
func NewStats() *Stats { return &Stats{} }

func (s *Stats) begin() time.Time {
	s.inFlight.Add(1)
	return time.Now()
}

func (s *Stats) end(op Op, start time.Time, n int64, err error) {
	d := time.Since(start).Nanoseconds()
	s.inFlight.Add(-1)
	c := &s.ops[op]
	c.ops.Add(1)
	if err != nil {
		c.errors.Add(1)
	} else if n > 0 {
		c.bytes.Add(uint64(n))
	}
	if d < 0 {
		d = 0
	}
	c.sumNs.Add(uint64(d))
	i := 0
	for i < len(latencyBoundsNs) && d > latencyBoundsNs[i] {
		i++
	}
	c.buckets[i].Add(1)
}

// OpStats is a snapshot of one kind of I/O.
type OpStats struct {
	Ops    uint64 // completed requests, failed ones included
	Errors uint64 // failed requests
	Bytes  uint64 // bytes of the successful requests
	// SumSeconds is the total latency; Buckets[i] counts the requests
	// that took at most LatencyBuckets[i] (cumulative, as Prometheus
	// wants); Ops counts them all.
	SumSeconds float64
	Buckets    [len(LatencyBuckets)]uint64
}

// StatsSnapshot is a snapshot of a volume's I/O statistics.
type StatsSnapshot struct {
	Ops      [NumOps]OpStats
	InFlight int64 // requests being served
}

// Snapshot reads the current values (each counter atomically; the set
// is not one consistent cut).
func (s *Stats) Snapshot() StatsSnapshot {
	var out StatsSnapshot
	out.InFlight = s.inFlight.Load()
	for op := range s.ops {
		c := &s.ops[op]
		o := &out.Ops[op]
		var cum uint64
		for i := range o.Buckets {
			cum += c.buckets[i].Load()
			o.Buckets[i] = cum
		}
		o.Ops = c.ops.Load()
		if o.Ops < cum {
			o.Ops = cum // a request counted in its bucket but not yet in ops
		}
		o.Errors = c.errors.Load()
		o.Bytes = c.bytes.Load()
		o.SumSeconds = float64(c.sumNs.Load()) / 1e9
	}
	return out
}

// Stats returns the mirror's I/O statistics.
func (m *Mirror) Stats() *Stats { return m.stats }
