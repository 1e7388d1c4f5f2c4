package test

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/cluster"
)

// netLab is a private network of namespaces: one per node, each with a veth
// into a bridge that lives in a namespace of its own, so that nothing in
// the host's network namespace changes. Addresses are 10.77.0.x/24, only
// inside these namespaces.
type netLab struct {
	t     testing.TB
	sw    string   // switch namespace (holds the bridge)
	nodes []string // node namespaces
}

func newNetLab(t testing.TB, n int) *netLab {
	t.Helper()
	requireRoot(t, "network namespaces, veth pairs and iptables")
	requireTools(t, "ip", "iptables")
	b := make([]byte, 3)
	rand.Read(b)
	id := hex.EncodeToString(b)
	lab := &netLab{t: t, sw: "hacs-" + id + "-sw"}
	// cleanup first, so that it runs even when setup fails half-way
	t.Cleanup(func() {
		for _, ns := range append([]string{lab.sw}, lab.nodes...) {
			runCmdTimeout(t, 10*time.Second, "ip", "netns", "del", ns)
		}
	})
	mustRun(t, "ip", "netns", "add", lab.sw)
	mustRun(t, "ip", "-n", lab.sw, "link", "set", "lo", "up")
	mustRun(t, "ip", "-n", lab.sw, "link", "add", "br0", "type", "bridge")
	mustRun(t, "ip", "-n", lab.sw, "link", "set", "br0", "up")
	for i := 1; i <= n; i++ {
		ns := fmt.Sprintf("hacs-%s-n%d", id, i)
		lab.nodes = append(lab.nodes, ns)
		port := fmt.Sprintf("p%d", i)
		mustRun(t, "ip", "netns", "add", ns)
		mustRun(t, "ip", "-n", ns, "link", "set", "lo", "up")
		mustRun(t, "ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", lab.sw)
		mustRun(t, "ip", "-n", lab.sw, "link", "set", port, "master", "br0")
		mustRun(t, "ip", "-n", lab.sw, "link", "set", port, "up")
		mustRun(t, "ip", "-n", ns, "addr", "add", lab.addr(i)+"/24", "dev", "eth0")
		mustRun(t, "ip", "-n", ns, "link", "set", "eth0", "up")
	}
	// (the agents joining each other over these addresses proves the
	// network works)
	return lab
}

func (l *netLab) addr(i int) string { return fmt.Sprintf("10.77.0.%d", i) }

// isolate drops every packet to and from node i (loopback excepted).
func (l *netLab) isolate(i int) {
	ns := l.nodes[i-1]
	for _, chain := range []string{"INPUT", "OUTPUT"} {
		dir := "-i"
		if chain == "OUTPUT" {
			dir = "-o"
		}
		mustRun(l.t, "ip", "netns", "exec", ns, "iptables", "-A", chain, dir, "lo", "-j", "ACCEPT")
		mustRun(l.t, "ip", "netns", "exec", ns, "iptables", "-A", chain, "-j", "DROP")
	}
}

// heal removes the DROP rules of node i.
func (l *netLab) heal(i int) {
	ns := l.nodes[i-1]
	mustRun(l.t, "ip", "netns", "exec", ns, "iptables", "-F", "INPUT")
	mustRun(l.t, "ip", "netns", "exec", ns, "iptables", "-F", "OUTPUT")
}

// TestClusterPartition: three agents in three network namespaces; the DC is
// cut off with iptables. It stops serving within its lease TTL, before the
// majority elects a new DC; after the partition heals it serves again as an
// ordinary member.
func TestClusterPartition(t *testing.T) {
	lab := newNetLab(t, 3)
	var all []*agent
	for i := 1; i <= 3; i++ {
		ip := lab.addr(i)
		all = append(all, &agent{
			t: t, name: fmt.Sprintf("p%d", i), dir: shortTempDir(t), netns: lab.nodes[i-1],
			api: ip + ":7700", peer: ip + ":7701", client: ip + ":7702",
		})
	}
	startCluster(t, all...)
	dcAgent := waitDCNotRaftLeader(t, all)
	idx := 0
	for i, a := range all {
		if a == dcAgent {
			idx = i + 1
		}
	}
	rest := without(all, dcAgent)
	t.Logf("isolating the DC %s (namespace %s)", dcAgent.name, dcAgent.netns)

	lab.isolate(idx)
	cut := time.Now()
	var stopped, elected time.Duration
	waitFor(t, clLeaseTTL+clSlack+time.Second, "isolated DC fenced and new DC elected", func() error {
		if stopped == 0 {
			st, err := dcAgent.status()
			if err != nil {
				return err
			}
			if !st.Serving.Serving && !st.Leadership.IsDC {
				stopped = time.Since(cut)
			}
		}
		if elected == 0 {
			if dc, err := agreedDC(rest); err == nil && dc != dcAgent.name {
				elected = time.Since(cut)
			}
		}
		if stopped == 0 || elected == 0 {
			return fmt.Errorf("isolated stopped after %v, new DC after %v", stopped, elected)
		}
		return nil
	})
	t.Logf("isolated DC stopped serving %v after the cut; the majority had a new DC %v after the cut", stopped.Round(time.Millisecond), elected.Round(time.Millisecond))
	if stopped > clLeaseTTL {
		t.Errorf("the isolated node stopped serving %v after the cut, later than its lease TTL %v", stopped, clLeaseTTL)
	}
	if elected <= stopped {
		t.Errorf("the majority elected a new DC (%v) before the isolated DC stopped serving (%v)", elected, stopped)
	}
	// the majority kept serving throughout, and sees the isolated node offline
	for _, a := range rest {
		st, err := a.status()
		if err != nil || !st.Serving.Serving {
			t.Fatalf("%s (majority) not serving: %+v %v", a.name, st.Serving, err)
		}
	}
	waitState(t, 2*time.Second, rest, dcAgent.name, cluster.StateOffline)
	st, _ := dcAgent.status()
	t.Logf("isolated node says: %s", st.Serving.Reason)

	// heal: the node serves again, as a member; the DC stays
	newDC, _ := waitDC(t, time.Second, rest)
	lab.heal(idx)
	dcAgent.waitRunning()
	waitState(t, 10*time.Second, all, dcAgent.name, cluster.StateOnline)
	if dc, _ := waitDC(t, 10*time.Second, all); dc != newDC {
		t.Fatalf("DC %s after healing, want %s", dc, newDC)
	}
}
