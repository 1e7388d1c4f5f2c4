package test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/testnet"

	"github.com/hacs/hacs/internal/mirror"
	"github.com/hacs/hacs/internal/nbd"
)

// Replication across processes: three `hacs replica node` processes on
// Unix sockets, one of them primary; replicas and the primary are killed
// with SIGKILL under load.

const (
	replBlock = 64 << 10 // workload block: one resync chunk
	replSize  = 64 << 20
	replNBlk  = replSize / replBlock
)

type replCluster struct {
	t     *testing.T
	dir   string
	nodes map[string]*proc
	http  map[string]string
}

func (c *replCluster) sock(id string) string { return filepath.Join(c.dir, id+".sock") }

// start runs node id; with primary set it also serves the volume.
func (c *replCluster) start(id string, primary bool) *proc {
	args := []string{"replica", "node", "--dir", filepath.Join(c.dir, id), "--id", id, "--listen", "unix:" + c.sock(id)}
	if primary {
		c.http[id] = testnet.FreeAddr(c.t)
		args = append(args, "--primary", "vol", "--size", fmt.Sprint(replSize), "--state", filepath.Join(c.dir, "vol.state"),
			"--export", "unix:"+filepath.Join(c.dir, "export-"+id+".sock"), "--http", c.http[id], "--timeout", "2s")
		for _, p := range []string{"n1", "n2", "n3"} {
			if p != id {
				args = append(args, "--peer", p+"=unix:"+c.sock(p))
			}
		}
	}
	p := startProc(c.t, false, hacsBin, args...)
	p.waitAccepting(c.t, "unix", c.sock(id))
	if primary {
		p.waitAccepting(c.t, "unix", filepath.Join(c.dir, "export-"+id+".sock"))
	}
	c.nodes[id] = p
	return p
}

func (c *replCluster) kill(id string) {
	p := c.nodes[id]
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

func (c *replCluster) status(id string) mirror.Status {
	c.t.Helper()
	resp, err := http.Get("http://" + c.http[id] + "/v1/status")
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	var s mirror.Status
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		c.t.Fatal(err)
	}
	return s
}

func (c *replCluster) waitInSync(primary string, n int) mirror.Status {
	c.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		s := c.status(primary)
		in := 0
		for _, r := range s.Replicas {
			if r.State == "in-sync" {
				in++
			}
		}
		if in == n {
			return s
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("replicas not in sync: %+v", s.Replicas)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *replCluster) verify(primary string) mirror.VerifyReport {
	c.t.Helper()
	resp, err := http.Post("http://"+c.http[primary]+"/v1/verify", "", nil)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	var r mirror.VerifyReport
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		c.t.Fatal(err)
	}
	return r
}

func (c *replCluster) dial(primary string) *nbd.Client {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := nbd.Dial(ctx, "unix", filepath.Join(c.dir, "export-"+primary+".sock"), nbd.ClientOptions{Export: "vol"})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cl.Close() })
	return cl
}

// history records, per block, the acknowledged tag and the tags attempted
// since (which may or may not have landed).
type history struct {
	ackedBytes atomic.Int64
	mu         sync.Mutex
	acked      map[int]uint64
	pending    map[int][]uint64
}

func tagBlock(tag uint64) []byte {
	b := make([]byte, replBlock)
	for i := 0; i < replBlock; i += 8 {
		binary.BigEndian.PutUint64(b[i:], tag)
	}
	return b
}

// load runs writers until stop closes; it returns the bytes acknowledged.
func (h *history) load(cl *nbd.Client, writers int, seed uint64, stop <-chan struct{}, limit uint64) int64 {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var total int64
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			for seq := uint64(1); limit == 0 || seq <= limit; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				// Writers own disjoint blocks, so each block's history is
				// sequential.
				blk := rng.IntN(replNBlk/writers)*writers + w
				tag := seed<<40 | uint64(w)<<32 | seq
				h.mu.Lock()
				h.pending[blk] = append(h.pending[blk], tag)
				h.mu.Unlock()
				if err := cl.WriteAt(tagBlock(tag), int64(blk)*replBlock, false); err != nil {
					return // unacknowledged: stays pending
				}
				h.mu.Lock()
				h.acked[blk] = tag
				h.pending[blk] = nil
				h.mu.Unlock()
				h.ackedBytes.Add(replBlock)
				mu.Lock()
				total += replBlock
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	return total
}

