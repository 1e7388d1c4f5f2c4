package test

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	rm "github.com/hacs/hacs/internal/agent"
	"github.com/hacs/hacs/internal/nbd"
	"github.com/hacs/hacs/internal/policy"
)

// TestAttachSkipsHangingAgent: hacs volume attach follows its volume's
// primary even when the first agent of its --cluster list takes requests
// and never answers (here: its process stopped with SIGSTOP; in the chaos
// runs: an agent cut off by a partition, or without quorum and stuck
// checking the API token). It used to ask the agents in turn, each until
// it answered, so the follower's lookup of the new primary hung on that
// agent and the client's I/O with it (up to 23 s in the chaos runs, until
// the agent answered; here it would be --max-pause).
func TestAttachSkipsHangingAgent(t *testing.T) {
	c := newRMCluster(t, 3)
	req := rm.VolumeRequest{Name: "hang", Size: 32 << 20, Replicas: 2, Policy: policy.Constraints{Prefer: []string{"n2", "n3"}}}
	if code, err := c.call("POST", "/v1/volumes", req, nil); err != nil || code != 201 {
		t.Fatalf("create: %d %v", code, err)
	}
	v := c.waitServed("hang", 0)
	if v.Export.Node != "n2" || slices.Contains(v.Placement, "n1") {
		t.Fatalf("volume served by %s with replicas %v; the test needs n2 serving and no replica on n1", v.Export.Node, v.Placement)
	}
	sock := filepath.Join(shortTempDir(t), "hang.sock")
	apis := []string{c.ports["n1"][0], c.ports["n2"][0], c.ports["n3"][0]} // n1 first
	args := append([]string{"volume", "attach", "hang", "--listen", "unix:" + sock, "--cluster", strings.Join(apis, ","), "--max-pause", "60s"},
		append(cliCreds(filepath.Join(c.dir, "n1")), exportCreds(filepath.Join(c.dir, "n1"))...)...)
	att := startProc(t, false, hacsBin, args...)
	att.waitAccepting(t, "unix", sock)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	cl, err := nbd.Dial(ctx, "unix", sock, nbd.ClientOptions{Export: "hang"})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	block := []byte(strings.Repeat("h", 4096))
	if err := cl.WriteAt(block, 0, false); err != nil {
		t.Fatal(err)
	}

	// n1's agent stops answering (its sockets still accept connections).
	n1 := c.procs["n1"].cmd.Process
	if err := n1.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n1.Signal(syscall.SIGCONT) })
	// The primary moves to n3 (once a DC runs on n2 or n3): the follower's
	// connection to n2 ends and it must find n3.
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, err := c.callOn("n2", "POST", "/v1/volumes/hang/prefer", map[string]any{"nodes": []string{"n3"}}, nil)
		if err == nil && code/100 == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("prefer n3: %d %v", code, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Write until the volume has moved, and once more; every write must
	// end soon.
	moveBy := time.Now().Add(30 * time.Second)
	var worst time.Duration
	moved := false
	for i := 0; ; i++ {
		start := time.Now()
		done := make(chan error, 1)
		go func() { done <- cl.WriteAt(block, int64(i%64)*4096, false) }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("write %d: %v", i, err)
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("write %d still waits after 15 s: the attach process is stuck (on the stopped agent n1?)", i)
		}
		worst = max(worst, time.Since(start))
		if moved {
			break // a write after the move went through
		}
		var now rm.VolumeInfo
		if code, err := c.callOn("n3", "GET", "/v1/volumes/hang", nil, &now); err == nil && code == 200 &&
			now.Export != nil && now.Export.Node == "n3" && now.Export.Epoch > v.Export.Epoch {
			moved = true
		}
		if time.Now().After(moveBy) {
			t.Fatalf("the volume did not move to n3 within 30 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("longest write across the move with n1's agent stopped: %v", worst.Round(time.Millisecond))
	if worst > 8*time.Second {
		t.Errorf("a write waited %v across a planned move", worst.Round(time.Millisecond))
	}
}
