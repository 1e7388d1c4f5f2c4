package test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"net/url"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	rm "github.com/hacs/hacs/internal/agent"
	"github.com/hacs/hacs/internal/cluster"
)

// An agent's graceful stop (SIGTERM): it stops serving its volumes, stores
// their volume-stopped events in the cluster store, gives up its lease,
// and exits in a bounded time.

// stopExitBound bounds the time from SIGTERM to the exit of an agent. The
// agent bounds its stop by design (agent.StopTimeout 1.5 s, then the node's
// 3 s: the last events, the lease, the raft leadership, etcd's close), and
// measured on a shared 2-core machine (TestAgentStopTimes): a healthy
// cluster median ~1.0 s, max 1.14 s (etcd's close of its peer port takes
// its 1 s); with a silent replica or no quorum max 4.8 s (TestAgentStopTimes
// and the silent-replica case here). 8 s leaves room
// for a loaded machine and still fails a stop that waits on a forgotten
// timeout (etcd's request timeout alone is 6 s; before these bounds the
// exits took up to 18 s).
const stopExitBound = 8 * time.Second

// sigterm sends SIGTERM to a node's agent and returns how long it took to
// exit; the exit must be clean.
func (c *rmCluster) sigterm(name string) time.Duration {
	c.t.Helper()
	p := c.procs[name]
	start := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		c.t.Fatalf("agent %s did not exit within 30 s of SIGTERM", name)
	}
	d := time.Since(start)
	if p.err != nil {
		c.t.Fatalf("agent %s did not exit cleanly on SIGTERM: %v\n%s", name, p.err, clip(p.out.String()))
	}
	return d
}

// stopEvents reads the volume-stopped events of a volume written by node.
func (c *rmCluster) stopEvents(node, volume string) ([]cluster.Event, error) {
	var out struct {
		Events []cluster.Event `json:"events"`
	}
	q := url.Values{"node": {node}, "kind": {"volume-stopped"}, "resource": {"volume/" + volume}}
	code, err := c.call("GET", "/v1/events?"+q.Encode(), nil, &out)
	if err != nil {
		return nil, err
	}
	if code != 200 {
		return nil, fmt.Errorf("status %d", code)
	}
	return out.Events, nil
}

// TestAgentGracefulStop: SIGTERM to the agent of a volume's primary. Its
// volume-stopped event (epoch, stopped_at) is in the cluster store as soon
// as it exited (it writes it before it gives up its lease), it exits within
// stopExitBound, and the volume fails over to the other replica with its
// data. Also while that replica is silent (SIGSTOP, a write in flight on
// it): the primary's flush cannot end, and the agent still exits in time
// with its event stored (measured 3.8-4.8 s; on the code before the bounds
// this case failed 3 runs of 3: exits after 10.3-18.0 s, no event).
//
// HACS_STOP_LOG=1 logs the stopped agent's last lines,
// HACS_STOP_ETCD_LOG=info adds its embedded etcd's (for either test here).
func TestAgentGracefulStop(t *testing.T) {
	for _, tc := range []struct {
		name   string
		silent bool
	}{{"healthy", false}, {"silent replica", true}} {
		t.Run(tc.name, func(t *testing.T) { testAgentGracefulStop(t, tc.silent) })
	}
}

