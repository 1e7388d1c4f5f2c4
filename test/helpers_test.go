package test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/testlog"
	"github.com/hacs/hacs/internal/testnet"

	"github.com/hacs/hacs/internal/nbd"
)

const (
	// cmdTimeout bounds every external command, so that nothing can hang.
	cmdTimeout = 90 * time.Second
	// startTimeout bounds waiting for a background process to be ready.
	startTimeout = 15 * time.Second
	mib          = 1 << 20
)

// toolPackages names the Debian package that provides each tool.
var toolPackages = map[string]string{
	"nbdinfo":     "libnbd-bin",
	"nbdcopy":     "libnbd-bin",
	"nbdfuse":     "libnbd-bin (or nbdfuse on Debian trixie and later)",
	"nbdkit":      "nbdkit",
	"psktool":     "gnutls-bin",
	"qemu-io":     "qemu-utils",
	"qemu-img":    "qemu-utils",
	"fio":         "fio",
	"fusermount3": "fuse3",
	"mkfs.ext4":   "e2fsprogs",
	"e2fsck":      "e2fsprogs",
	"losetup":     "mount (util-linux)",
	"ping":        "iputils-ping",
	"nsenter":     "util-linux",
	"mount":       "mount (util-linux)",
	"umount":      "mount (util-linux)",
	"blockdev":    "util-linux",
}

// requireTools fails the test (never skips) when a tool is missing.
func requireTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			pkg := toolPackages[tool]
			if pkg == "" {
				pkg = "the package providing " + tool
			}
			t.Fatalf("%s not found in PATH: install the Debian package %s (scripts/install-deps.sh, run by make test, does)", tool, pkg)
		}
	}
}

// requireRoot fails the test unless it runs as root (CI does).
func requireRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("this test needs root (%s); CI runs the tests as root", why)
	}
}

// shortTempDir returns a fresh directory with a short path, for Unix sockets
// (whose paths are limited to 107 bytes), removed at the end of the test.
func shortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "hacs-t-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// ---------------------------------------------------------------------------
// Running commands

// result is what a finished command left behind.
type result struct {
	cmdline string
	stdout  string
	stderr  string
	code    int // exit code; -1 when it did not exit normally
	err     error
}

func (r result) String() string {
	return fmt.Sprintf("%s: exit %d (%v)\nstdout:\n%s\nstderr:\n%s", r.cmdline, r.code, r.err, clip(r.stdout), clip(r.stderr))
}

// clip keeps logs readable when a command is chatty.
func clip(s string) string {
	const max = 8000
	if len(s) <= max {
		return s
	}
	return s[:max/2] + "\n...[clipped]...\n" + s[len(s)-max/2:]
}

// runCmd runs a command to completion under cmdTimeout and never fails the
// test itself.
func runCmd(t testing.TB, name string, args ...string) result {
	t.Helper()
	return runCmdTimeout(t, cmdTimeout, name, args...)
}

func runCmdTimeout(t testing.TB, timeout time.Duration, name string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	err := cmd.Run()
	r := result{
		cmdline: shellQuote(append([]string{name}, args...)),
		stdout:  stdout.String(),
		stderr:  stderr.String(),
		code:    -1,
		err:     err,
	}
	if cmd.ProcessState != nil {
		r.code = cmd.ProcessState.ExitCode()
	}
	if ctx.Err() != nil {
		r.err = fmt.Errorf("timed out after %v: %w", timeout, ctx.Err())
		r.code = -1
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Logf("%s took %v", r.cmdline, d.Round(time.Millisecond))
	}
	return r
}

// mustRun runs a command and fails the test unless it exits 0.
func mustRun(t testing.TB, name string, args ...string) result {
	t.Helper()
	r := runCmd(t, name, args...)
	if r.code != 0 {
		t.Fatalf("command failed: %v", r)
	}
	return r
}

// mustRunWhileBusy is mustRun for mount, umount and fusermount3 -u run
// right after a loop device changed (losetup -d, umount): the kernel
// answers "busy" while something it does not wait for still holds the
// device or the mount for a moment (the loop device's asynchronous detach,
// udev's probe of the changed device: seen in CI runs under load). It runs
// the command again, for up to 10 s, while it says busy.
func mustRunWhileBusy(t testing.TB, name string, args ...string) result {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := runCmd(t, name, args...)
		if r.code == 0 {
			return r
		}
		if !strings.Contains(strings.ToLower(r.stderr+r.stdout), "busy") || time.Now().After(deadline) {
			t.Fatalf("command failed: %v", r)
		}
		t.Logf("%s %s: busy, trying again: %s", name, strings.Join(args, " "), strings.TrimSpace(r.stderr))
		exec.Command("udevadm", "settle", "--timeout=2").Run()
		time.Sleep(500 * time.Millisecond)
	}
}

