package cli

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/cluster"
)

// TestNoQuorumMessage: what the CLI says when the agents it asks answer
// 503 without quorum (cluster.ErrNoQuorumMsg): the agent's message, and,
// when none could serve, what to do.
func TestNoQuorumMessage(t *testing.T) {
	msg := cluster.ErrNoQuorumMsg + ": node n1 is cut off from the majority of its cluster's voters (a partition, or they are down); ask another node"
	agent := func() string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, `{"error":%q}`, msg)
		}))
		t.Cleanup(srv.Close)
		return srv.URL
	}
	a, b := agent(), agent()
	for _, tc := range []struct {
		name, endpoints string
		want            []string
	}{
		{"one agent", a, []string{msg}},
		{"every agent", a + "," + b, []string{msg, "ask an agent of the majority of the cluster's voters"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newAPIClientWith(tc.endpoints, "", "")
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			for _, call := range []func() error{
				func() error { return c.do(ctx, "GET", "/v1/volumes/v", nil, nil) },
				func() error { return c.getHedged(ctx, "/v1/volumes/v", nil) },
			} {
				err := call()
				if err == nil {
					t.Fatal("no error")
				}
				for _, w := range tc.want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q, want it to say %q", err, w)
					}
				}
				if strings.Contains(err.Error(), "hacs agent`") {
					t.Errorf("error %q tells to start an agent: one answered", err)
				}
				t.Logf("%s: %v", tc.name, err)
			}
		})
	}
}