func testAgentGracefulStop(t *testing.T, silent bool) {
	c := newStopCluster(t)
	v := c.waitServed("vol", 0)
	first := v.Export.Node
	cl := c.dial(v)
	data := bytes.Repeat([]byte("stop!"), 1<<16)[:256<<10]
	if err := cl.WriteAt(data, 1<<20, true); err != nil {
		t.Fatal(err)
	}
	var paused string
	if silent {
		for _, n := range v.Placement {
			if n != first {
				paused = n
			}
		}
		if paused == "" {
			t.Fatalf("placement %v: no other replica", v.Placement)
		}
		c.procs[paused].cmd.Process.Signal(syscall.SIGSTOP)
		t.Cleanup(func() { c.procs[paused].cmd.Process.Signal(syscall.SIGCONT) })
		// a write in flight on the silent replica (its answer never comes:
		// the agent's stop cuts the connection)
		go cl.WriteAt(bytes.Repeat([]byte{1}, 4096), 0, true)
		time.Sleep(200 * time.Millisecond)
	}

	sent := time.Now()
	took := c.sigterm(first)
	exited := time.Now()
	t.Logf("agent %s (primary of vol at epoch %d) exited %v after SIGTERM", first, v.Export.Epoch, took.Round(time.Millisecond))
	if took > stopExitBound {
		t.Errorf("agent %s took %v to exit after SIGTERM (bound %v)", first, took, stopExitBound)
	}
	if paused != "" {
		c.procs[paused].cmd.Process.Signal(syscall.SIGCONT)
	}
	if os.Getenv("HACS_STOP_LOG") != "" {
		t.Logf("log of %s:\n%s", first, tailLines(c.procs[first].out.String(), 400))
	}

	// (a) the event is in the store already: it is read once the store
	// answers (the resumed replica's agent may need a moment), with no
	// wait for it to appear.
	var evs []cluster.Event
	c.waitFor("the event log readable", 30*time.Second, func() bool {
		var err error
		evs, err = c.stopEvents(first, "vol")
		return err == nil
	})
	var found *cluster.Event
	for i, ev := range evs {
		if ev.Fields["epoch"] == strconv.FormatUint(v.Export.Epoch, 10) {
			found = &evs[i]
		}
	}
	if found == nil {
		t.Fatalf("no volume-stopped event of %s at epoch %d in the store after its exit (have %+v)\nlog:\n%s", first, v.Export.Epoch, evs, clip(c.procs[first].out.String()))
	}
	at, err := time.Parse(time.RFC3339Nano, found.Fields["stopped_at"])
	if err != nil {
		t.Fatalf("volume-stopped event without a valid stopped_at: %+v", *found)
	}
	if at.Before(sent.Add(-time.Second)) || at.After(exited) {
		t.Errorf("stopped_at %v not between the signal %v and the exit %v", at, sent, exited)
	}

	// (c) the volume fails over to the other replica and serves its data.
	v2 := c.waitServed("vol", v.Export.Epoch)
	if v2.Export.Node == first {
		t.Fatalf("volume still served by the stopped node %s", first)
	}
	cl2 := c.dial(v2)
	got := make([]byte, len(data))
	if err := cl2.ReadAt(got, 1<<20); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("data after failover: %v", err)
	}
	if err := cl2.WriteAt(data, 0, true); err != nil {
		t.Fatalf("write after failover: %v", err)
	}
}

