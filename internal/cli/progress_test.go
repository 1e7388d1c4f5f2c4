package cli

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestProgressBar(t *testing.T) {
	var buf bytes.Buffer
	p := newProgressBar(&buf, "verify vm1")
	p.Set(1<<30, 4<<30)
	if got := buf.String(); !strings.Contains(got, "verify vm1 [#######.......................]  25% 1.0 GiB / 4.0 GiB") || !strings.HasPrefix(got, "\r\x1b[K") {
		t.Fatalf("bar %q", got)
	}
	buf.Reset()
	p.Done()
	if buf.String() != "\r\x1b[K" {
		t.Fatalf("done %q", buf.String())
	}

	var out lockedBuffer
	var n atomic.Int64
	stop := pollProgress(context.Background(), &out, "verify v", 5*time.Millisecond, func(context.Context) (int64, int64, bool) {
		return min(n.Add(10), 100), 100, true
	})
	time.Sleep(100 * time.Millisecond)
	stop()
	s := out.String()
	if !strings.Contains(s, "100%") || !strings.HasSuffix(s, "\r\x1b[K") {
		t.Fatalf("polled bar %q", s)
	}
}
