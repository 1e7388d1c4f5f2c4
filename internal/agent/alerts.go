package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hacs/hacs/internal/cluster"
	"github.com/hacs/hacs/internal/fence"
)

// AlertConfig configures alert agents, in the manner of Pacemaker's: an
// executable and/or a webhook called for the cluster events of
// AlertKinds. The DC delivers them, for the whole cluster (give every
// agent the same settings: any may become the DC).
type AlertConfig struct {
	// Exec is run once per event with the event in its environment
	// (HACS_EVENT_*) and as JSON on its standard input; exit status 0
	// means delivered.
	Exec string
	// URL receives the event as a JSON body (POST); a 2xx answer means
	// delivered.
	URL string
	// Kinds are the event kinds delivered (default AlertKinds).
	Kinds []string
	// Timeout bounds one delivery attempt (default 30s); Attempts is how
	// many are made before the event is given up on (default 6), with
	// exponential backoff from Backoff (default 1s, at most 30s).
	Timeout  time.Duration
	Attempts int
	Backoff  time.Duration
}

// AlertKinds are the event kinds alerted by default.
var AlertKinds = []string{
	// node lost
	cluster.EventNodeOffline, cluster.EventNodeRemoved, cluster.EventServingLost, cluster.EventLeaseExpired,
	// failover and primary moves
	"plan-promote", "volume-start-failed",
	// degraded redundancy
	"replica-failed", "replica-dropped", "volume-degraded", "stalled",
	// recovery
	"resync-finished",
	// fencing
	"fenced", fence.EventStarted, fence.EventSucceeded, fence.EventFailed, fence.EventLevelFailed,
}

// alertCursorKey holds the revision of the last event the DC alerted on,
// so that a new DC carries on where the previous one stopped.
const alertCursorKey = cluster.Prefix + "alerts/cursor"

// alertMaxAge: events older than this when the DC reaches them (after a
// long time without a DC, or with no alert configured) are not alerted.
const alertMaxAge = 10 * time.Minute

// Alert is the JSON body of a webhook and the standard input of an alert
// executable.
type Alert struct {
	Kind     string            `json:"kind"`
	Node     string            `json:"node"` // the node that recorded the event
	Resource string            `json:"resource,omitempty"`
	Message  string            `json:"message"`
	Time     time.Time         `json:"time"`
	Fields   map[string]string `json:"fields,omitempty"`
	Rev      int64             `json:"rev"`
	// Recipient is the DC that delivered the alert.
	Recipient string `json:"recipient"`
}

type alertStats struct {
	delivered, failures, dropped *prometheus.CounterVec
}

func newAlertStats() *alertStats {
	return &alertStats{
		delivered: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hacs_alerts_delivered_total",
			Help: "Alerts delivered by this node (as DC), by target (exec, webhook)."}, []string{"target"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hacs_alert_delivery_failures_total",
			Help: "Failed alert delivery attempts (each retry counts), by target."}, []string{"target"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hacs_alerts_dropped_total",
			Help: "Alerts given up on after every attempt failed, by target."}, []string{"target"}),
	}
}

func (s *alertStats) Describe(ch chan<- *prometheus.Desc) {
	s.delivered.Describe(ch)
	s.failures.Describe(ch)
	s.dropped.Describe(ch)
}

func (s *alertStats) Collect(ch chan<- prometheus.Metric) {
	s.delivered.Collect(ch)
	s.failures.Collect(ch)
	s.dropped.Collect(ch)
}

func (a *Agent) alertMetrics() prometheus.Collector { return a.alerts }

