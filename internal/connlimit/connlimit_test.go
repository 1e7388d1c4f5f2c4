package connlimit

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestBound(t *testing.T) {
	for _, c := range []struct{ v, def, want int }{{0, 64, 64}, {-1, 64, 0}, {8, 64, 8}} {
		if got := Bound(c.v, c.def); got != c.want {
			t.Errorf("Bound(%d, %d) = %d, want %d", c.v, c.def, got, c.want)
		}
	}
}

func TestCounter(t *testing.T) {
	var c Counter
	steps := []struct {
		ip            string
		max, maxPerIP int
		perIP, refuse bool
	}{
		{"10.0.0.1", 3, 2, false, false},
		{"10.0.0.1", 3, 2, false, false},
		{"10.0.0.1", 3, 2, true, true},  // per IP
		{"", 3, 2, false, false},        // not counted per IP
		{"10.0.0.2", 3, 2, false, true}, // server-wide
		{"10.0.0.2", 0, 0, false, false},
	}
	for i, s := range steps {
		r := c.Take(s.ip, s.max, s.maxPerIP)
		if (r != nil) != s.refuse || (r != nil && r.PerIP != s.perIP) {
			t.Fatalf("step %d: %+v", i, r)
		}
	}
	if c.Total() != 4 {
		t.Fatalf("total %d", c.Total())
	}
	for _, ip := range []string{"10.0.0.1", "10.0.0.1", "", "10.0.0.2"} {
		c.Give(ip)
	}
	if c.Total() != 0 || len(c.perIP) != 0 {
		t.Fatalf("after giving back: %d, %v", c.Total(), c.perIP)
	}
}

func TestRateLog(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	r := RateLog{Interval: 100 * time.Millisecond}
	for range 5 {
		r.Warn(log, "refused")
	}
	time.Sleep(120 * time.Millisecond)
	r.Warn(log, "refused")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[1], "more_refused_not_logged=4") {
		t.Fatalf("log:\n%s", buf.String())
	}
}
