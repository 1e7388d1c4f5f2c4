package test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	rm "github.com/hacs/hacs/internal/agent"
)

// scrape reads an agent's /metrics as series (name{labels} as printed,
// labels sorted as the client library prints them) to values.
func scrape(t *testing.T, hc *http.Client, api string) map[string]float64 {
	t.Helper()
	resp, err := hc.Get(api + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", api, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("scrape %s: %s\n%s", api, resp.Status, b)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad metrics line %q", line)
		}
		out[line[:i]] = v
	}
	return out
}

func volSeries(name, vol, op string) string {
	if op == "" {
		return fmt.Sprintf(`%s{volume="%s"}`, name, vol)
	}
	return fmt.Sprintf(`%s{op="%s",volume="%s"}`, name, op, vol)
}

// TestMetricsAndAlerts scrapes /metrics of a live 3-agent cluster during
// I/O, then kills the primary's agent and checks what an alert script
// received.
func TestMetricsAndAlerts(t *testing.T) {
	dir := shortTempDir(t)
	log := filepath.Join(dir, "alerts.log")
	script := filepath.Join(dir, "alert.sh")
	// The first delivery attempt fails: the DC retries it.
	failOnce := filepath.Join(dir, "fail-once")
	os.WriteFile(failOnce, nil, 0o644)
	os.WriteFile(script, []byte(`#!/bin/sh
if [ -e `+failOnce+` ]; then rm -f `+failOnce+`; echo "first attempt fails" >&2; exit 1; fi
body=$(cat)
printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$HACS_EVENT_KIND" "$HACS_EVENT_NODE" "$HACS_EVENT_RESOURCE" "$HACS_EVENT_RECIPIENT" "$HACS_EVENT_FIELD_SUBJECT" "$HACS_EVENT_TIME" "$body" >> `+log+`
`), 0o755)

	c := newRMCluster(t, 3, "--alert-exec", script)
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(log)
			t.Logf("alert log:\n%s", b)
		}
	})
	if code, err := c.call("POST", "/v1/volumes", rm.VolumeRequest{Name: "vol", Size: 64 << 20, Replicas: 3}, nil); err != nil || code != 201 {
		t.Fatalf("create: %d %v", code, err)
	}
	v := c.waitServed("vol", 0)
	first := v.Export.Node
	c.waitFor("3 replicas in sync", 30*time.Second, func() bool {
		m := scrape(t, c.hc(), c.api(first))
		return m[`hacs_volume_replicas{state="in-sync",volume="vol"}`] == 3
	})
	cl := c.dial(v)

	// Node metrics on every agent; exactly one DC, seen by all.
	dcs := 0
	var dcName string
	for name := range c.procs {
		if m := scrape(t, c.hc(), c.api(name)); m["hacs_node_dc"] == 1 {
			dcName = name
		}
	}
	for name := range c.procs {
		m := scrape(t, c.hc(), c.api(name))
		if m["hacs_node_lease_grants_total"] < 1 || m["hacs_node_lease_last_renewal_timestamp_seconds"] < float64(time.Now().Add(-time.Minute).Unix()) {
			t.Errorf("%s: lease metrics: grants %v last renewal %v", name, m["hacs_node_lease_grants_total"],
				m["hacs_node_lease_last_renewal_timestamp_seconds"])
		}
		if s := fmt.Sprintf(`hacs_node_dc_seen{dc="%s"}`, dcName); m[s] != 1 {
			t.Errorf("%s: %s = %v", name, s, m[s])
		}
		if m["hacs_node_serving"] != 1 || m["hacs_node_pool_capacity_bytes"] <= 0 || m["hacs_node_replicas_hosted"] != 1 ||
			m["hacs_node_pool_promised_bytes"] < 64<<20 || m[fmt.Sprintf(`hacs_node_info{node="%s"}`, name)] != 1 {
			t.Errorf("%s: node metrics: serving %v capacity %v hosted %v promised %v", name, m["hacs_node_serving"],
				m["hacs_node_pool_capacity_bytes"], m["hacs_node_replicas_hosted"], m["hacs_node_pool_promised_bytes"])
		}
		dcs += int(m["hacs_node_dc"])
		if m["hacs_node_dc"] == 1 {
			if m[`hacs_cluster_volume_health{health="ok",volume="vol"}`] != 1 || m[`hacs_cluster_volume_in_sync_replicas{volume="vol"}`] != 3 ||
				m[`hacs_cluster_nodes{state="online"}`] != 3 {
				t.Errorf("%s: DC cluster metrics: health ok %v, in sync %v, online %v", name, m[`hacs_cluster_volume_health{health="ok",volume="vol"}`],
					m[`hacs_cluster_volume_in_sync_replicas{volume="vol"}`], m[`hacs_cluster_nodes{state="online"}`])
			}
		} else if _, ok := m[`hacs_cluster_nodes{state="online"}`]; ok {
			t.Errorf("%s: cluster metrics on a node that is not the DC", name)
		}
		primary := m[volSeries("hacs_volume_primary", "vol", "")]
		if (name == first) != (primary == 1) {
			t.Errorf("%s: hacs_volume_primary %v (primary is %s)", name, primary, first)
		}
	}
	if dcs != 1 {
		t.Errorf("%d agents say they are the DC", dcs)
	}

	before := scrape(t, c.hc(), c.api(first))
	if before[volSeries("hacs_volume_epoch", "vol", "")] != float64(v.Export.Epoch) {
		t.Errorf("epoch gauge %v, want %d", before[volSeries("hacs_volume_epoch", "vol", "")], v.Export.Epoch)
	}
	// I/O while scraping: counters never go down.
	const writes, reads, bs = 200, 100, 64 << 10
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	scrapes := 0
	go func() {
		defer wg.Done()
		last := 0.0
		for {
			select {
			case <-stop:
				return
			default:
			}
			m := scrape(t, c.hc(), c.api(first))
			n := m[volSeries("hacs_volume_operations_total", "vol", "write")]
			if n < last {
				t.Errorf("write counter went down from %v to %v", last, n)
			}
			last = n
			scrapes++
			time.Sleep(20 * time.Millisecond)
		}
	}()
	buf := make([]byte, bs)
	for i := 0; i < writes; i++ {
		buf[0] = byte(i)
		if err := cl.WriteAt(buf, int64(i)*bs, false); err != nil {
			t.Fatal(err)
		}
		if i < reads {
			if err := cl.ReadAt(buf, int64(i)*bs); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := cl.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := cl.Trim(32<<20, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := cl.WriteZeroes(40<<20, 2<<20, 0); err != nil {
		t.Fatal(err)
	}
	close(stop)
	wg.Wait()
	after := scrape(t, c.hc(), c.api(first))
	t.Logf("%d scrapes during I/O", scrapes)
	delta := func(name, op string) float64 {
		s := volSeries(name, "vol", op)
		if _, ok := after[s]; !ok {
			t.Errorf("no series %s", s)
		}
		return after[s] - before[s]
	}
	for _, x := range []struct {
		op         string
		ops, bytes float64
	}{{"write", writes, writes * bs}, {"read", reads, reads * bs}, {"flush", 1, -1}, {"trim", 1, 1 << 20}, {"zero", 1, 2 << 20}} {
		if d := delta("hacs_volume_operations_total", x.op); d != x.ops {
			t.Errorf("%s operations: +%v, want +%v", x.op, d, x.ops)
		}
		if x.bytes >= 0 {
			if d := delta("hacs_volume_bytes_total", x.op); d != x.bytes {
				t.Errorf("%s bytes: +%v, want +%v", x.op, d, x.bytes)
			}
		}
		if d := delta("hacs_volume_operation_duration_seconds_count", x.op); d != x.ops {
			t.Errorf("%s latency count: +%v, want +%v", x.op, d, x.ops)
		}
		if d := delta("hacs_volume_operation_errors_total", x.op); d != 0 {
			t.Errorf("%s errors: +%v", x.op, d)
		}
	}
	if d := delta("hacs_volume_operation_duration_seconds_sum", "write"); d <= 0 {
		t.Errorf("write latency sum: +%v", d)
	}
	if s := `hacs_volume_operation_duration_seconds_bucket{op="write",volume="vol",le="+Inf"}`; after[s] != after[volSeries("hacs_volume_operations_total", "vol", "write")] {
		t.Errorf("%s = %v", s, after[s])
	}
	if n, ok := after[volSeries("hacs_volume_inflight_requests", "vol", "")]; !ok || n != 0 {
		t.Errorf("in flight after the I/O: %v %v", n, ok)
	}
	for _, r := range v.Placement {
		if s := fmt.Sprintf(`hacs_volume_replica_state{replica="%s",state="in-sync",volume="vol"}`, r); after[s] != 1 {
			t.Errorf("%s = %v", s, after[s])
		}
	}

	c.waitFor("lease renewals counted on every node", 20*time.Second, func() bool {
		for name := range c.procs {
			m := scrape(t, c.hc(), c.api(name))
			if _, ok := m["hacs_node_lease_renewal_failures_total"]; !ok || m["hacs_node_lease_renewals_total"] < 1 {
				return false
			}
		}
		return true
	})

	// Verify progress answers on every agent (the others ask the primary).
	for name := range c.procs {
		resp, err := c.hc().Get(c.api(name) + "/v1/volumes/vol/verify")
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: GET verify progress: %v %v", name, err, resp)
		}
		var p rm.VerifyProgress
		if err := json.NewDecoder(resp.Body).Decode(&p); err != nil || p.Running {
			t.Errorf("%s: verify progress %+v %v", name, p, err)
		}
		resp.Body.Close()
	}

	// Failover: SIGKILL of the primary's agent.
	c.kill(first)
	v2 := c.waitServed("vol", v.Export.Epoch)
	second := v2.Export.Node
	cl2 := c.dial(v2)
	if err := cl2.WriteAt(buf, 0, false); err != nil {
		t.Fatal(err)
	}
	c.waitFor("the epoch change counted by the DC", 20*time.Second, func() bool {
		for name, p := range c.procs {
			if p.exited() {
				continue
			}
			if m := scrape(t, c.hc(), c.api(name)); m["hacs_node_dc"] == 1 && m[volSeries("hacs_cluster_volume_epoch_changes_total", "vol", "")] >= 1 {
				return true
			}
		}
		return false
	})
	c.waitFor("the lost replica outdated in the metrics", 20*time.Second, func() bool {
		m := scrape(t, c.hc(), c.api(second))
		return m[fmt.Sprintf(`hacs_volume_replica_state{replica="%s",state="outdated",volume="vol"}`, first)] == 1 &&
			m[volSeries("hacs_volume_epoch", "vol", "")] == float64(v2.Export.Epoch) &&
			m[fmt.Sprintf(`hacs_volume_resync_remaining_bytes{replica="%s",volume="vol"}`, first)] > 0
	})

	// The alert script saw the node lost and the failover.
	type alert struct{ kind, node, resource, recipient, subject, time, body string }
	var got []alert
	c.waitFor("alerts for the lost node and the failover", 30*time.Second, func() bool {
		got = nil
		b, _ := os.ReadFile(log)
		offline, promote := false, false
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			f := strings.SplitN(line, "\t", 7)
			if len(f) != 7 {
				continue
			}
			a := alert{f[0], f[1], f[2], f[3], f[4], f[5], f[6]}
			got = append(got, a)
			offline = offline || a.kind == "node-offline" && a.subject == first
			promote = promote || a.kind == "plan-promote" && a.resource == "volume/vol" && strings.Contains(a.body, `"kind":"plan-promote"`)
		}
		return offline && promote
	})
	for _, a := range got {
		t.Logf("alert: %s %s %s (from %s, delivered by %s)", a.kind, a.resource, a.subject, a.node, a.recipient)
		if a.recipient == first && a.time > time.Now().Add(-time.Hour).UTC().Format(time.RFC3339) && a.kind == "node-offline" {
			t.Errorf("the killed node delivered %v", a)
		}
		if _, err := time.Parse(time.RFC3339Nano, a.time); err != nil {
			t.Errorf("HACS_EVENT_TIME %q: %v", a.time, err)
		}
	}
	if _, err := os.Stat(failOnce); err == nil {
		t.Error("the alert script was never run")
	}
	// The failed first attempt was retried and counted.
	failures := 0.0
	for name, p := range c.procs {
		if !p.exited() {
			failures += scrape(t, c.hc(), c.api(name))[`hacs_alert_delivery_failures_total{target="exec"}`]
		}
	}
	t.Logf("delivery failures counted by the live agents: %v", failures)
}
