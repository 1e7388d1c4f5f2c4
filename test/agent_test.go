package test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/testnet"

	rm "github.com/hacs/hacs/internal/agent"
	"github.com/hacs/hacs/internal/nbd"
)

// rmCluster is a cluster of `hacs agent` processes on loopback running the
// resource manager.
type rmCluster struct {
	extra  []string // more agent flags
	t      *testing.T
	dir    string
	procs  map[string]*proc
	ports  map[string][5]string // api, peer, client, replica, export
	client *http.Client
}

// nodePorts draws the addresses of an agent: api, peer, client, replica,
// export.
func nodePorts(t testing.TB) [5]string {
	var p [5]string
	for k := range p {
		p[k] = testnet.FreeAddr(t)
	}
	return p
}

func newRMCluster(t *testing.T, n int, extra ...string) *rmCluster {
	c := &rmCluster{t: t, dir: shortTempDir(t), procs: map[string]*proc{}, ports: map[string][5]string{}, extra: extra}
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("n%d", i)
		c.ports[name] = nodePorts(t)
		c.start(name)
	}
	c.waitOnline(n)
	return c
}

func (c *rmCluster) start(name string) {
	c.t.Helper()
	p := c.ports[name]
	args := []string{"agent", "--data-dir", filepath.Join(c.dir, name), "--name", name,
		"--api", p[0], "--peer-listen", p[1], "--client-listen", p[2], "--replica-listen", p[3], "--export-listen", p[4],
		"--replica-timeout", "2s"}
	args = append(args, c.extra...)
	if name != "n1" && !slices.Contains(c.extra, "--etcd-endpoints") {
		if _, err := os.Stat(filepath.Join(c.dir, name, "node.json")); err != nil {
			// a new node: a join token of its own from n1
			tok := strings.TrimSpace(mustRun(c.t, hacsBin, "cluster", "token", "create", "--data-dir", filepath.Join(c.dir, "n1")).stdout)
			args = append(args, "--join", c.ports["n1"][0], "--token", tok)
		}
	}
	pr := startProc(c.t, false, hacsBin, args...)
	pr.waitReady(c.t, "API", func() error {
		resp, err := c.hc().Get("https://" + p[0] + "/v1/volumes")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	})
	c.procs[name] = pr
}

func (c *rmCluster) kill(name string) {
	p := c.procs[name]
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

func (c *rmCluster) api(name string) string { return "https://" + c.ports[name][0] }

// hc is an HTTPS client of the cluster's API with its admin token.
func (c *rmCluster) hc() *http.Client {
	if c.client == nil {
		c.client = apiHTTP(c.t, filepath.Join(c.dir, "n1"))
	}
	return c.client
}

// call asks the first live agent.
func (c *rmCluster) call(method, path string, body, out any) (int, error) {
	var lastErr error
	for name, p := range c.procs {
		if p.exited() {
			continue
		}
		var rd *bytes.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		} else {
			rd = bytes.NewReader(nil)
		}
		req, _ := http.NewRequest(method, c.api(name)+path, rd)
		resp, err := c.hc().Do(req)
		if err != nil {
			lastErr = err
			continue
		}
		defer resp.Body.Close()
		if resp.StatusCode == 503 {
			lastErr = fmt.Errorf("%s: 503", name)
			continue
		}
		if out != nil && resp.StatusCode/100 == 2 {
			if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
				return resp.StatusCode, err
			}
		}
		return resp.StatusCode, nil
	}
	return 0, lastErr
}

func (c *rmCluster) waitOnline(n int) {
	c.t.Helper()
	c.waitFor(fmt.Sprintf("%d nodes online", n), 60*time.Second, func() bool {
		var m struct {
			Nodes []struct {
				Online bool `json:"online"`
			} `json:"nodes"`
		}
		if _, err := c.call("GET", "/v1/nodes", nil, &m); err != nil {
			return false
		}
		on := 0
		for _, x := range m.Nodes {
			if x.Online {
				on++
			}
		}
		return on == n
	})
}

