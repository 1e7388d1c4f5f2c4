package cli

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// hedgeAgent is a fake agent API for getHedged: it answers GET /v1/x with
// status and {"name": name}, or, if hang, never answers (like an agent cut
// off by a partition, or one without quorum stuck checking the API token)
// until the request is cancelled.
func hedgeAgent(t *testing.T, name string, status int, hang bool, asked *atomic.Int32) string {
	t.Helper()
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		if hang {
			select {
			case <-r.Context().Done():
			case <-release:
			}
			return
		}
		w.WriteHeader(status)
		if status/100 == 2 {
			fmt.Fprintf(w, `{"name":%q}`, name)
		} else {
			fmt.Fprintf(w, `{"error":"%s says %d"}`, name, status)
		}
	}))
	t.Cleanup(func() { close(release); srv.Close() })
	return srv.URL
}

func TestGetHedged(t *testing.T) {
	// A longer hedge than the agents' 300 ms: which agents are asked, and
	// that a refusal moves on at once (well within the hedge), must not
	// depend on how fast this (loaded, -race) machine answers a request.
	defer func(d time.Duration) { hedgeDelay = d }(hedgeDelay)
	hedgeDelay = time.Second
	type agentSpec struct {
		status int
		hang   bool
		gone   bool // nothing listens (a unix socket that does not exist)
	}
	ok := agentSpec{status: 200}
	hang := agentSpec{hang: true}
	noQuorum := agentSpec{status: http.StatusServiceUnavailable}
	notFound := agentSpec{status: http.StatusNotFound}
	gone := agentSpec{gone: true}
	for _, tc := range []struct {
		name    string
		agents  []agentSpec
		want    string // the agent whose answer wins ("" for an error)
		wantErr string
		within  time.Duration // the answer comes within this
		unasked []int         // agents never asked
	}{
		{name: "first answers", agents: []agentSpec{ok, ok, ok}, want: "a0", within: time.Second, unasked: []int{1, 2}},
		{name: "first hangs", agents: []agentSpec{hang, ok, ok}, want: "a1", within: 2500 * time.Millisecond, unasked: []int{2}},
		{name: "two hang", agents: []agentSpec{hang, hang, ok}, want: "a2", within: 3500 * time.Millisecond},
		{name: "first without quorum", agents: []agentSpec{noQuorum, ok}, want: "a1", within: 900 * time.Millisecond},
		{name: "first unreachable", agents: []agentSpec{gone, ok}, want: "a1", within: 900 * time.Millisecond},
		{name: "first says not found", agents: []agentSpec{notFound, ok}, wantErr: "a0 says 404", within: time.Second, unasked: []int{1}},
		{name: "none answers", agents: []agentSpec{noQuorum, gone}, wantErr: "no agent answered", within: 900 * time.Millisecond},
		{name: "all hang", agents: []agentSpec{hang, hang}, wantErr: "context deadline exceeded", within: 5 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			asked := make([]*atomic.Int32, len(tc.agents))
			var eps []string
			for i, a := range tc.agents {
				asked[i] = new(atomic.Int32)
				if a.gone {
					eps = append(eps, "unix:"+t.TempDir()+"/no-agent.sock")
					continue
				}
				eps = append(eps, hedgeAgent(t, fmt.Sprintf("a%d", i), a.status, a.hang, asked[i]))
			}
			c := newAPIClientWith(strings.Join(eps, ","), "", "")
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
			defer cancel()
			start := time.Now()
			var got struct{ Name string }
			err := c.getHedged(ctx, "/v1/x", &got)
			took := time.Since(start)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one saying %q", err, tc.wantErr)
				}
			} else if err != nil || got.Name != tc.want {
				t.Fatalf("answer %q, error %v; want %s's answer", got.Name, err, tc.want)
			}
			if took > tc.within {
				t.Errorf("answered after %v, want within %v", took, tc.within)
			}
			for _, i := range tc.unasked {
				if n := asked[i].Load(); n != 0 {
					t.Errorf("agent a%d asked %d time(s), want never", i, n)
				}
			}
			var ue *unreachableError
			if tc.name == "none answers" && !errors.As(err, &ue) {
				t.Errorf("error %T, want *unreachableError", err)
			}
		})
	}
}
