package attach

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/device"
	"github.com/hacs/hacs/internal/mirror"
	"github.com/hacs/hacs/internal/nbd"
	"github.com/hacs/hacs/internal/replica"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// node is a storage node: a replica host served over NBD, and, when it is
// the primary, the volume's mirror exported over NBD.
type node struct {
	id     string
	dir    string
	host   *replica.Host
	rsrv   *nbd.Server
	m      *mirror.Mirror
	esrv   *nbd.Server
	export string // NBD socket of the volume when primary
}

type cluster struct {
	mu    sync.Mutex // guards nodes' m, esrv, export
	t     *testing.T
	size  int64
	store *mirror.MemStore
	nodes map[string]*node
	ids   []string
}

func newCluster(t *testing.T, size int64, ids ...string) *cluster {
	c := &cluster{t: t, size: size, store: mirror.NewMemStore(), nodes: map[string]*node{}, ids: ids}
	base := shortDir(t)
	for _, id := range ids {
		dir := filepath.Join(base, id)
		h, err := replica.NewHost(filepath.Join(dir, "state"), replica.DirOpener{Dir: filepath.Join(dir, "data")})
		if err != nil {
			t.Fatal(err)
		}
		n := &node{id: id, dir: dir, host: h, rsrv: replica.NewServer(h, quiet)}
		ln, err := net.Listen("unix", filepath.Join(dir, "replica.sock"))
		if err != nil {
			t.Fatal(err)
		}
		go n.rsrv.Serve(ln)
		t.Cleanup(func() { n.rsrv.Close() })
		c.nodes[id] = n
	}
	if _, err := mirror.Init(context.Background(), c.store, "vol", ids[0], ids); err != nil {
		t.Fatal(err)
	}
	return c
}