func (c *rmCluster) waitFor(what string, limit time.Duration, cond func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			c.t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (c *rmCluster) volume(name string) rm.VolumeInfo {
	var v rm.VolumeInfo
	c.call("GET", "/v1/volumes/"+name, nil, &v)
	return v
}

func (c *rmCluster) waitServed(name string, epochAbove uint64) rm.VolumeInfo {
	c.t.Helper()
	var v rm.VolumeInfo
	c.waitFor(name+" served", 60*time.Second, func() bool {
		v = c.volume(name)
		return v.Export != nil && v.Export.Epoch > epochAbove
	})
	return v
}

func (c *rmCluster) dial(v rm.VolumeInfo) *nbd.Client {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := nbd.Dial(ctx, "tcp", v.Export.Addr, nbd.ClientOptions{Export: v.Export.Name, TLS: exportTLS(c.t, filepath.Join(c.dir, "n1"))})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cl.Close() })
	return cl
}

func TestResourceManagerFailover(t *testing.T) {
	c := newRMCluster(t, 3)
	code, err := c.call("POST", "/v1/volumes", rm.VolumeRequest{Name: "vol", Size: 64 << 20, Replicas: 2}, nil)
	if err != nil || code != 201 {
		t.Fatalf("create: %d %v", code, err)
	}
	// Impossible requests are refused with a reason.
	if code, _ := c.call("POST", "/v1/volumes", rm.VolumeRequest{Name: "big", Size: 1 << 20, Replicas: 4}, nil); code != 409 {
		t.Fatalf("4 replicas on 3 nodes: status %d", code)
	}
	if code, _ := c.call("POST", "/v1/volumes", rm.VolumeRequest{Name: "vol", Size: 1 << 20}, nil); code != 409 {
		t.Fatalf("duplicate: status %d", code)
	}
	v := c.waitServed("vol", 0)
	first := v.Export.Node
	if len(v.Placement) != 2 || v.State.Primary != first {
		t.Fatalf("placement %v primary %s", v.Placement, v.State.Primary)
	}
	cl := c.dial(v)
	data := bytes.Repeat([]byte("hacs!"), 220000)[:1<<20]
	if err := cl.WriteAt(data, 4<<20, true); err != nil {
		t.Fatal(err)
	}

	// SIGKILL of the primary's agent: the other replica takes over.
	start := time.Now()
	c.kill(first)
	v2 := c.waitServed("vol", v.Export.Epoch)
	t.Logf("failover from %s to %s in %v", first, v2.Export.Node, time.Since(start).Round(time.Millisecond))
	if v2.Export.Node == first {
		t.Fatal("primary did not move")
	}
	cl2 := c.dial(v2)
	got := make([]byte, len(data))
	if err := cl2.ReadAt(got, 4<<20); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("data lost in failover")
	}
	if err := cl2.WriteAt(bytes.Repeat([]byte{7}, 65536), 0, false); err != nil {
		t.Fatal(err)
	}

	// The old node returns, resyncs and is in sync again.
	c.start(first)
	// hacs volume resync-wait returns once it is, printing plain progress
	// lines (not a terminal).
	cluster := c.ports["n1"][0] + "," + c.ports["n2"][0] + "," + c.ports["n3"][0]
	rw := exec.Command(hacsBin, append([]string{"volume", "resync-wait", "vol", "--timeout", "60s", "--cluster", cluster}, cliCreds(filepath.Join(c.dir, "n1"))...)...)
	var rwErr bytes.Buffer
	rw.Stderr = &rwErr
	out, err := rw.Output()
	t.Logf("resync-wait: %s%s", out, rwErr.String())
	if err != nil || !strings.HasPrefix(string(out), "vol: 2 replica(s) in sync") || strings.Contains(rwErr.String(), "\x1b") {
		t.Fatalf("resync-wait: %v\n%s%s", err, out, rwErr.String())
	}
	if v := c.volume("vol"); v.State == nil || len(v.State.InSync) != 2 {
		t.Fatalf("after resync-wait: %+v", v.State)
	}
	var rep struct {
		Differences []any `json:"differences"`
		Compared    []string
	}
	if code, err := c.call("POST", "/v1/volumes/vol/verify", nil, &rep); err != nil || code != 200 || len(rep.Differences) != 0 {
		t.Fatalf("verify: %d %v %+v", code, err, rep)
	}

	// Standby of the primary's node hands the volume over.
	cur := c.volume("vol")
	if code, err := c.call("POST", "/v1/nodes/"+cur.Export.Node+"/standby", map[string]bool{"standby": true}, nil); err != nil || code/100 != 2 {
		t.Fatalf("standby: %d %v", code, err)
	}
	v3 := c.waitServed("vol", cur.Export.Epoch)
	if v3.Export.Node == cur.Export.Node {
		t.Fatal("volume stayed on a standby node")
	}
	cl3 := c.dial(v3)
	if err := cl3.ReadAt(got, 4<<20); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("data after standby move: %v", err)
	}

	// hacs volume restart: stopped, then served again at a newer epoch.
	out, err = exec.Command(hacsBin, append([]string{"volume", "restart", "vol", "--cluster", cluster}, cliCreds(filepath.Join(c.dir, "n1"))...)...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "vol: restarted, served by") {
		t.Fatalf("volume restart: %v\n%s", err, out)
	}
	v4 := c.waitServed("vol", v3.Export.Epoch+1)
	cl4 := c.dial(v4)
	if err := cl4.ReadAt(got, 4<<20); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("data after restart: %v", err)
	}
}

