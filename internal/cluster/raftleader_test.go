package cluster

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"
)

// TestRaftLeaderMovesOffServingNodes: the DC keeps the etcd raft leader off
// itself and, when the leader's node serves volumes (cost above 0), moves it
// to a voter that serves none; when every other voter serves volumes, it
// leaves the leader where it is.
func TestRaftLeaderMovesOffServingNodes(t *testing.T) {
	c1 := testConfig(t, "r1")
	c1.JoinTokenUses = 2
	n1 := startNode(t, c1)
	tok, err := os.ReadFile(c1.DataDir + "/join-token")
	if err != nil {
		t.Fatal(err)
	}
	nodes := map[string]*Node{"r1": n1}
	for _, name := range []string{"r2", "r3"} {
		c := testConfig(t, name)
		c.Join, c.Token = n1.APIAddr(), string(tok)
		nodes[name] = startNode(t, c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := n1.WaitDC(ctx); err != nil {
		t.Fatal(err)
	}
	waitCond(t, 20*time.Second, func() bool {
		m := n1.Members()
		online := 0
		for _, ni := range m.Nodes {
			if ni.Online && ni.Voter {
				online++
			}
		}
		return online == 3
	})
	// the leader's node name, as every node sees it
	leaderName := func() string {
		lead := n1.etcd.Server.Lead()
		for name, n := range nodes {
			if uint64(n.etcd.Server.MemberID()) == lead {
				return name
			}
		}
		return ""
	}
	var mu sync.Mutex
	serving := map[string]int{}
	n1.SetRaftLeaderCost(func(node string) int { mu.Lock(); defer mu.Unlock(); return serving[node] })

	// off the DC
	waitCond(t, 20*time.Second, func() bool { l := leaderName(); return l != "" && l != "r1" })
	lead := leaderName()
	other := map[string]string{"r2": "r3", "r3": "r2"}[lead]

	// the leader's node serves a volume, the other non-DC voter none: moved there
	mu.Lock()
	serving[lead] = 1
	mu.Unlock()
	waitCond(t, 20*time.Second, func() bool { return leaderName() == other })

	// every non-DC voter serves volumes: no move (and never to the DC)
	mu.Lock()
	serving[other] = 2
	mu.Unlock()
	deadline := time.Now().Add(5 * time.Second) // more than the DC's 2 s between moves
	for time.Now().Before(deadline) {
		if l := leaderName(); l != other {
			t.Fatalf("raft leader moved to %s although every voter but the DC serves volumes", l)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