// TestAgentStopTimes measures the exit time after SIGTERM of the primary's
// agent, of another node's and of the raft leader's, several times each
// (HACS_STOP_TIMES=N rounds; skipped without it: a measurement, not a
// check).
func TestAgentStopTimes(t *testing.T) {
	rounds, _ := strconv.Atoi(os.Getenv("HACS_STOP_TIMES"))
	if rounds <= 0 {
		t.Skip("a measurement: set HACS_STOP_TIMES=N to run it")
	}
	c := newStopCluster(t)
	status := func(name string) (cluster.Status, error) {
		var st cluster.Status
		resp, err := c.hc().Get(c.api(name) + "/v1/status")
		if err != nil {
			return st, err
		}
		defer resp.Body.Close()
		return st, json.NewDecoder(resp.Body).Decode(&st)
	}
	leader := func() string {
		var lead string
		c.waitFor("a raft leader", 30*time.Second, func() bool {
			ids := map[string]string{}
			l := ""
			for name := range c.ports {
				st, err := status(name)
				if err != nil {
					return false
				}
				ids[st.MemberID] = name
				if st.RaftLeader != "" {
					l = st.RaftLeader
				}
			}
			lead = ids[l]
			return lead != ""
		})
		return lead
	}
	roles := []string{"primary", "other", "leader"}
	if os.Getenv("HACS_STOP_FAULTS") != "" {
		// the primary's stop while its other replica is paused (a silent
		// replica: its flush waits for it), and while both other agents
		// are (no quorum: the events and the revocation wait for the
		// store)
		roles = []string{"primary-silent-replica", "primary-no-quorum"}
	}
	times := map[string][]time.Duration{}
	for i := 0; i < rounds; i++ {
		for _, role := range roles {
			v := c.waitServed("vol", 0)
			lead := leader()
			var victim string
			var paused []string
			switch role {
			case "primary":
				victim = v.Export.Node
			case "primary-silent-replica", "primary-no-quorum":
				victim = v.Export.Node
				for n := range c.ports {
					if n != victim && (role == "primary-no-quorum" || slices.Contains(v.Placement, n)) {
						paused = append(paused, n)
					}
				}
			case "leader":
				victim = lead
			default:
				for _, n := range slices.Sorted(maps.Keys(c.ports)) {
					if n != v.Export.Node && n != lead {
						victim = n
					}
				}
			}
			if victim == "" {
				continue
			}
			if len(paused) > 0 {
				cl := c.dial(v)
				if err := cl.WriteAt(make([]byte, 4096), 0, false); err != nil {
					t.Fatal(err)
				}
				for _, n := range paused {
					c.procs[n].cmd.Process.Signal(syscall.SIGSTOP)
				}
				// a write in flight on the silent replica
				go cl.WriteAt(make([]byte, 4096), 8192, false)
				time.Sleep(200 * time.Millisecond)
			}
			d := c.sigterm(victim)
			for _, n := range paused {
				c.procs[n].cmd.Process.Signal(syscall.SIGCONT)
			}
			stored := false
			c.waitFor("the events readable", 30*time.Second, func() bool {
				evs, err := c.stopEvents(victim, "vol")
				for _, ev := range evs {
					stored = stored || ev.Fields["epoch"] == strconv.FormatUint(v.Export.Epoch, 10) && victim == v.Export.Node
				}
				return err == nil
			})
			t.Logf("round %d: %s (%s; primary %s, leader %s) exited in %v (its volume-stopped event stored: %v)", i, victim, role, v.Export.Node, lead, d.Round(time.Millisecond), stored)
			times[role] = append(times[role], d)
			if os.Getenv("HACS_STOP_LOG") != "" {
				t.Logf("log of %s:\n%s", victim, tailLines(c.procs[victim].out.String(), 200))
			}
			c.start(victim)
			c.waitOnline(3)
			c.waitServed("vol", 0)
		}
	}
	for _, role := range roles {
		ds := times[role]
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		if len(ds) > 0 {
			t.Logf("%s: n=%d median %v max %v all %v", role, len(ds), ds[len(ds)/2].Round(time.Millisecond), ds[len(ds)-1].Round(time.Millisecond), ds)
		}
	}
}

// tailLines is the last n lines of s.
func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// newStopCluster starts 3 agents (etcd's log level from
// HACS_STOP_ETCD_LOG, for looking into a slow stop) serving a 2-replica
// volume "vol".
func newStopCluster(t *testing.T) *rmCluster {
	t.Helper()
	var extra []string
	if l := os.Getenv("HACS_STOP_ETCD_LOG"); l != "" {
		extra = append(extra, "--etcd-log-level", l)
	}
	c := newRMCluster(t, 3, extra...)
	if code, err := c.call("POST", "/v1/volumes", rm.VolumeRequest{Name: "vol", Size: 16 << 20, Replicas: 2}, nil); err != nil || code != 201 {
		t.Fatalf("create: %d %v", code, err)
	}
	return c
}