func TestReReplicationAndSurplusRemoval(t *testing.T) {
	c := newRMCluster(t, 3, "--re-replicate-after", "3s")
	if code, err := c.call("POST", "/v1/volumes", rm.VolumeRequest{Name: "rr", Size: 32 << 20, Replicas: 2}, nil); err != nil || code != 201 {
		t.Fatalf("create: %d %v", code, err)
	}
	v := c.waitServed("rr", 0)
	cl := c.dial(v)
	data := bytes.Repeat([]byte{0x5a}, 3<<20)
	if err := cl.WriteAt(data, 1<<20, true); err != nil {
		t.Fatal(err)
	}
	var secondary string
	for _, p := range v.Placement {
		if p != v.Export.Node {
			secondary = p
		}
	}
	// The secondary's node stays down longer than re-replicate-after: a
	// new replica is built on the third node.
	c.kill(secondary)
	c.waitFor("a replacement replica in sync", 90*time.Second, func() bool {
		v := c.volume("rr")
		return v.State != nil && len(v.State.InSync) == 2 && !slices.Contains(v.State.InSync, secondary)
	})
	got := make([]byte, len(data))
	if err := cl.ReadAt(got, 1<<20); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("data after re-replication: %v", err)
	}
	var rep struct {
		Differences []any    `json:"differences"`
		Compared    []string `json:"compared"`
	}
	if code, err := c.call("POST", "/v1/volumes/rr/verify", nil, &rep); err != nil || code != 200 || len(rep.Differences) != 0 || len(rep.Compared) != 1 {
		t.Fatalf("verify after re-replication: %d %v %+v", code, err, rep)
	}
	// The old node returns: its surplus replica is removed and deleted.
	c.start(secondary)
	c.waitFor("placement back to 2 replicas without "+secondary, 60*time.Second, func() bool {
		v := c.volume("rr")
		return len(v.Placement) == 2 && !slices.Contains(v.Placement, secondary)
	})
	leftover := filepath.Join(c.dir, secondary, "pool", "volumes", "rr")
	c.waitFor("the surplus replica deleted on "+secondary, 60*time.Second, func() bool {
		_, err := os.Stat(leftover)
		return os.IsNotExist(err)
	})
}