// alertLoop delivers alerts while this node is the DC.
func (a *Agent) alertLoop(ctx context.Context) {
	ac := &a.cfg.Alerts
	if ac.Exec == "" && ac.URL == "" {
		return
	}
	for {
		l, err := a.node.WaitDC(ctx)
		if err != nil {
			return
		}
		a.log.Info("alerts: delivering as DC", "exec", ac.Exec, "url", ac.URL)
		if err := a.followAlerts(l.Ctx); err != nil && l.Ctx.Err() == nil {
			a.log.Warn("alerts: following the event log", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

func (a *Agent) followAlerts(ctx context.Context) error {
	cli := a.node.Client()
	resp, err := cli.Get(ctx, alertCursorKey)
	if err != nil {
		return err
	}
	rev := resp.Header.Revision
	if len(resp.Kvs) > 0 {
		if r, err := strconv.ParseInt(string(resp.Kvs[0].Value), 10, 64); err == nil && r < rev {
			rev = r
		}
	} else if _, err := cli.Put(ctx, alertCursorKey, strconv.FormatInt(rev, 10)); err != nil {
		// The first DC to alert starts the cursor, for the next DC to
		// carry on from.
		return err
	}
	err = cluster.FollowEvents(ctx, cli, rev, cluster.EventFilter{}, func(ev cluster.Event) {
		if !slices.Contains(a.cfg.Alerts.Kinds, ev.Kind) {
			return
		}
		if age := time.Since(ev.Time); age > alertMaxAge {
			a.log.Info("alerts: event too old, not alerted", "kind", ev.Kind, "age", age.Round(time.Second))
		} else {
			a.deliverAlert(ctx, alertOf(ev, a.self()))
		}
		if ctx.Err() != nil {
			return // not delivered: the next DC does it
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if _, err := cli.Put(pctx, alertCursorKey, strconv.FormatInt(ev.Rev, 10)); err != nil {
			a.log.Warn("alerts: saving the cursor", "err", err)
		}
	})
	if err != nil && strings.Contains(err.Error(), "compacted") {
		// Events were compacted away: start again from now.
		a.log.Warn("alerts: event log compacted past the cursor; alerts in between are lost", "err", err)
		cli.Delete(ctx, alertCursorKey)
	}
	return err
}

func alertOf(ev cluster.Event, recipient string) Alert {
	return Alert{Kind: ev.Kind, Node: ev.Node, Resource: ev.Resource, Message: ev.Message, Time: ev.Time,
		Fields: ev.Fields, Rev: ev.Rev, Recipient: recipient}
}

// deliverAlert delivers one alert to each configured target.
func (a *Agent) deliverAlert(ctx context.Context, al Alert) {
	body, _ := json.Marshal(al)
	ac := &a.cfg.Alerts
	if ac.Exec != "" {
		a.retryAlert(ctx, "exec", al, func(ctx context.Context) error { return runAlertExec(ctx, ac.Exec, al, body) })
	}
	if ac.URL != "" {
		a.retryAlert(ctx, "webhook", al, func(ctx context.Context) error { return postAlert(ctx, ac.URL, body) })
	}
}

func (a *Agent) retryAlert(ctx context.Context, target string, al Alert, try func(context.Context) error) {
	ac := &a.cfg.Alerts
	backoff := ac.Backoff
	for attempt := 1; ; attempt++ {
		tctx, cancel := context.WithTimeout(ctx, ac.Timeout)
		err := try(tctx)
		cancel()
		if err == nil {
			a.alerts.delivered.WithLabelValues(target).Inc()
			a.log.Debug("alert delivered", "target", target, "kind", al.Kind, "resource", al.Resource)
			return
		}
		a.alerts.failures.WithLabelValues(target).Inc()
		if ctx.Err() != nil {
			a.log.Warn("alert not delivered: this node is no longer the DC (the next DC delivers it)", "target", target,
				"kind", al.Kind, "resource", al.Resource, "err", err)
			return
		}
		if attempt >= ac.Attempts {
			a.alerts.dropped.WithLabelValues(target).Inc()
			a.log.Error("alert not delivered; giving up", "target", target, "kind", al.Kind, "resource", al.Resource,
				"attempts", attempt, "err", err)
			return
		}
		a.log.Warn("alert delivery failed; retrying", "target", target, "kind", al.Kind, "resource", al.Resource,
			"attempt", attempt, "retry_in", backoff, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// alertEnv is the environment of an alert executable.
func alertEnv(al Alert) []string {
	env := []string{
		"HACS_EVENT_KIND=" + al.Kind,
		"HACS_EVENT_NODE=" + al.Node,
		"HACS_EVENT_RESOURCE=" + al.Resource,
		"HACS_EVENT_MESSAGE=" + al.Message,
		"HACS_EVENT_TIME=" + al.Time.UTC().Format(time.RFC3339Nano),
		"HACS_EVENT_TIMESTAMP=" + strconv.FormatInt(al.Time.Unix(), 10),
		"HACS_EVENT_REV=" + strconv.FormatInt(al.Rev, 10),
		"HACS_EVENT_RECIPIENT=" + al.Recipient,
	}
	kind, name, _ := strings.Cut(al.Resource, "/")
	if name != "" {
		env = append(env, "HACS_EVENT_RESOURCE_KIND="+kind, "HACS_EVENT_RESOURCE_NAME="+name)
	}
	for k, v := range al.Fields {
		env = append(env, "HACS_EVENT_FIELD_"+strings.ToUpper(strings.NewReplacer("-", "_", ".", "_").Replace(k))+"="+v)
	}
	return env
}

func runAlertExec(ctx context.Context, path string, al Alert, body []byte) error {
	cmd := exec.CommandContext(ctx, path)
	cmd.Env = append(os.Environ(), alertEnv(al)...)
	cmd.Stdin = bytes.NewReader(body)
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		if s := strings.TrimSpace(string(out)); s != "" {
			return fmt.Errorf("%s: %w: %s", path, err, clipOut(s))
		}
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

func clipOut(s string) string {
	if len(s) > 500 {
		return s[:500] + "…"
	}
	return s
}

func postAlert(ctx context.Context, url string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "hacs-alert")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("POST %s: %s", url, resp.Status)
	}
	return nil
}
