package agent

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hacs/hacs/internal/cluster"
)

// counterValue reads a counter of the alert statistics.
func counterValue(t *testing.T, a *Agent, name, target string) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(a.alertMetrics())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "target" && l.GetValue() == target {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func testAgent(ac AlertConfig) *Agent {
	return &Agent{cfg: Config{Alerts: ac}, log: slog.New(slog.NewTextHandler(io.Discard, nil)), alerts: newAlertStats()}
}

func TestAlertWebhookRetries(t *testing.T) {
	var calls atomic.Int32
	var got Alert
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) <= 2 {
			http.Error(w, "not now", http.StatusServiceUnavailable)
			return
		}
		if r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("content type %q", r.Header.Get("Content-Type"))
		}
		json.NewDecoder(r.Body).Decode(&got)
	}))
	defer srv.Close()
	a := testAgent(AlertConfig{URL: srv.URL, Timeout: time.Second, Attempts: 4, Backoff: 10 * time.Millisecond})
	ev := cluster.Event{Kind: "plan-promote", Node: "n2", Resource: "volume/v", Message: "failover", Time: time.Now(), Rev: 42}
	a.deliverAlert(context.Background(), alertOf(ev, "n2"))
	if calls.Load() != 3 || got.Kind != "plan-promote" || got.Rev != 42 || got.Resource != "volume/v" {
		t.Fatalf("calls %d, got %+v", calls.Load(), got)
	}
	if f := counterValue(t, a, "hacs_alert_delivery_failures_total", "webhook"); f != 2 {
		t.Errorf("failures %v", f)
	}
	if d := counterValue(t, a, "hacs_alerts_delivered_total", "webhook"); d != 1 {
		t.Errorf("delivered %v", d)
	}

	// Always failing: given up after Attempts.
	calls.Store(-100)
	a.cfg.Alerts.Attempts = 3
	a.deliverAlert(context.Background(), alertOf(ev, "n2"))
	if n := calls.Load(); n != -97 {
		t.Errorf("%d attempts, want 3", n+100)
	}
	if d := counterValue(t, a, "hacs_alerts_dropped_total", "webhook"); d != 1 {
		t.Errorf("dropped %v", d)
	}
}

func TestAlertExecEnv(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	script := filepath.Join(dir, "alert.sh")
	os.WriteFile(script, []byte("#!/bin/sh\nenv | grep ^HACS_EVENT_ | sort > "+out+"\ncat >> "+out+"\n"), 0o755)
	ev := cluster.Event{Kind: "node-offline", Node: "n1", Message: "node n3 is offline", Time: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC),
		Fields: map[string]string{"subject": "n3"}, Rev: 7}
	al := alertOf(ev, "n1")
	body, _ := json.Marshal(al)
	if err := runAlertExec(context.Background(), script, al, body); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out)
	lines := strings.Split(string(b), "\n")
	for _, want := range []string{"HACS_EVENT_KIND=node-offline", "HACS_EVENT_NODE=n1", "HACS_EVENT_RESOURCE=",
		"HACS_EVENT_MESSAGE=node n3 is offline", "HACS_EVENT_TIME=2026-01-02T03:04:05.000000006Z", "HACS_EVENT_FIELD_SUBJECT=n3",
		"HACS_EVENT_REV=7", "HACS_EVENT_RECIPIENT=n1", "HACS_EVENT_TIMESTAMP=1767323045", string(body)} {
		if !slices.Contains(lines, want) {
			t.Errorf("missing %q in\n%s", want, b)
		}
	}
	// A failing executable reports its output.
	os.WriteFile(script, []byte("#!/bin/sh\necho broken >&2\nexit 3\n"), 0o755)
	if err := runAlertExec(context.Background(), script, al, body); err == nil || !strings.Contains(err.Error(), "broken") {
		t.Fatalf("err %v", err)
	}
}
