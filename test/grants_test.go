package test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	rm "github.com/hacs/hacs/internal/agent"
	"github.com/hacs/hacs/internal/nbd"
)

// TestVolumeGrants: per-volume grants (hacs volume grant/ungrant, volume
// create --grant). On a live one-node cluster with certificates and
// pre-shared keys: a volume granted to the client certificate vmh1 and the
// PSK identity alice serves them (qemu-io writes and reads, nbdinfo), and
// refuses vmh2, the admin's certificate and bob with "client X is not
// granted volume Y" (checked on the client and in the agent's log) while a
// granted client keeps reading; the node's certificate (hacs volume attach
// --data-dir) always passes; ungrant cuts alice's open connection and
// nobody else's; grant --all returns to every authenticated client; the
// changes are events with who made them; bad input (unknown volume,
// unknown client, malformed name, operator token, tls allowed on a granted
// volume, ungranting a client not granted) gets a clear error.
func TestVolumeGrants(t *testing.T) {
	requireTools(t, "nbdinfo", "qemu-io")
	k := makePSKFiles(t)
	c := newRMCluster(t, 1, "--export-tls-psk", k.keys)
	n1 := filepath.Join(c.dir, "n1")
	credEnv(t, n1)
	api := c.ports["n1"][0]
	hacs := func(args ...string) result {
		t.Helper()
		return runCmd(t, hacsBin, append(args, "--cluster", api)...)
	}
	certs := map[string]string{}
	for _, name := range []string{"vmh1", "vmh2"} {
		certs[name] = filepath.Join(shortTempDir(t), name)
		if r := hacs("cluster", "auth", "client-cert", "create", name, "--out", certs[name], "--ttl", "24h"); r.code != 0 {
			t.Fatalf("client-cert create %s: %v", name, r)
		}
	}
	if r := hacs("volume", "create", "vg", "--size", "16M", "--replicas", "1", "--grant", "vmh1,psk:alice"); r.code != 0 {
		t.Fatalf("volume create --grant: %v", r)
	}
	if r := hacs("volume", "create", "vo", "--size", "8M", "--replicas", "1"); r.code != 0 {
		t.Fatalf("volume create: %v", r)
	}
	v := c.waitServed("vg", 0)
	c.waitServed("vo", 0)
	addr := v.Export.Addr
	agentLog := func() string { return c.procs["n1"].out.String() }
	if r := hacs("volume", "show", "vg"); r.code != 0 || !strings.Contains(r.stdout, "granted to") || !strings.Contains(r.stdout, "psk:alice, vmh1") {
		t.Fatalf("volume show vg: %v", r)
	}
	if r := hacs("volume", "list"); r.code != 0 || !strings.Contains(r.stdout, "GRANTS") || !strings.Contains(r.stdout, "psk:alice,vmh1") {
		t.Fatalf("volume list: %v", r)
	}

	// granted: qemu-io with vmh1's certificate, nbdinfo with alice's key
	srv := &server{network: "tcp", addr: addr}
	if r := runQemuIOTLS(t, srv, "vg", certs["vmh1"], "write -P 0x6b 0 1M", "flush", "read -P 0x6b 0 1M"); r.code != 0 || qemuIOFailed(r) {
		t.Fatalf("qemu-io with the granted certificate vmh1: %v", r)
	}
	if out := nbdinfo(t, pskURI(addr, "alice", "vg", k.keys)); !out.TLS || out.Exports[0].Size != 16<<20 {
		t.Fatalf("nbdinfo with the granted identity alice: %+v", out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	keeper, err := nbd.Dial(ctx, "tcp", addr, nbd.ClientOptions{Export: "vg", TLS: dirTLS(t, certs["vmh1"])})
	mustOK(t, err)
	defer keeper.Close()
	readBack := func(cl *nbd.Client) error {
		got := make([]byte, 64<<10)
		if err := cl.ReadAt(got, 0); err != nil {
			return err
		}
		if !bytes.Equal(got, bytes.Repeat([]byte{0x6b}, len(got))) {
			t.Fatal("read back other data")
		}
		return nil
	}
	mustOK(t, readBack(keeper))

	// not granted: refused with the reason, the others keep reading
	for _, tc := range []struct{ who, uri string }{
		{"vmh2", "nbds://" + addr + "/vg?tls-certificates=" + certs["vmh2"]},
		{"admin", volumeNBDS(addr, "vg", n1)},
		{"psk:bob", pskURI(addr, "bob", "vg", k.keys)},
	} {
		// nbdinfo shows the server's message only in libnbd's debug
		// output (its error is "Operation not supported")
		r := nbdinfoDebug(t, tc.uri)
		want := "client " + tc.who + " is not granted volume vg"
		if r.code == 0 || !strings.Contains(r.stderr, want) {
			t.Fatalf("nbdinfo as %s: %v; want an error saying %q", tc.who, r, want)
		}
		t.Logf("nbdinfo as %s: %s", tc.who, lineWith(r.stderr, want))
		waitLogContains(t, agentLog, want)
		mustOK(t, readBack(keeper))
	}
	if r := runQemuIOTLS(t, srv, "vg", certs["vmh2"], "read 0 4k"); r.code == 0 && !qemuIOFailed(r) || !strings.Contains(r.stdout+r.stderr, "client vmh2 is not granted volume vg") {
		t.Fatalf("qemu-io with the ungranted certificate vmh2: %v", r)
	} else {
		t.Logf("qemu-io as vmh2: %s", strings.TrimSpace(r.stdout+r.stderr))
	}
	if _, err := nbd.Dial(ctx, "tcp", addr, nbd.ClientOptions{Export: "vg", TLS: dirTLS(t, certs["vmh2"])}); err == nil || !strings.Contains(err.Error(), "refused by policy: client vmh2 is not granted volume vg") {
		t.Fatalf("hacs NBD client as vmh2: %v", err)
	}
	// a volume without grants still admits every authenticated client
	if out := nbdinfo(t, "nbds://"+addr+"/vo?tls-certificates="+certs["vmh2"]); !out.TLS {
		t.Fatalf("nbdinfo vmh2 on a volume without grants: %+v", out)
	}

	// the node's own certificate always passes
	sock := filepath.Join(shortTempDir(t), "vg.sock")
	att := startProc(t, true, hacsBin, "volume", "attach", "vg", "--data-dir", n1, "--listen", "unix:"+sock)
	att.waitAccepting(t, "unix", sock)
	viaNode, err := nbd.Dial(ctx, "unix", sock, nbd.ClientOptions{Export: "vg"})
	mustOK(t, err)
	defer viaNode.Close()
	mustOK(t, readBack(viaNode))

	// ungrant cuts alice's open connection, nobody else's
	alice, err := dialPSK(t, "tcp", addr, "vg", k.keys, "alice")
	mustOK(t, err)
	defer alice.Close()
	mustOK(t, readBack(alice))
	if r := hacs("volume", "ungrant", "vg", "psk:alice"); r.code != 0 || !strings.Contains(r.stdout, "vg: granted to vmh1") {
		t.Fatalf("volume ungrant vg psk:alice: %v", r)
	}
	ungranted := time.Now()
	deadline := time.Now().Add(10 * time.Second)
	for readBack(alice) == nil {
		if time.Now().After(deadline) {
			t.Fatal("alice's open connection still reads 10 s after her grant was removed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("alice's open connection found cut %v after the ungrant command returned", time.Since(ungranted).Round(time.Microsecond))
	waitLogContains(t, agentLog, "nbd connection cut: the client is no longer granted volume vg")
	mustOK(t, readBack(keeper))
	mustOK(t, readBack(viaNode))
	if _, err := dialPSK(t, "tcp", addr, "vg", k.keys, "alice"); err == nil || !strings.Contains(err.Error(), "client psk:alice is not granted volume vg") {
		t.Fatalf("alice after ungrant: %v", err)
	}
	if r := hacs("events", "--kind", rm.EventVolumeGrants); r.code != 0 || !strings.Contains(r.stdout, "ungrant psk:alice") || !strings.Contains(r.stdout, "by token admin") {
		t.Fatalf("grants event: %v", r)
	}
	if r := hacs("events", "--kind", rm.EventVolumeClientsCut); r.code != 0 || !strings.Contains(r.stdout, "cut 1 open connection") {
		t.Fatalf("clients-cut event: %v", r)
	}

	// bad input: clear errors, nothing changed
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"volume", "grant", "nosuch", "vmh2"}, `no volume named "nosuch"`},
		{[]string{"volume", "grant", "vg", "ghost"}, "no export client certificate named ghost"},
		{[]string{"volume", "grant", "vg", "VMH2"}, "not an export client certificate name"},
		{[]string{"volume", "grant", "vg"}, "name the clients to grant"},
		{[]string{"volume", "ungrant", "vg", "vmh2"}, "client vmh2 is not granted volume vg (it grants: vmh1)"},
		{[]string{"volume", "ungrant", "vo", "vmh2"}, "grants no client by name"},
		{[]string{"volume", "tls", "allowed", "vg"}, "admits only the clients it grants"},
		{[]string{"volume", "create", "vx", "--size", "8M", "--replicas", "1", "--grant", "ghost"}, "no export client certificate named ghost"},
		{[]string{"volume", "create", "vx", "--size", "8M", "--replicas", "1", "--grant", "vmh1", "--tls", "allowed"}, "grants would mean nothing"},
	} {
		if r := hacs(tc.args...); r.code == 0 || !strings.Contains(r.stderr, tc.want) {
			t.Fatalf("hacs %s: %v; want an error saying %q", strings.Join(tc.args, " "), r, tc.want)
		}
	}
	op := strings.TrimSpace(hacs("cluster", "auth", "token", "create", "oper", "--role", "operator").stdout)
	if r := runEnv(t, []string{"HACS_TOKEN=" + op, "HACS_TOKEN_FILE="}, "volume", "grant", "vg", "vmh2", "--cluster", api); r.code == 0 || !strings.Contains(r.stderr, "needs admin") {
		t.Fatalf("volume grant with an operator token: %v", r)
	}
	if r := hacs("volume", "show", "vg", "--json"); r.code != 0 || !strings.Contains(r.stdout, `"grants": [`) || strings.Contains(r.stdout, "vmh2") {
		t.Fatalf("vg's grants after the refused changes: %v", r)
	}

	// grant --all: every authenticated client again
	if r := hacs("volume", "grant", "vg", "--all"); r.code != 0 || !strings.Contains(r.stdout, "granted to every authenticated client") {
		t.Fatalf("volume grant vg --all: %v", r)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		r := runCmd(t, "nbdinfo", "nbds://"+addr+"/vg?tls-certificates="+certs["vmh2"])
		if r.code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("vmh2 still refused 10 s after grant --all: %v", r)
		}
		time.Sleep(100 * time.Millisecond)
	}
	mustOK(t, readBack(keeper))
}

// nbdinfoDebug runs nbdinfo with libnbd's debug messages (LIBNBD_DEBUG=1),
// which include the text of a server's error replies.
func nbdinfoDebug(t testing.TB, uri string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nbdinfo", uri)
	cmd.Env = append(os.Environ(), "LIBNBD_DEBUG=1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{cmdline: "LIBNBD_DEBUG=1 nbdinfo " + uri, stdout: stdout.String(), stderr: stderr.String(), err: err}
	if cmd.ProcessState != nil {
		r.code = cmd.ProcessState.ExitCode()
	} else {
		r.code = -1
	}
	return r
}

// lineWith is the first line of s containing sub.
func lineWith(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return strings.TrimSpace(l)
		}
	}
	return ""
}
