package test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/nbd"
	"github.com/hacs/hacs/internal/tlspsk"
)

// pskFiles are psktool key files and qemu tls-creds-psk directories.
type pskFiles struct {
	keys  string // alice and bob: the server's file (and the clients')
	wrong string // alice with another key
	eve   string // an identity the server does not know
	// qemu reads DIR/keys.psk
	qemuKeys, qemuWrong string
}

// makePSKFiles creates the key files with psktool, as an administrator
// would.
func makePSKFiles(t testing.TB) pskFiles {
	t.Helper()
	requireTools(t, "psktool")
	dir := shortTempDir(t)
	f := pskFiles{keys: filepath.Join(dir, "keys.psk"), wrong: filepath.Join(dir, "wrong.psk"), eve: filepath.Join(dir, "eve.psk"),
		qemuKeys: filepath.Join(dir, "qemu"), qemuWrong: filepath.Join(dir, "qemu-wrong")}
	mustRun(t, "psktool", "-u", "alice", "-p", f.keys)
	mustRun(t, "psktool", "-u", "bob", "-p", f.keys)
	mustRun(t, "psktool", "-u", "alice", "-p", f.wrong)
	mustRun(t, "psktool", "-u", "eve", "-p", f.eve)
	for src, dst := range map[string]string{f.keys: f.qemuKeys, f.wrong: f.qemuWrong} {
		mustOK(t, os.MkdirAll(dst, 0o700))
		b, err := os.ReadFile(src)
		mustOK(t, err)
		mustOK(t, os.WriteFile(filepath.Join(dst, "keys.psk"), b, 0o600))
	}
	return f
}

// pskURI is the libnbd URI of a TLS-PSK export (man nbd_connect_uri).
func pskURI(addr, user, export, file string) string {
	return fmt.Sprintf("nbds://%s@%s/%s?tls-psk-file=%s", user, addr, export, file)
}

// qemuPSKArgs are qemu-io / qemu-img options opening export with the
// pre-shared key of user in dir/keys.psk.
func qemuPSKArgs(addr, export, dir, user string) []string {
	host, port, _ := net.SplitHostPort(addr)
	return []string{"--object", "tls-creds-psk,id=tls0,endpoint=client,dir=" + dir + ",username=" + user,
		"--image-opts", fmt.Sprintf("driver=nbd,host=%s,port=%s,export=%s,tls-creds=tls0", host, port, export)}
}

func runQemuIOPSK(t testing.TB, addr, export, dir, user string, cmds ...string) result {
	t.Helper()
	args := qemuPSKArgs(addr, export, dir, user)
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	return runCmd(t, "qemu-io", args...)
}

