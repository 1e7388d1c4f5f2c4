package store

import (
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const crashEnv = "HACS_STORE_CRASH_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(crashEnv) != "" {
		if err := crashChild(); err != nil {
			fmt.Fprintln(os.Stderr, "crash child:", err)
			os.Exit(2)
		}
		os.Exit(0)
	}
	code := m.Run()
	if benchDir != "" {
		os.RemoveAll(benchDir)
	}
	os.Exit(code)
}

const crashSize = 4 << 20

// crashChild opens the volume and runs random operations until it is
// killed, logging each one before ("B ...") and after ("D seq") it runs.
// The log is written with plain write(2) calls: like the volume's own
// writes, it survives the death of the process.
func crashChild() error {
	pool, logPath := os.Getenv("CRASH_POOL"), os.Getenv("CRASH_LOG")
	iter, _ := strconv.Atoi(os.Getenv("CRASH_ITER"))
	p, err := OpenPool(pool)
	if err != nil {
		return err
	}
	v, err := p.OpenVolume("v", Options{})
	if err != nil {
		return err
	}
	lf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	r := rand.New(rand.NewSource(int64(iter)*7919 + 1))
	logf := func(format string, args ...any) {
		if _, err := lf.WriteString(fmt.Sprintf(format, args...)); err != nil {
			panic(err)
		}
	}
	for seq := 0; ; seq++ {
		off := r.Int63n(crashSize)
		n := min(crashSize-off, 1+r.Int63n(5*blockSize))
		if r.Intn(2) == 0 {
			off &^= blockMask
			n = min(crashSize-off, (1+r.Int63n(32))*blockSize)
		}
		snaps := v.Snapshots()
		k := r.Intn(100)
		switch {
		case k < 50:
			ds := int64(iter)<<32 | int64(seq)
			logf("B %d w %d %d %d\n", seq, off, n, ds)
			err = v.WriteAt(pattern(ds, int(n)), off, r.Intn(8) == 0)
		case k < 56:
			logf("B %d z %d %d\n", seq, off, n)
			err = v.WriteZeroes(off, n, 0)
		case k < 62:
			logf("B %d t %d %d\n", seq, off, n)
			err = v.Trim(off, n)
		case k < 75:
			logf("B %d f\n", seq)
			err = v.Flush()
		case k < 85 && len(snaps) < 6:
			name := fmt.Sprintf("i%d-%d", iter, seq)
			logf("B %d s %s\n", seq, name)
			err = v.Snapshot(name)
		case k < 97 && len(snaps) > 0:
			name := snaps[r.Intn(len(snaps))].Name
			logf("B %d d %s\n", seq, name)
			err = v.DeleteSnapshot(name)
		case len(snaps) > 0:
			name := snaps[r.Intn(len(snaps))].Name
			logf("B %d r %s\n", seq, name)
			err = v.Revert(name, true)
		default:
			continue
		}
		if err != nil {
			return fmt.Errorf("op %d: %w", seq, err)
		}
		logf("D %d\n", seq)
	}
}

// crashModel is what the volume must hold.
type crashModel struct {
	head  []byte
	snaps map[string][]byte
	order []string // oldest first
}

func (m *crashModel) clone() *crashModel {
	c := &crashModel{head: bytes.Clone(m.head), snaps: map[string][]byte{}, order: append([]string(nil), m.order...)}
	for k, v := range m.snaps {
		c.snaps[k] = v // snapshot contents are never modified in place
	}
	return c
}

func (m *crashModel) apply(f []string) {
	atoi := func(s string) int64 { n, _ := strconv.ParseInt(s, 10, 64); return n }
	switch f[2] {
	case "w":
		off, n, ds := atoi(f[3]), atoi(f[4]), atoi(f[5])
		copy(m.head[off:off+n], pattern(ds, int(n)))
	case "z", "t":
		off, n := atoi(f[3]), atoi(f[4])
		clear(m.head[off : off+n])
	case "s":
		m.snaps[f[3]] = bytes.Clone(m.head)
		m.order = append(m.order, f[3])
	case "d":
		delete(m.snaps, f[3])
		for i, n := range m.order {
			if n == f[3] {
				m.order = append(m.order[:i], m.order[i+1:]...)
				break
			}
		}
	case "r":
		m.head = bytes.Clone(m.snaps[f[3]])
		for i, n := range m.order {
			if n == f[3] {
				for _, x := range m.order[i+1:] {
					delete(m.snaps, x)
				}
				m.order = m.order[:i+1]
				break
			}
		}
	}
}