func shellQuote(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\n'\"$&;|<>()*?[]{}\\!#~") {
			q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		} else {
			q[i] = a
		}
	}
	return strings.Join(q, " ")
}

// ---------------------------------------------------------------------------
// Background processes

// proc is a child process running in the background for the length of a
// test. It is stopped by its PID in t.Cleanup.
type proc struct {
	name    string
	cmdline string
	cmd     *exec.Cmd
	out     testlog.Buffer // stdout and stderr
	done    chan struct{}
	err     error // from Wait, valid once done is closed
}

// startProc starts a background process; it is sent SIGTERM (then SIGKILL
// after 5 s) when the test ends. When checkExit is set, the process must exit
// 0 on SIGTERM and must not have died before.
func startProc(t testing.TB, checkExit bool, name string, args ...string) *proc {
	t.Helper()
	p := &proc{
		name:    filepath.Base(name),
		cmdline: shellQuote(append([]string{name}, args...)),
		done:    make(chan struct{}),
	}
	p.cmd = exec.Command(name, args...)
	p.cmd.Stdout = &p.out
	p.cmd.Stderr = &p.out
	p.cmd.WaitDelay = 5 * time.Second
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", p.cmdline, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		exitedEarly := p.exited()
		p.stop()
		out := p.out.String()
		if t.Failed() {
			t.Logf("output of %s (pid %d):\n%s", p.cmdline, p.cmd.Process.Pid, clip(out))
		}
		if strings.Contains(out, "panic:") || strings.Contains(out, "fatal error:") || strings.Contains(out, "WARNING: DATA RACE") {
			t.Errorf("%s crashed:\n%s", p.cmdline, clip(out))
		}
		if !checkExit {
			return
		}
		if exitedEarly {
			t.Errorf("%s exited before the end of the test: %v", p.cmdline, p.err)
		} else if p.err != nil {
			t.Errorf("%s did not exit cleanly on SIGTERM: %v", p.cmdline, p.err)
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM by PID, waits up to 10 s, then SIGKILL.
func (p *proc) stop() {
	if p.exited() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(10 * time.Second):
	}
	p.cmd.Process.Kill()
	<-p.done
}

// waitReady polls ready until it returns nil, failing the test when the
// process dies first or startTimeout passes.
func (p *proc) waitReady(t testing.TB, what string, ready func() error) {
	t.Helper()
	deadline := time.Now().Add(startTimeout)
	for {
		err := ready()
		if err == nil {
			return
		}
		if p.exited() {
			t.Fatalf("%s exited before %s: %v\noutput:\n%s", p.cmdline, what, p.err, clip(p.out.String()))
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s not ready after %v: %v\noutput:\n%s", p.cmdline, what, startTimeout, err, clip(p.out.String()))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitAccepting waits until a listener accepts connections on addr.
func (p *proc) waitAccepting(t testing.TB, network, addr string) {
	t.Helper()
	p.waitReady(t, "accepting on "+addr, func() error {
		c, err := net.DialTimeout(network, addr, time.Second)
		if err != nil {
			return err
		}
		c.Close()
		return nil
	})
}

// ---------------------------------------------------------------------------
// NBD servers

// server is an NBD server running as a child process.
type server struct {
	*proc
	network string // "unix" or "tcp"
	addr    string // socket path or host:port
	export  string // export name
	file    string // backing file, if any
}

// uri is the NBD URI of the server's export.
func (s *server) uri() string { return s.uriFor(s.export) }

// uriFor is the NBD URI of the named export on this server.
func (s *server) uriFor(export string) string {
	if s.network == "unix" {
		return fmt.Sprintf("nbd+unix:///%s?socket=%s", export, s.addr)
	}
	return fmt.Sprintf("nbd://%s/%s", s.addr, export)
}

// dial opens the export with the hacs client, closed at the end of the test.
func (s *server) dial(t testing.TB) *nbd.Client {
	t.Helper()
	return s.dialExport(t, s.export)
}

func (s *server) dialExport(t testing.TB, export string) *nbd.Client {
	t.Helper()
	c, err := s.tryDial(export)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (s *server) tryDial(export string) (*nbd.Client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return nbd.Dial(ctx, s.network, s.addr, nbd.ClientOptions{Export: export, HandshakeTimeout: 10 * time.Second})
}

// serveOpts configure `hacs serve`.
type serveOpts struct {
	file        string   // backing file; default: a new file in a temp dir
	size        string   // --size; default "64M" when the file is new
	name        string   // --name
	description string   // --description
	readOnly    bool     // --read-only
	tcp         bool     // listen on 127.0.0.1:PORT instead of a Unix socket
	args        []string // more `hacs serve` arguments (e.g. TLS options)
}

// startServe runs `hacs serve` and waits until it accepts connections.
func startServe(t testing.TB, o serveOpts) *server {
	t.Helper()
	dir := shortTempDir(t)
	if o.file == "" {
		o.file = filepath.Join(dir, "disk.img")
		if o.size == "" {
			o.size = "64M"
		}
	}
	s := &server{export: o.name, file: o.file}
	if o.tcp {
		s.network, s.addr = "tcp", testnet.FreeAddr(t)
	} else {
		s.network, s.addr = "unix", filepath.Join(dir, "nbd.sock")
	}
	args := []string{"serve", o.file}
	if o.size != "" {
		args = append(args, "--size", o.size)
	}
	if s.network == "unix" {
		args = append(args, "--listen", "unix:"+s.addr)
	} else {
		args = append(args, "--listen", s.addr)
	}
	if o.name != "" {
		args = append(args, "--name", o.name)
	}
	if o.description != "" {
		args = append(args, "--description", o.description)
	}
	if o.readOnly {
		args = append(args, "--read-only")
	}
	args = append(args, o.args...)
	s.proc = startProc(t, true, hacsBin, args...)
	s.waitAccepting(t, s.network, s.addr)
	return s
}

// startNbdkit runs `nbdkit -f -U SOCKET PLUGIN ARGS...` in the foreground.
func startNbdkit(t testing.TB, plugin string, args ...string) *server {
	t.Helper()
	requireTools(t, "nbdkit")
	dir := shortTempDir(t)
	s := &server{network: "unix", addr: filepath.Join(dir, "nbdkit.sock")}
	s.proc = startProc(t, false, "nbdkit", append([]string{"-f", "-U", s.addr, plugin}, args...)...)
	s.waitAccepting(t, s.network, s.addr)
	return s
}

// ---------------------------------------------------------------------------
// NBD tools

// qemuIO runs qemu-io commands against a raw NBD URI and fails the test when
// any of them fails (including a read -P pattern mismatch).
func qemuIO(t testing.TB, uri string, cmds ...string) result {
	t.Helper()
	return qemuIOFlags(t, nil, uri, cmds...)
}

// qemuIOFlags is qemuIO with extra qemu-io options (such as -r).
func qemuIOFlags(t testing.TB, flags []string, uri string, cmds ...string) result {
	t.Helper()
	r := runQemuIOFlags(t, flags, uri, cmds...)
	if r.code != 0 || qemuIOFailed(r) {
		t.Fatalf("qemu-io failed: %v", r)
	}
	return r
}

func runQemuIO(t testing.TB, uri string, cmds ...string) result {
	t.Helper()
	return runQemuIOFlags(t, nil, uri, cmds...)
}

func runQemuIOFlags(t testing.TB, flags []string, uri string, cmds ...string) result {
	t.Helper()
	args := append([]string{"-f", "raw"}, flags...)
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	return runCmd(t, "qemu-io", append(args, uri)...)
}

func qemuIOFailed(r result) bool {
	out := r.stdout + r.stderr
	return strings.Contains(out, "verification failed") || strings.Contains(out, "failed:") ||
		strings.Contains(out, "qemu-io: ")
}

// nbdinfoExport is one export in `nbdinfo --json` output.
type nbdinfoExport struct {
	ExportName   string   `json:"export-name"`
	Description  string   `json:"description"`
	URI          string   `json:"uri"`
	Contexts     []string `json:"contexts"`
	IsReadOnly   bool     `json:"is_read_only"`
	IsRotational bool     `json:"is_rotational"`
	CanCache     bool     `json:"can_cache"`
	CanDF        bool     `json:"can_df"`
	CanFastZero  bool     `json:"can_fast_zero"`
	CanFlush     bool     `json:"can_flush"`
	CanFUA       bool     `json:"can_fua"`
	CanMultiConn bool     `json:"can_multi_conn"`
	CanTrim      bool     `json:"can_trim"`
	CanZero      bool     `json:"can_zero"`
	BlockMin     int64    `json:"block_size_minimum"`
	BlockPref    int64    `json:"block_size_preferred"`
	BlockMax     int64    `json:"block_size_maximum"`
	Size         int64    `json:"export-size"`
}

type nbdinfoOutput struct {
	Protocol   string          `json:"protocol"`
	TLS        bool            `json:"TLS"`
	Structured bool            `json:"structured"`
	Exports    []nbdinfoExport `json:"exports"`
}

// nbdinfo runs `nbdinfo --json [extra...] URI` and parses the result.
func nbdinfo(t testing.TB, uri string, extra ...string) nbdinfoOutput {
	t.Helper()
	r := mustRun(t, "nbdinfo", append(append([]string{"--json"}, extra...), uri)...)
	var out nbdinfoOutput
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("parsing nbdinfo --json output: %v\n%s", err, r.stdout)
	}
	return out
}

// mapEntry is one entry of `nbdinfo --map --json`.
type mapEntry struct {
	Offset      int64  `json:"offset"`
	Length      int64  `json:"length"`
	Type        uint32 `json:"type"`
	Description string `json:"description"`
}

// nbdMap runs `nbdinfo --map --json URI` and checks that the entries are
// contiguous and cover the whole export.
func nbdMap(t testing.TB, uri string, size int64) []mapEntry {
	t.Helper()
	r := mustRun(t, "nbdinfo", "--map", "--json", uri)
	var m []mapEntry
	if err := json.Unmarshal([]byte(r.stdout), &m); err != nil {
		t.Fatalf("parsing nbdinfo --map --json output: %v\n%s", err, r.stdout)
	}
	var off int64
	for _, e := range m {
		if e.Offset != off || e.Length <= 0 {
			t.Fatalf("nbdinfo --map: entries not contiguous at %d: %+v", off, m)
		}
		off += e.Length
	}
	if off != size {
		t.Fatalf("nbdinfo --map covers %d bytes, want %d: %+v", off, size, m)
	}
	return m
}

// span is a byte range [off, off+len).
type span struct{ off, len int64 }

func (s span) String() string { return fmt.Sprintf("[%d,%d)", s.off, s.off+s.len) }

// dataSpans merges the map entries that are allocated (type bit 0 clear).
func dataSpans(m []mapEntry) []span {
	var out []span
	for _, e := range m {
		if e.Type&1 != 0 {
			continue
		}
		if n := len(out); n > 0 && out[n-1].off+out[n-1].len == e.Offset {
			out[n-1].len += e.Length
			continue
		}
		out = append(out, span{e.Offset, e.Length})
	}
	return out
}

func spansEqual(a, b []span) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// ---------------------------------------------------------------------------
// Data

// newRand returns a deterministic generator for a test, logging its seed.
func newRand(t testing.TB) *rand.Rand {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("HACS_TEST_SEED"); s != "" {
		if v, err := strconv.ParseUint(s, 10, 64); err == nil {
			seed = v
		}
	}
	t.Logf("random seed %d (set HACS_TEST_SEED to replay)", seed)
	return rand.New(rand.NewPCG(seed, 0x6861637374657374))
}

func fillRandom(r *rand.Rand, p []byte) {
	for i := 0; i+8 <= len(p); i += 8 {
		v := r.Uint64()
		for j := 0; j < 8; j++ {
			p[i+j] = byte(v >> (8 * j))
		}
	}
	for i := len(p) &^ 7; i < len(p); i++ {
		p[i] = byte(r.Uint32())
	}
}

// writeSparseRandomFile writes size bytes of random data to path, leaving
// holes (never written, so sparse) over the given spans.
func writeSparseRandomFile(t testing.TB, r *rand.Rand, path string, size int64, holes []span) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, mib)
	for off := int64(0); off < size; {
		n := min(int64(len(buf)), size-off)
		for _, h := range holes {
			if off >= h.off && off < h.off+h.len {
				n = min(n, h.off+h.len-off)
				off += n
				n = 0
				break
			}
			if h.off > off && h.off < off+n {
				n = h.off - off
			}
		}
		if n == 0 {
			continue
		}
		fillRandom(r, buf[:n])
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			t.Fatal(err)
		}
		off += n
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// sha256File returns the hex SHA-256 of a file.
func sha256File(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// firstDiff returns the offset of the first differing byte, or -1.
func firstDiff(a, b []byte) int {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return n
	}
	return -1
}

// checkBytes fails the test when got differs from want, naming the offset.
func checkBytes(t testing.TB, what string, base int64, got, want []byte) {
	t.Helper()
	if i := firstDiff(got, want); i >= 0 {
		end := min(i+16, len(got), len(want))
		t.Fatalf("%s: first difference at offset %d: got % x, want % x", what, base+int64(i), got[i:end], want[i:end])
	}
}

func isErrno(err error, errno syscall.Errno) bool {
	return errors.Is(err, errno)
}