// dialPSK opens export with the hacs client and the key of identity in
// file.
func dialPSK(t testing.TB, network, addr, export, file, identity string) (*nbd.Client, error) {
	t.Helper()
	keys, err := tlspsk.LoadKeys(file)
	mustOK(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return nbd.Dial(ctx, network, addr, nbd.ClientOptions{Export: export, PSK: &tlspsk.Config{Keys: keys, Identity: identity}})
}

// waitOutput waits until a process's output has want.
func waitOutput(t testing.TB, p *proc, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(p.out.String(), want) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(p.out.String(), want) {
		t.Errorf("%s output lacks %q:\n%s", p.name, want, clip(p.out.String()))
	}
}

// The standard clients with pre-shared keys against `hacs serve --tls
// require --tls-psk`: nbdinfo, qemu-io, qemu-img and nbdcopy (both ways),
// data verified; plaintext refused with the TLS-required error; a wrong
// key and an unknown identity refused with a message on both sides while
// another PSK client keeps reading.
func TestPSKServeRealClients(t *testing.T) {
	requireTools(t, "nbdinfo", "nbdcopy", "qemu-io", "qemu-img")
	k := makePSKFiles(t)
	s := startServe(t, serveOpts{name: "vm1", tcp: true, args: []string{"--tls", "require", "--tls-psk", k.keys}})

	out := nbdinfo(t, pskURI(s.addr, "alice", "vm1", k.keys))
	if !out.TLS || !out.Structured || len(out.Exports) != 1 || out.Exports[0].Size != exportSize {
		t.Fatalf("nbdinfo over TLS-PSK: %+v", out)
	}
	if r := runQemuIOPSK(t, s.addr, "vm1", k.qemuKeys, "bob", "write -P 0x6b 1M 2M", "flush", "read -P 0x6b 1M 2M"); r.code != 0 || qemuIOFailed(r) {
		t.Fatalf("qemu-io over TLS-PSK: %v", r)
	}
	img := filepath.Join(t.TempDir(), "copy.img")
	mustRun(t, "qemu-img", append(append([]string{"convert", "-O", "raw"}, qemuPSKArgs(s.addr, "vm1", k.qemuKeys, "alice")...), img)...)
	checkPattern(t, img, 1<<20, 2<<20, 0x6b)
	img2 := filepath.Join(t.TempDir(), "copy2.img")
	mustRun(t, "nbdcopy", "--connections=2", pskURI(s.addr, "alice", "vm1", k.keys), img2)
	checkPattern(t, img2, 1<<20, 2<<20, 0x6b)
	// nbdcopy writes a new pattern; the hacs client reads it back.
	src := filepath.Join(t.TempDir(), "src.img")
	mustOK(t, os.WriteFile(src, bytes.Repeat([]byte{0x4d}, exportSize), 0o600))
	mustRun(t, "nbdcopy", "--flush", src, pskURI(s.addr, "bob", "vm1", k.keys))

	good, err := dialPSK(t, "tcp", s.addr, "vm1", k.keys, "alice")
	mustOK(t, err)
	defer good.Close()
	if !good.Info().TLS {
		t.Fatal("hacs client: not TLS")
	}
	check := func(when string) {
		t.Helper()
		got := make([]byte, 64<<10)
		if err := good.ReadAt(got, 32<<20); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{0x4d}, len(got))) {
			t.Fatalf("PSK client in transmission %s: err %v", when, err)
		}
	}
	check("after nbdcopy")

	// Plaintext: the TLS-required error.
	if r := runCmd(t, "nbdinfo", s.uriFor("vm1")); r.code == 0 || !strings.Contains(r.stderr, "Operation not supported") {
		t.Fatalf("plaintext nbdinfo against --tls require: %v", r)
	}
	// A wrong key and an unknown identity: refused on both sides, saying so.
	// libnbd names no alert, only that one came: "gnutls_handshake: A TLS
	// fatal alert has been received."
	r := runCmd(t, "nbdinfo", pskURI(s.addr, "alice", "vm1", k.wrong))
	if r.code == 0 || !strings.Contains(r.stderr, "TLS fatal alert has been received") {
		t.Fatalf("nbdinfo with a wrong key: %v", r)
	}
	check("after a wrong key")
	r = runCmd(t, "nbdinfo", pskURI(s.addr, "eve", "vm1", k.eve))
	if r.code == 0 || !strings.Contains(r.stderr, "TLS fatal alert has been received") {
		t.Fatalf("nbdinfo with an unknown identity: %v", r)
	}
	if r := runQemuIOPSK(t, s.addr, "vm1", k.qemuWrong, "alice", "read 0 4k"); r.code == 0 || !strings.Contains(r.stdout+r.stderr, "TLS handshake failed") {
		t.Fatalf("qemu-io with a wrong key: %v", r)
	}
	if _, err := dialPSK(t, "tcp", s.addr, "vm1", k.wrong, "alice"); err == nil || !strings.Contains(err.Error(), "wrong key") {
		t.Fatalf("hacs client with a wrong key: %v", err)
	}
	if _, err := dialPSK(t, "tcp", s.addr, "vm1", k.eve, "eve"); err == nil || !strings.Contains(err.Error(), `does not know the identity "eve"`) {
		t.Fatalf("hacs client with an unknown identity: %v", err)
	}
	check("after the refusals")
	if out := nbdinfo(t, pskURI(s.addr, "bob", "vm1", k.keys)); !out.TLS {
		t.Fatalf("nbdinfo after the refusals: %+v", out)
	}
	for _, want := range []string{"nbd option refused: TLS required", "psk_identity=eve", "psk_identity=alice", `unknown PSK identity \"eve\"`, `wrong key for identity \"alice\"`, "peer=psk:bob"} {
		waitOutput(t, s.proc, want)
	}
}

