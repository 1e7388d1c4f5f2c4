package cli

import (
	"bytes"
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/testlog"
)

func TestRenderBar(t *testing.T) {
	for _, tc := range []struct {
		done, total int64
		elapsed     time.Duration
		want        string
	}{
		{0, 4 << 30, 0, "v [..............................]   0% 0 B / 4.0 GiB"},
		{1 << 30, 4 << 30, 0, "v [#######.......................]  25% 1.0 GiB / 4.0 GiB"},
		{1 << 30, 4 << 30, 10 * time.Second, "v [#######.......................]  25% 1.0 GiB / 4.0 GiB  102.4 MiB/s  ETA 30s"},
		{4 << 30, 4 << 30, 8 * time.Second, "v [##############################] 100% 4.0 GiB / 4.0 GiB  512.0 MiB/s"},
		{5 << 30, 4 << 30, 0, "v [##############################] 100% 4.0 GiB / 4.0 GiB"}, // clamped
		{-1, 100, 0, "v [..............................]   0% 0 B / 100 B"},
		{1 << 20, 4 << 20, 400 * time.Millisecond, "v [#######.......................]  25% 1.0 MiB / 4.0 MiB"}, // no rate yet
	} {
		if got := renderBar("v", tc.done, tc.total, tc.elapsed); got != tc.want {
			t.Errorf("renderBar(%d, %d, %v)\n got %q\nwant %q", tc.done, tc.total, tc.elapsed, got, tc.want)
		}
	}
}

func TestProgressBar(t *testing.T) {
	var buf bytes.Buffer
	p := newProgress(&buf, "verify vm1", true)
	p.Set(1<<30, 0) // nothing to draw
	p.Set(1<<30, 4<<30)
	if got := buf.String(); !strings.Contains(got, "verify vm1 [#######.......................]  25% 1.0 GiB / 4.0 GiB") || !strings.HasPrefix(got, "\r\x1b[K") ||
		strings.Contains(got, "\n") {
		t.Fatalf("bar %q", got)
	}
	buf.Reset()
	p.Done()
	if buf.String() != "\r\x1b[K" {
		t.Fatalf("done %q", buf.String())
	}

	var out testlog.Buffer
	var n atomic.Int64
	stop := pollProgress(context.Background(), newProgress(&out, "verify v", true), 5*time.Millisecond, func(context.Context) (int64, int64, bool) {
		return min(n.Add(10), 100), 100, true
	})
	time.Sleep(100 * time.Millisecond)
	stop()
	s := out.String()
	if !strings.Contains(s, "100%") || !strings.HasSuffix(s, "\r\x1b[K") {
		t.Fatalf("polled bar %q", s)
	}
}

// Not a terminal: a plain line per 10 % step, and a line when the work
// moved after a long time within one step; no escape sequences.
func TestLineProgress(t *testing.T) {
	var buf bytes.Buffer
	now := time.Unix(1000, 0)
	p := newProgress(&buf, "resync vol (n2)", false).(*lineProgress)
	p.now = func() time.Time { return now }
	for _, d := range []int64{0, 5, 9, 10, 15, 19, 20, 55, 55, 56} {
		p.Set(d<<20, 100<<20)
		now = now.Add(time.Second)
	}
	now = now.Add(time.Minute)
	p.Set(57<<20, 100<<20) // same step, later, moved: a line
	p.Set(57<<20, 100<<20) // not moved: none
	now = now.Add(time.Minute)
	p.Set(57<<20, 100<<20) // not moved, even later: none
	p.Set(100<<20, 100<<20)
	p.Done()
	want := `resync vol (n2): 0% 0 B / 100.0 MiB
resync vol (n2): 10% 10.0 MiB / 100.0 MiB
resync vol (n2): 20% 20.0 MiB / 100.0 MiB
resync vol (n2): 55% 55.0 MiB / 100.0 MiB
resync vol (n2): 57% 57.0 MiB / 100.0 MiB
resync vol (n2): 100% 100.0 MiB / 100.0 MiB
`
	if buf.String() != want {
		t.Fatalf("lines:\n%s\nwant:\n%s", buf.String(), want)
	}
}