func shortDir(t *testing.T) string {
	d, err := os.MkdirTemp("", "hacs-att-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// serve makes id the primary (taking over if needed) and exports the volume.
func (c *cluster) serve(id string) {
	c.t.Helper()
	st, _ := c.store.Load(context.Background(), "vol")
	if st.Primary != id {
		if _, err := mirror.TakeOver(context.Background(), c.store, "vol", id); err != nil {
			c.t.Fatal(err)
		}
	}
	n := c.nodes[id]
	var reps []mirror.Replica
	for _, rid := range c.ids {
		r := c.nodes[rid]
		reps = append(reps, mirror.Replica{ID: rid, Local: rid == id, Dial: func(ctx context.Context, epoch uint64) (device.Device, error) {
			if rid == id {
				return n.host.Acquire("vol", epoch, mirror.ReplicaSize(c.size))
			}
			return nbd.Dial(ctx, "unix", filepath.Join(r.dir, "replica.sock"),
				nbd.ClientOptions{Export: replica.ExportName("vol", epoch, mirror.ReplicaSize(c.size))})
		}})
	}
	m, err := mirror.Open(context.Background(), mirror.Config{Volume: "vol", Self: id, Size: c.size, Replicas: reps,
		Store: c.store, Logger: quiet, Timeout: time.Second, RetryInterval: 50 * time.Millisecond})
	if err != nil {
		c.t.Fatal(err)
	}
	esrv := nbd.NewServer(quiet)
	esrv.AddExport(nbd.Export{Name: "vol", Device: m})
	export := filepath.Join(n.dir, "export.sock")
	os.Remove(export)
	ln, err := net.Listen("unix", export)
	if err != nil {
		c.t.Fatal(err)
	}
	go esrv.Serve(ln)
	c.mu.Lock()
	n.m, n.esrv, n.export = m, esrv, export
	c.mu.Unlock()
	c.t.Cleanup(func() { c.crash(id) })
}

// crash stops a primary abruptly: its export and mirror vanish, no flush.
func (c *cluster) crash(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.nodes[id]
	n.export = ""
	if n.esrv != nil {
		n.esrv.Close()
		n.esrv = nil
	}
	if n.m != nil {
		n.m.Close()
		n.m = nil
	}
}

// resolver answers with the primary named in the store, once it serves.
func (c *cluster) resolver() Resolver {
	return func(ctx context.Context) (Target, error) {
		st, err := c.store.Load(ctx, "vol")
		if err != nil {
			return Target{}, err
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		n := c.nodes[st.Primary]
		if n == nil || n.export == "" {
			return Target{}, errors.New("no primary yet")
		}
		return Target{Network: "unix", Addr: n.export, Export: "vol", Epoch: st.Epoch}, nil
	}
}

func TestFollowerSurvivesFailoverWithoutErrors(t *testing.T) {
	const size = 32 << 20
	c := newCluster(t, size, "n1", "n2", "n3")
	c.serve("n1")
	f, err := NewFollower(context.Background(), c.resolver(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.MaxPause = 20 * time.Second

	// Writers record acknowledged blocks; any error fails the test.
	var mu sync.Mutex
	acked := map[int64]byte{}
	stop := make(chan struct{})
	errc := make(chan error, 8)
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				blk := int64((i*4+w)%512) * 65536
				val := byte(i%250 + 1)
				if err := f.WriteAt(bytes.Repeat([]byte{val}, 65536), blk, false); err != nil {
					errc <- fmt.Errorf("writer %d: %w", w, err)
					return
				}
				mu.Lock()
				acked[blk] = val
				mu.Unlock()
			}
		}(w)
	}
	time.Sleep(300 * time.Millisecond)
	// The primary crashes; after a moment the cluster promotes n2.
	c.crash("n1")
	time.Sleep(200 * time.Millisecond)
	c.serve("n2")
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	if f.Failovers() != 1 || f.Target().Epoch != 2 {
		t.Fatalf("failovers %d, epoch %d", f.Failovers(), f.Target().Epoch)
	}
	// Every acknowledged write reads back through the new primary.
	buf := make([]byte, 65536)
	for blk, val := range acked {
		if err := f.ReadAt(buf, blk); err != nil {
			t.Fatal(err)
		}
		if buf[0] != val || buf[65535] != val {
			t.Fatalf("block at %d holds %d, acknowledged %d", blk, buf[0], val)
		}
	}
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
}

func TestFollowerReturnsClientErrors(t *testing.T) {
	c := newCluster(t, 8<<20, "n1")
	c.serve("n1")
	f, err := NewFollower(context.Background(), c.resolver(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	start := time.Now()
	if err := f.ReadAt(make([]byte, 10), 8<<20); err == nil {
		t.Fatal("read past the end succeeded")
	}
	if time.Since(start) > 2*time.Second || f.Failovers() != 0 {
		t.Fatal("a client error was retried as a failover")
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestExt4OnFileViewAcrossFailover puts a real ext4 on the FUSE file view
// of a followed volume (losetup + mkfs + mount), fails the primary over in
// the middle, and checks the filesystem and the files afterwards.
func TestExt4OnFileViewAcrossFailover(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root (losetup, mount); make test runs as root in CI")
	}
	for _, tool := range []string{"losetup", "mkfs.ext4", "e2fsck", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s missing: install util-linux, e2fsprogs (make deps)", tool)
		}
	}
	const size = 128 << 20
	c := newCluster(t, size, "n1", "n2")
	c.serve("n1")
	f, err := NewFollower(context.Background(), c.resolver(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir := shortDir(t)
	view, err := MountFileView(filepath.Join(dir, "fuse"), "vol", f)
	if err != nil {
		t.Fatal(err)
	}
	defer view.Unmount()
	loop := strings.TrimSpace(run(t, "losetup", "-f", "--show", "--direct-io=on", view.Path))
	defer exec.Command("losetup", "-d", loop).Run()
	run(t, "mkfs.ext4", "-q", "-F", loop)
	mnt := filepath.Join(dir, "mnt")
	os.MkdirAll(mnt, 0o700)
	run(t, "mount", loop, mnt)
	mounted := true
	defer func() {
		if mounted {
			exec.Command("umount", "-l", mnt).Run()
		}
	}()
	sums := map[string][32]byte{}
	write := func(prefix string, n int) {
		for i := 0; i < n; i++ {
			name := filepath.Join(mnt, fmt.Sprintf("%s-%03d", prefix, i))
			data := bytes.Repeat([]byte(name), 2000+i*37)
			if err := os.WriteFile(name, data, 0o600); err != nil {
				t.Fatal(err)
			}
			sums[name] = sha256.Sum256(data)
		}
		run(t, "sync")
	}
	write("before", 40)
	c.crash("n1")
	go func() { time.Sleep(300 * time.Millisecond); c.serve("n2") }()
	write("during", 40) // blocks until n2 serves, then goes on
	run(t, "umount", mnt)
	mounted = false
	run(t, "e2fsck", "-fn", loop)
	run(t, "mount", loop, mnt)
	mounted = true
	for name, sum := range sums {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if sha256.Sum256(b) != sum {
			t.Fatalf("%s corrupted across failover", name)
		}
	}
	run(t, "umount", mnt)
	mounted = false
	if f.Failovers() != 1 {
		t.Fatalf("failovers %d", f.Failovers())
	}
}

// TestFollowerAcrossResize: when the volume grows (its export comes back
// larger), the follower reattaches and keeps its size; an export smaller
// than the attached size is refused (a pause, then EIO), never read.
func TestFollowerAcrossResize(t *testing.T) {
	srv := nbd.NewServer(quiet)
	sock := filepath.Join(shortDir(t), "export.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	serve := func(size int64) {
		d := device.NewMemory(size)
		if err := d.WriteAt([]byte("hacs"), 0, false); err != nil {
			t.Fatal(err)
		}
		srv.RemoveExport("vol")
		if err := srv.AddExport(nbd.Export{Name: "vol", Device: d}); err != nil {
			t.Fatal(err)
		}
	}
	serve(1 << 20)
	resolve := func(ctx context.Context) (Target, error) {
		return Target{Network: "unix", Addr: sock, Export: "vol", Epoch: 1}, nil
	}
	f, err := NewFollower(context.Background(), resolve, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.MaxPause = 500 * time.Millisecond
	buf := make([]byte, 4)
	serve(2 << 20) // grown: the connection is cut, the export is larger
	if err := f.ReadAt(buf, 0); err != nil || string(buf) != "hacs" {
		t.Fatalf("read after the volume grew: %q %v", buf, err)
	}
	if f.Size() != 1<<20 {
		t.Fatalf("size %d after growth: want the attached size", f.Size())
	}
	serve(512 << 10)
	if err := f.ReadAt(buf, 0); err == nil {
		t.Fatal("read through an export smaller than the attached device")
	}
}