// One server with certificates and pre-shared keys serves x509 and PSK
// clients at the same time; a server with only keys refuses an x509
// client clearly.
func TestPSKServeWithX509(t *testing.T) {
	requireTools(t, "nbdinfo", "qemu-io")
	k := makePSKFiles(t)
	d := makeTLSDirs(t)
	s := startServe(t, serveOpts{name: "vm1", tcp: true, args: []string{"--tls", "require", "--tls-psk", k.keys, "--tls-certificates", d.server}})

	x, err := dialTLS(t, s, "vm1", d.clientNoCert)
	mustOK(t, err)
	defer x.Close()
	p, err := dialPSK(t, "tcp", s.addr, "vm1", k.keys, "bob")
	mustOK(t, err)
	defer p.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for i, c := range []*nbd.Client{x, p} {
		wg.Add(1)
		go func(i int, c *nbd.Client) {
			defer wg.Done()
			data := bytes.Repeat([]byte{byte(0x10 + i)}, 256<<10)
			off := int64(i) * 8 << 20
			for n := 0; n < 20; n++ {
				if err := c.WriteAt(data, off, false); err != nil {
					errs <- err
					return
				}
				got := make([]byte, len(data))
				if err := c.ReadAt(got, off); err != nil || !bytes.Equal(got, data) {
					errs <- fmt.Errorf("client %d read back: %v", i, err)
					return
				}
			}
		}(i, c)
	}
	// The real clients meanwhile, each kind.
	if out := nbdinfo(t, pskURI(s.addr, "alice", "vm1", k.keys)); !out.TLS {
		t.Fatalf("nbdinfo PSK: %+v", out)
	}
	if out := nbdinfo(t, nbdsURI(s, "vm1", d.clientNoCert)); !out.TLS {
		t.Fatalf("nbdinfo x509: %+v", out)
	}
	if r := runQemuIOPSK(t, s.addr, "vm1", k.qemuKeys, "alice", "write -P 0x77 40M 1M", "read -P 0x77 40M 1M"); r.code != 0 || qemuIOFailed(r) {
		t.Fatalf("qemu-io PSK: %v", r)
	}
	if r := runQemuIOTLS(t, s, "vm1", d.clientNoCert, "read -P 0x77 40M 1M"); r.code != 0 || qemuIOFailed(r) {
		t.Fatalf("qemu-io x509: %v", r)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	// Keys only: an x509 client is refused, and the log says why.
	only := startServe(t, serveOpts{name: "vm1", tcp: true, args: []string{"--tls", "require", "--tls-psk", k.keys}})
	if r := runCmd(t, "nbdinfo", nbdsURI(only, "vm1", d.clientNoCert)); r.code == 0 {
		t.Fatalf("x509 nbdinfo against a PSK-only server: %v", r)
	}
	if _, err := dialTLS(t, only, "vm1", d.clientNoCert); err == nil || !strings.Contains(err.Error(), "handshake failure") {
		t.Fatalf("x509 hacs client against a PSK-only server: %v", err)
	}
	waitOutput(t, only.proc, "offers no pre-shared key")
}

// Our client against a real TLS-PSK server, nbdkit --tls-psk: it connects
// with the right key and is refused otherwise.
func TestPSKClientAgainstNbdkit(t *testing.T) {
	requireTools(t, "nbdkit")
	k := makePSKFiles(t)
	sock := filepath.Join(shortTempDir(t), "nbdkit.sock")
	nk := startProc(t, false, "nbdkit", "-f", "-U", sock, "--tls=require", "--tls-psk="+k.keys, "memory", "64M")
	nk.waitAccepting(t, "unix", sock)
	c, err := dialPSK(t, "unix", sock, "", k.keys, "alice")
	mustOK(t, err)
	defer c.Close()
	if !c.Info().TLS || c.Size() != 64<<20 {
		t.Fatalf("info %+v", c.Info())
	}
	data := bytes.Repeat([]byte("psk-nbdkit"), 10000)
	mustOK(t, c.WriteAt(data, 12345, true))
	got := make([]byte, len(data))
	mustOK(t, c.ReadAt(got, 12345))
	if !bytes.Equal(got, data) {
		t.Fatal("read back different data from nbdkit")
	}
	// nbdkit (GnuTLS) hangs up without an alert: the message says what
	// that may mean.
	if _, err := dialPSK(t, "unix", sock, "", k.wrong, "alice"); err == nil || !strings.Contains(err.Error(), `TLS-PSK handshake as "alice"`) || !strings.Contains(err.Error(), "wrong key") {
		t.Fatalf("wrong key against nbdkit: %v", err)
	}
	if _, err := dialPSK(t, "unix", sock, "", k.eve, "eve"); err == nil || !strings.Contains(err.Error(), `TLS-PSK handshake as "eve"`) || !strings.Contains(err.Error(), "unknown identity") {
		t.Fatalf("unknown identity against nbdkit: %v", err)
	}
	waitOutput(t, nk, "gnutls_handshake")
	// Plaintext against nbdkit --tls=require.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := nbd.Dial(ctx, "unix", sock, nbd.ClientOptions{}); err == nil || !strings.Contains(err.Error(), "TLS required") {
		t.Fatalf("plaintext against nbdkit --tls=require: %v", err)
	}
	got2 := make([]byte, len(data))
	mustOK(t, c.ReadAt(got2, 12345))
	if !bytes.Equal(got2, data) {
		t.Fatal("nbdkit connection disturbed")
	}
}