// matches tells whether the volume holds exactly m (head and snapshots).
func (m *crashModel) matches(t *testing.T, v *Volume, head []byte) string {
	if !bytes.Equal(head, m.head) {
		return "head differs"
	}
	list := v.Snapshots()
	if len(list) != len(m.order) {
		return fmt.Sprintf("%d snapshots, want %d", len(list), len(m.order))
	}
	for i, si := range list {
		if si.Name != m.order[i] {
			return fmt.Sprintf("snapshot %d is %q, want %q", i, si.Name, m.order[i])
		}
		s, err := v.OpenSnapshot(si.Name)
		if err != nil {
			t.Fatal(err)
		}
		got := readAll(t, s)
		s.Close()
		if !bytes.Equal(got, m.snaps[si.Name]) {
			return fmt.Sprintf("snapshot %s differs", si.Name)
		}
	}
	return ""
}

// TestCrash kills a child process doing I/O, flushes and snapshot
// operations with SIGKILL at random moments, then checks after each kill
// that the volume opens and holds every completed operation, and that the
// operation in flight happened entirely or not at all (data writes: each
// byte old or new).
func TestCrash(t *testing.T) {
	iters := 30
	if testing.Short() {
		iters = 8
	}
	dir := t.TempDir()
	p, err := CreatePool(filepath.Join(dir, "pool"), PoolOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.CreateVolume("v", crashSize); err != nil {
		t.Fatal(err)
	}
	model := &crashModel{head: make([]byte, crashSize), snaps: map[string][]byte{}}
	rnd := rand.New(rand.NewSource(time.Now().UnixNano()))
	deadline := time.Now().Add(60 * time.Second)
	totalOps := 0
	for it := 0; it < iters && time.Now().Before(deadline); it++ {
		logPath := filepath.Join(dir, fmt.Sprintf("log-%d", it))
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), crashEnv+"=1", "CRASH_POOL="+p.Dir(), "CRASH_LOG="+logPath, fmt.Sprintf("CRASH_ITER=%d", it))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Kill once the child has logged a few operations, after a random
		// extra delay.
		start := time.Now()
		for time.Since(start) < 10*time.Second {
			if st, err := os.Stat(logPath); err == nil && st.Size() > 0 {
				break
			}
			time.Sleep(2 * time.Millisecond)
		}
		time.Sleep(time.Duration(rnd.Intn(150)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		werr := cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
			t.Fatalf("iteration %d: child ended by itself (%v): %s", it, werr, stderr.String())
		}

		// Replay the log.
		data, _ := os.ReadFile(logPath)
		var inflight []string
		complete := bytes.HasSuffix(data, []byte("\n"))
		lines := strings.Split(string(data), "\n")
		for i, line := range lines {
			if i == len(lines)-1 && !complete || line == "" {
				continue // a record cut by the kill
			}
			f := strings.Fields(line)
			switch f[0] {
			case "B":
				inflight = f
			case "D":
				if inflight == nil || inflight[1] != f[1] {
					t.Fatalf("iteration %d: log out of order at %q", it, line)
				}
				model.apply(inflight)
				inflight = nil
				totalOps++
			}
		}

		v, err := p.OpenVolume("v", Options{})
		if err != nil {
			t.Fatalf("iteration %d: open after kill: %v", it, err)
		}
		head := readAll(t, v)
		what := "none"
		if inflight != nil {
			what = strings.Join(inflight[2:], " ")
		}
		switch {
		case inflight == nil || inflight[2] == "f":
			if msg := model.matches(t, v, head); msg != "" {
				t.Fatalf("iteration %d (in flight: %s): %s", it, what, msg)
			}
		case inflight[2] == "w" || inflight[2] == "z" || inflight[2] == "t":
			after := model.clone()
			after.apply(inflight)
			for i := range head {
				if head[i] != model.head[i] && head[i] != after.head[i] {
					t.Fatalf("iteration %d (in flight: %s): byte %d is %#x, neither old %#x nor new %#x", it, what, i, head[i], model.head[i], after.head[i])
				}
			}
			model.head = bytes.Clone(head)
			if msg := model.matches(t, v, head); msg != "" {
				t.Fatalf("iteration %d (in flight: %s): %s", it, what, msg)
			}
		default: // snapshot, delete, revert: all or nothing
			after := model.clone()
			after.apply(inflight)
			if msg := model.matches(t, v, head); msg != "" {
				if msg2 := after.matches(t, v, head); msg2 != "" {
					t.Fatalf("iteration %d (in flight: %s): neither before (%s) nor after (%s)", it, what, msg, msg2)
				}
				model = after
			}
		}
		t.Logf("iteration %d: killed after %d ops; in flight: %s; %d snapshots", it, totalOps, what, len(model.order))
		v.Close()
	}
	if totalOps == 0 {
		t.Fatal("the children completed no operation")
	}
}
