package test

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestPSKReload: `hacs serve --tls-psk FILE` re-reads its key file on
// SIGHUP and when the file changes, without a restart: the open
// connection of an identity taken out of the file is cut at once while
// another identity's keeps reading, a new identity gets in with nbdinfo,
// the removed one is refused; a malformed file is refused with a log line
// and the keys in force stay.
func TestPSKReload(t *testing.T) {
	requireTools(t, "nbdinfo", "psktool")
	k := makePSKFiles(t) // alice and bob
	dir := filepath.Dir(k.keys)
	old := filepath.Join(dir, "old.psk")
	copyFile(t, k.keys, old)
	s := startServe(t, serveOpts{name: "vm1", tcp: true, args: []string{"--tls", "require", "--tls-psk", k.keys}})

	alice, err := dialPSK(t, "tcp", s.addr, "vm1", old, "alice")
	mustOK(t, err)
	defer alice.Close()
	bob, err := dialPSK(t, "tcp", s.addr, "vm1", old, "bob")
	mustOK(t, err)
	defer bob.Close()
	buf := make([]byte, 4096)
	mustOK(t, alice.ReadAt(buf, 0))
	mustOK(t, bob.ReadAt(buf, 0))

	waitLog := func(want string, within time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		for !strings.Contains(s.proc.out.String(), want) {
			if time.Since(start) > within {
				t.Fatalf("hacs serve did not log %q within %v:\n%s", want, within, clip(s.proc.out.String()))
			}
			time.Sleep(20 * time.Millisecond)
		}
		return time.Since(start)
	}

	// SIGHUP: alice out, carol in
	rewritePSK(t, k.keys, old, "alice", "carol")
	start := time.Now()
	mustOK(t, s.proc.cmd.Process.Signal(syscall.SIGHUP))
	waitLog("trigger=SIGHUP identities=2 added=carol removed=alice key_changed=\"\" connections_cut=1", 5*time.Second)
	if err := alice.ReadAt(buf, 0); err == nil {
		t.Fatal("alice's open connection still reads after her identity left the key file")
	}
	t.Logf("alice's connection cut %v after the SIGHUP", time.Since(start).Round(time.Millisecond))
	mustOK(t, bob.ReadAt(buf, 0))
	if out := nbdinfo(t, pskURI(s.addr, "carol", "vm1", k.keys)); !out.TLS {
		t.Fatalf("nbdinfo as the new identity carol: %+v", out)
	}
	if r := runCmd(t, "nbdinfo", pskURI(s.addr, "alice", "vm1", old)); r.code == 0 {
		t.Fatalf("nbdinfo as alice after her removal: %v", r)
	}
	good := filepath.Join(dir, "good.psk")
	copyFile(t, k.keys, good)

	// a malformed file: refused, the keys in force stay
	mustOK(t, os.WriteFile(k.keys+".new", []byte("carol:not-hex\n"), 0o600))
	mustOK(t, os.Rename(k.keys+".new", k.keys))
	mustOK(t, s.proc.cmd.Process.Signal(syscall.SIGHUP))
	waitLog(`pre-shared key file NOT reloaded: it is refused, the keys in force stay`, 5*time.Second)
	waitLog(`is not hex`, time.Second)
	if out := nbdinfo(t, pskURI(s.addr, "carol", "vm1", good)); !out.TLS {
		t.Fatalf("nbdinfo as carol after a malformed file: %+v", out)
	}
	mustOK(t, bob.ReadAt(buf, 0))

	// a change without a signal: dave in
	rewritePSK(t, k.keys, good, "", "dave")
	d := waitLog(`trigger="the file changed" identities=3 added=dave`, 10*time.Second)
	t.Logf("the changed file was reloaded %v after its rename", d.Round(time.Millisecond))
	if out := nbdinfo(t, pskURI(s.addr, "dave", "vm1", k.keys)); !out.TLS {
		t.Fatalf("nbdinfo as dave: %+v", out)
	}
	mustOK(t, bob.ReadAt(buf, 0))
}

func copyFile(t testing.TB, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	mustOK(t, err)
	mustOK(t, os.WriteFile(to, b, 0o600))
}

// rewritePSK writes a new key file at path: the lines of from without
// those of identity drop, plus psktool users add; written aside, then
// renamed into place.
func rewritePSK(t testing.TB, path, from, drop string, add ...string) {
	t.Helper()
	b, err := os.ReadFile(from)
	mustOK(t, err)
	var keep []string
	for _, l := range strings.SplitAfter(string(b), "\n") {
		if l != "" && (drop == "" || !strings.HasPrefix(l, drop+":")) {
			keep = append(keep, l)
		}
	}
	tmp := path + ".new"
	mustOK(t, os.WriteFile(tmp, []byte(strings.Join(keep, "")), 0o600))
	for _, u := range add {
		mustRun(t, "psktool", "-u", u, "-p", tmp)
	}
	mustOK(t, os.Rename(tmp, path))
}