// check reads every block through cl and compares with the history.
func (h *history) check(t *testing.T, cl *nbd.Client) {
	t.Helper()
	buf := make([]byte, replBlock)
	for blk := 0; blk < replNBlk; blk++ {
		if err := cl.ReadAt(buf, int64(blk)*replBlock); err != nil {
			t.Fatal(err)
		}
		got := binary.BigEndian.Uint64(buf)
		for i := 8; i < replBlock; i += 8 {
			if binary.BigEndian.Uint64(buf[i:]) != got {
				t.Fatalf("block %d is torn: %#x then %#x at %d", blk, got, binary.BigEndian.Uint64(buf[i:]), i)
			}
		}
		h.mu.Lock()
		ok := got == h.acked[blk]
		for _, p := range h.pending[blk] {
			ok = ok || got == p
		}
		want := h.acked[blk]
		h.mu.Unlock()
		if !ok {
			t.Fatalf("block %d holds %#x, want the acknowledged %#x (or a later unacknowledged write)", blk, got, want)
		}
	}
}

func TestReplicationAcrossProcesses(t *testing.T) {
	c := &replCluster{t: t, dir: shortTempDir(t), nodes: map[string]*proc{}, http: map[string]string{}}
	c.start("n2", false)
	c.start("n3", false)
	c.start("n1", true)
	cl := c.dial("n1")
	h := &history{acked: map[int]uint64{}, pending: map[int][]uint64{}}

	// 1. Load, then n3 is killed mid-load; writes go on without it.
	stop := make(chan struct{})
	done := make(chan int64)
	go func() { done <- h.load(cl, 4, 1, stop, 0) }()
	time.Sleep(500 * time.Millisecond)
	before := h.ackedBytes.Load()
	c.kill("n3")
	close(stop)
	<-done
	if s := c.status("n1"); s.Replicas[2].State == "in-sync" {
		t.Fatalf("n3 still in sync after SIGKILL: %+v", s.Replicas[2])
	}
	// A bounded number of writes while n3 is away (2 x 50 blocks).
	h.load(cl, 2, 2, make(chan struct{}), 50)
	away := h.ackedBytes.Load() - before

	// 2. n3 restarts and resyncs only what it missed.
	c.start("n3", false)
	s := c.waitInSync("n1", 3)
	var sent int64
	for _, r := range s.Replicas {
		if r.ID == "n3" {
			sent = r.ResyncSent
		}
	}
	t.Logf("n3 resync sent %d bytes; %d bytes were written while it was away (plus those in flight when it died)", sent, away)
	// Bound: what was written while away, plus the blocks in flight when
	// it was killed (at most one per writer, plus the hot regions'
	// compare finding nothing else as its page cache survived).
	if limit := away + 4*replBlock; sent > limit {
		t.Fatalf("resync sent %d bytes, more than the %d written while n3 was away", sent, limit)
	}
	if r := c.verify("n1"); len(r.Differences) != 0 || len(r.Compared) != 2 {
		t.Fatalf("verify after resync: %+v", r)
	}
	h.check(t, cl)

	// 3. The primary is killed with SIGKILL mid-load; n2 takes over.
	stop = make(chan struct{})
	go func() { done <- h.load(cl, 4, 3, stop, 0) }()
	time.Sleep(500 * time.Millisecond)
	c.kill("n1")
	close(stop)
	<-done
	c.nodes["n2"].stop()
	c.start("n2", true)
	cl2 := c.dial("n2")
	h.check(t, cl2) // every acknowledged write survived
	// n1 comes back as a plain replica and is brought in sync.
	c.start("n1", false)
	c.waitInSync("n2", 3)
	if r := c.verify("n2"); len(r.Differences) != 0 || len(r.Compared) != 2 {
		t.Fatalf("verify after failover: %+v", r)
	}
	if s := c.status("n2"); s.Epoch != 2 {
		t.Fatalf("epoch after takeover %d, want 2", s.Epoch)
	}
	// More writes on the new primary reach everyone.
	stop = make(chan struct{})
	go func() { done <- h.load(cl2, 2, 4, stop, 0) }()
	time.Sleep(300 * time.Millisecond)
	close(stop)
	<-done
	h.check(t, cl2)
	if r := c.verify("n2"); len(r.Differences) != 0 {
		t.Fatalf("final verify: %+v", r)
	}
}