// Volume exports with pre-shared keys (hacs agent --export-tls-psk): a
// volume created with --tls required refuses plaintext and serves PSK
// clients (nbdinfo); hacs volume attach --tls-psk follows the primary with
// a key.
func TestPSKVolumeExports(t *testing.T) {
	requireTools(t, "nbdinfo")
	k := makePSKFiles(t)
	c := newRMCluster(t, 1, "--export-tls-psk", k.keys)
	credEnv(t, filepath.Join(c.dir, "n1"))
	api := c.ports["n1"][0]
	mustRun(t, hacsBin, "volume", "create", "sec", "--size", "16M", "--replicas", "1", "--tls", "required", "--cluster", api)
	sec := c.waitServed("sec", 0)
	if !sec.Export.TLS {
		t.Fatalf("export %+v: want TLS", sec.Export)
	}
	addr := sec.Export.Addr
	if r := runCmd(t, "nbdinfo", fmt.Sprintf("nbd://%s/sec", addr)); r.code == 0 || !strings.Contains(r.stderr, "Operation not supported") {
		t.Fatalf("plaintext nbdinfo on a TLS-required volume: %v", r)
	}
	if out := nbdinfo(t, pskURI(addr, "alice", "sec", k.keys)); !out.TLS || out.Exports[0].Size != 16<<20 {
		t.Fatalf("nbdinfo with a pre-shared key: %+v", out)
	}
	if r := runCmd(t, "nbdinfo", pskURI(addr, "alice", "sec", k.wrong)); r.code == 0 {
		t.Fatalf("nbdinfo with a wrong key: %v", r)
	}

	checkAttachedWrite(t, api, "sec", []string{"--tls-psk", k.keys, "--tls-username", "bob"}, bytes.Repeat([]byte("psk-vol!"), 512),
		func() (*nbd.Client, error) { return dialPSK(t, "tcp", addr, "sec", k.keys, "alice") }, "with a pre-shared key")
	if r := runCmd(t, hacsBin, "volume", "attach", "sec", "--listen", "unix:"+filepath.Join(shortTempDir(t), "x.sock"), "--tls-psk", k.keys, "--cluster", api); r.code == 0 || !strings.Contains(r.stderr, "--tls-username") {
		t.Fatalf("attach with two identities and no --tls-username: %v", r)
	}

	// SIGHUP re-reads the agent's key file: alice out (her open
	// connection is cut), carol in
	alice, err := dialPSK(t, "tcp", addr, "sec", k.keys, "alice")
	mustOK(t, err)
	defer alice.Close()
	mustOK(t, alice.ReadAt(make([]byte, 4096), 0))
	old := filepath.Join(t.TempDir(), "old.psk")
	copyFile(t, k.keys, old)
	rewritePSK(t, k.keys, old, "alice", "carol")
	mustOK(t, c.procs["n1"].cmd.Process.Signal(syscall.SIGHUP))
	waitOutput(t, c.procs["n1"], "removed=alice key_changed=\"\" connections_cut=1")
	if err := alice.ReadAt(make([]byte, 4096), 0); err == nil {
		t.Fatal("alice's open connection still reads after her identity left the agent's key file")
	}
	if out := nbdinfo(t, pskURI(addr, "carol", "sec", k.keys)); !out.TLS {
		t.Fatalf("nbdinfo as carol, added to the agent's key file: %+v", out)
	}
	if r := runCmd(t, "nbdinfo", pskURI(addr, "alice", "sec", old)); r.code == 0 {
		t.Fatalf("nbdinfo as alice after her removal: %v", r)
	}
}
