package test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/nbd"
)

// fileWriter creates files with known checksums in dir until stopped,
// recording the longest pause between two completed files.
type fileWriter struct {
	dir      string
	mu       sync.Mutex
	sums     map[string][32]byte
	maxPause time.Duration
	err      error
	stop     chan struct{}
	done     chan struct{}
}

func startWriter(dir string) *fileWriter {
	w := &fileWriter{dir: dir, sums: map[string][32]byte{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		last := time.Now()
		for i := 0; ; i++ {
			select {
			case <-w.stop:
				return
			default:
			}
			name := filepath.Join(dir, fmt.Sprintf("f%05d", i))
			data := []byte(strings.Repeat(fmt.Sprintf("%s-%d;", name, i), 300+i%700))
			f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
			if err == nil {
				_, err = f.Write(data)
				if err == nil {
					err = f.Sync()
				}
				if cerr := f.Close(); err == nil {
					err = cerr
				}
			}
			w.mu.Lock()
			if err != nil {
				w.err = fmt.Errorf("writing %s: %w", name, err)
				w.mu.Unlock()
				return
			}
			w.sums[name] = sha256.Sum256(data)
			w.maxPause = max(w.maxPause, time.Since(last))
			w.mu.Unlock()
			last = time.Now()
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return w
}

func (w *fileWriter) finish(t *testing.T) time.Duration {
	t.Helper()
	close(w.stop)
	<-w.done
	if w.err != nil {
		t.Fatalf("the writer saw an error: %v", w.err)
	}
	if len(w.sums) < 10 {
		t.Fatalf("the writer wrote only %d files", len(w.sums))
	}
	return w.maxPause
}

func (w *fileWriter) verify(t *testing.T) {
	t.Helper()
	for name, sum := range w.sums {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if sha256.Sum256(b) != sum {
			t.Fatalf("%s does not match its checksum", name)
		}
	}
}

func mustCmd(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestEndToEndExt4Failover is issue 8's proof: ext4 on an attached volume
// (FUSE file view + loop) keeps working while the primary's agent and then
// a secondary's agent are killed; the filesystem and every replica check
// out afterwards.
func TestEndToEndExt4Failover(t *testing.T) {
	requireRoot(t, "losetup, mount")
	requireTools(t, "losetup", "mkfs.ext4", "e2fsck", "fusermount3")
	c := newRMCluster(t, 3)
	if code, err := c.call("POST", "/v1/volumes", map[string]any{"name": "e2e", "size": 256 << 20, "replicas": 2}, nil); err != nil || code != 201 {
		t.Fatalf("create: %d %v", code, err)
	}
	v := c.waitServed("e2e", 0)
	// A secure cluster (the default) offers NBD TLS on its exports, and
	// attach then connects with TLS, checked against the cluster CA.
	if !v.Export.TLS {
		t.Fatalf("the export of a secure cluster does not offer TLS: %+v", v.Export)
	}
	dir := shortTempDir(t)
	fuseDir := filepath.Join(dir, "fuse")
	var apis []string
	for _, p := range c.ports {
		apis = append(apis, p[0])
	}
	att := startProc(t, false, hacsBin, append([]string{"volume", "attach", "e2e", "--fuse", fuseDir, "--cluster", strings.Join(apis, ",")}, append(cliCreds(filepath.Join(c.dir, "n1")), exportCreds(filepath.Join(c.dir, "n1"))...)...)...)
	file := filepath.Join(fuseDir, "e2e")
	att.waitReady(t, "FUSE file", func() error { _, err := os.Stat(file); return err })
	loop := strings.TrimSpace(mustCmd(t, "losetup", "-f", "--show", "--direct-io=on", file))
	t.Cleanup(func() { exec.Command("losetup", "-d", loop).Run() })
	mustCmd(t, "mkfs.ext4", "-q", "-F", loop)
	mnt := filepath.Join(dir, "mnt")
	os.MkdirAll(mnt, 0o700)
	mustCmd(t, "mount", loop, mnt)
	mounted := true
	t.Cleanup(func() {
		if mounted {
			exec.Command("umount", "-l", mnt).Run()
		}
	})

	for _, victim := range []string{"primary", "secondary"} {
		cur := c.volume("e2e")
		node := cur.Export.Node
		if victim == "secondary" {
			for _, p := range cur.Placement {
				if p != node {
					node = p
				}
			}
		}
		sub := filepath.Join(mnt, victim)
		os.MkdirAll(sub, 0o700)
		w := startWriter(sub)
		time.Sleep(time.Second)
		killed := time.Now()
		c.kill(node)
		if victim == "primary" {
			c.waitServed("e2e", cur.Export.Epoch)
		}
		time.Sleep(2 * time.Second)
		pause := w.finish(t)
		t.Logf("%s %s killed: the writer's longest pause was %v (kill at +%v)", victim, node, pause.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond))
		w.verify(t)
		// The node returns and resyncs.
		restart := time.Now()
		c.start(node)
		c.waitFor(node+" in sync", 120*time.Second, func() bool {
			v := c.volume("e2e")
			return v.State != nil && len(v.State.InSync) == 2 && v.Mirror != nil && v.Mirror.Replicas[0].Connected && v.Mirror.Replicas[1].Connected
		})
		var sent int64
		for _, r := range c.volume("e2e").Mirror.Replicas {
			sent += r.ResyncSent
		}
		t.Logf("%s back in sync %v after its restart, resync sent %d bytes", node, time.Since(restart).Round(time.Millisecond), sent)
	}
	mustCmd(t, "sync")
	mustCmd(t, "umount", mnt)
	mounted = false
	mustCmd(t, "e2fsck", "-fn", loop)
	// The files are listed from the device with debugfs rather than by
	// mounting it again: a process that entered another mount namespace
	// while the filesystem was mounted (ip netns exec, run by a test
	// beside this one) still holds it, and the kernel then refuses a
	// second mount ("already mounted or mount point busy").
	for _, sub := range []string{"primary", "secondary"} {
		files := 0
		for _, line := range strings.Split(mustCmd(t, "debugfs", "-R", "ls -p /"+sub, loop), "\n") {
			// /INODE/MODE/UID/GID/NAME/SIZE/
			f := strings.Split(strings.TrimSpace(line), "/")
			if len(f) == 8 && f[5] != "." && f[5] != ".." && strings.HasPrefix(f[2], "100") {
				files++
			}
		}
		if files < 10 {
			t.Fatalf("%s: %d files on the filesystem, want at least 10", sub, files)
		}
	}
	// Detach cleanly: loop device first, then the attach process, which
	// must flush, unmount its FUSE view and exit 0 on SIGTERM.
	mustCmd(t, "losetup", "-d", loop)
	att.stop()
	if att.err != nil {
		t.Fatalf("attach did not exit cleanly: %v\n%s", att.err, clip(att.out.String()))
	}
	var rep struct {
		Differences []any    `json:"differences"`
		Compared    []string `json:"compared"`
	}
	if code, err := c.call("POST", "/v1/volumes/e2e/verify", nil, &rep); err != nil || code != 200 || len(rep.Differences) != 0 || len(rep.Compared) != 1 {
		t.Fatalf("verify: %d %v %+v", code, err, rep)
	}
	_ = v
}

// TestAttachRestart: the vhost's attach process itself is killed and
// restarted; a client reconnects and finds every acknowledged write.
func TestAttachRestart(t *testing.T) {
	c := newRMCluster(t, 3)
	if code, err := c.call("POST", "/v1/volumes", map[string]any{"name": "att", "size": 32 << 20, "replicas": 2}, nil); err != nil || code != 201 {
		t.Fatalf("create: %d %v", code, err)
	}
	c.waitServed("att", 0)
	dir := shortTempDir(t)
	sock := filepath.Join(dir, "att.sock")
	var apis []string
	for _, p := range c.ports {
		apis = append(apis, p[0])
	}
	args := append([]string{"volume", "attach", "att", "--listen", "unix:" + sock, "--cluster", strings.Join(apis, ",")}, append(cliCreds(filepath.Join(c.dir, "n1")), exportCreds(filepath.Join(c.dir, "n1"))...)...)
	att := startProc(t, false, hacsBin, args...)
	att.waitAccepting(t, "unix", sock)
	dial := func() *nbd.Client {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cl, err := nbd.Dial(ctx, "unix", sock, nbd.ClientOptions{Export: "att"})
		if err != nil {
			t.Fatal(err)
		}
		return cl
	}
	cl := dial()
	want := map[int64]byte{}
	for i := int64(0); i < 64; i++ {
		b := byte(i + 1)
		if err := cl.WriteAt([]byte(strings.Repeat(string(rune('A'+i%26)), 4096)), i*65536, false); err != nil {
			t.Fatal(err)
		}
		want[i*65536] = 'A' + byte(i%26)
		_ = b
	}
	if err := cl.Flush(); err != nil {
		t.Fatal(err)
	}
	cl.Close()
	att.cmd.Process.Signal(syscall.SIGKILL)
	<-att.done
	att2 := startProc(t, true, hacsBin, args...)
	att2.waitAccepting(t, "unix", sock)
	cl = dial()
	defer cl.Close()
	got := make([]byte, 4096)
	for off, b := range want {
		if err := cl.ReadAt(got, off); err != nil {
			t.Fatal(err)
		}
		if got[0] != b || got[4095] != b {
			t.Fatalf("block at %d holds %q after the attach restart, want %q", off, got[0], b)
		}
	}
}
