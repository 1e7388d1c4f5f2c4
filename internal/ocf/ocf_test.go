package ocf

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testRoot makes an OCF root with the given agents of provider "t" (shell
// scripts), plus Debian's providers linked in when installed.
func testRoot(t *testing.T, agents map[string]string) string {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, "resource.d", "t")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range agents {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"pacemaker", "heartbeat"} {
		os.Symlink(filepath.Join(DefaultRoot, "resource.d", p), filepath.Join(root, "resource.d", p))
	}
	os.Symlink(filepath.Join(DefaultRoot, "lib"), filepath.Join(root, "lib"))
	return root
}

func TestRunExitCodesAndFaults(t *testing.T) {
	root := testRoot(t, map[string]string{
		"Env":     `env | grep -E '^OCF_' | sort; exit 0`,
		"Hang":    `sleep 30 & sleep 30; exit 0`,
		"Code42":  `echo "something odd" >&2; exit 42`,
		"Garbage": `head -c 20000 /dev/urandom; head -c 20000 /dev/urandom >&2; exit 7`,
		"Stopped": `exit 7`,
		"Promo":   `exit 8`,
		"NoExec":  `exit 0`,
	})
	os.Chmod(filepath.Join(root, "resource.d", "t", "NoExec"), 0o644)
	r := &Runner{Root: root}
	ctx := context.Background()
	in := func(agent string) Instance {
		return Instance{Name: "r1", Type: "ocf:t:" + agent, Params: map[string]string{"state": "/x y", "n": "1"}, Node: "n1"}
	}
	tests := []struct {
		agent, action string
		timeout       time.Duration
		rc            int
		msg           string // substring of Message ("" none)
		maxDur        time.Duration
	}{
		{"Env", ActionStart, 5 * time.Second, RCOK, "", 5 * time.Second},
		{"Hang", ActionStart, 300 * time.Millisecond, RCTimeout, "timed out after 300ms: killed", 3 * time.Second},
		{"Code42", ActionStart, 5 * time.Second, 42, "unknown exit code 42 (not an OCF code): something odd", 5 * time.Second},
		{"Garbage", ActionStart, 5 * time.Second, RCNotRunning, "start: not running (rc 7)", 5 * time.Second},
		{"Stopped", ActionMonitor, 5 * time.Second, RCNotRunning, "", 5 * time.Second},
		{"Promo", ActionMonitor, 5 * time.Second, RCRunningPromoted, "", 5 * time.Second},
		{"Missing", ActionStart, 5 * time.Second, RCErrInstalled, "is not installed", 5 * time.Second},
		{"NoExec", ActionStart, 5 * time.Second, RCErrInstalled, "not an executable", 5 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.agent+"-"+tc.action, func(t *testing.T) {
			res := r.Run(ctx, in(tc.agent), tc.action, tc.timeout, 0)
			if res.RC != tc.rc {
				t.Fatalf("rc %d (%s), want %d", res.RC, res.Message, tc.rc)
			}
			if tc.msg == "" && res.Message != "" || !strings.Contains(res.Message, tc.msg) {
				t.Fatalf("message %q, want %q", res.Message, tc.msg)
			}
			if res.Duration > tc.maxDur {
				t.Fatalf("took %v", res.Duration)
			}
			if len(res.Stdout) > MaxOutput+8 || len(res.Stderr) > MaxOutput+8 {
				t.Fatalf("output not bounded: %d/%d bytes", len(res.Stdout), len(res.Stderr))
			}
		})
	}
	res := r.Run(ctx, in("Env"), ActionMonitor, 7*time.Second, 10*time.Second)
	for _, want := range []string{"OCF_ROOT=" + root, "OCF_RESOURCE_INSTANCE=r1", "OCF_RESOURCE_TYPE=Env", "OCF_RESOURCE_PROVIDER=t",
		"OCF_RESKEY_state=/x y", "OCF_RESKEY_n=1", "OCF_RESKEY_CRM_meta_timeout=7000", "OCF_RESKEY_CRM_meta_interval=10000",
		"OCF_RESKEY_CRM_meta_on_node=n1", "OCF_RA_VERSION_MAJOR=1"} {
		if !strings.Contains(res.Stdout, want+"\n") {
			t.Errorf("environment lacks %q:\n%s", want, res.Stdout)
		}
	}
}

func TestParseType(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{{"ocf:heartbeat:Dummy", true}, {"ocf::Dummy", false}, {"ocf:a/b:c", false}, {"ocf:..:x", false}, {"lsb:foo", false}, {"ocf:a:b:c", false}} {
		if _, _, ok := ParseType(tc.in); ok != tc.ok {
			t.Errorf("%s: ok=%v", tc.in, ok)
		}
	}
}

// TestDebianAgents runs Debian's Dummy and Stateful (pacemaker provider)
// through their life cycle, and reads their meta-data.
func TestDebianAgents(t *testing.T) {
	for _, a := range []string{"Dummy", "Stateful"} {
		if _, err := os.Stat(filepath.Join(DefaultRoot, "resource.d/pacemaker", a)); err != nil {
			t.Fatalf("pacemaker-resource-agents is not installed (scripts/install-deps.sh): %v", err)
		}
	}
	dir := t.TempDir()
	r := &Runner{Env: []string{"HA_VARRUN=" + dir, "HA_RSCTMP=" + dir}}
	ctx := context.Background()
	// Filesystem's meta-data is longer than MaxOutput: kept whole.
	if md, err := r.MetaData(ctx, "ocf:heartbeat:Filesystem"); err != nil || md.Check(map[string]string{"device": "/dev/x", "directory": "/x", "fstype": "ext4"}) != nil {
		t.Fatalf("Filesystem meta-data: %v", err)
	}
	for _, typ := range []string{"ocf:pacemaker:Dummy", "ocf:pacemaker:Stateful", "ocf:heartbeat:Dummy"} {
		t.Run(typ, func(t *testing.T) {
			md, err := r.MetaData(ctx, typ)
			if err != nil {
				t.Fatal(err)
			}
			if err := md.Check(map[string]string{"bogus": "1"}); err == nil || !strings.Contains(err.Error(), "unknown parameter(s) bogus") {
				t.Fatalf("check: %v", err)
			}
			in := Instance{Name: "res-" + strings.ReplaceAll(typ, ":", "-"), Type: typ, Node: "n1"}
			step := func(action string, want int) {
				t.Helper()
				if res := r.Run(ctx, in, action, 20*time.Second, 0); res.RC != want {
					t.Fatalf("%s: rc %d (%s) want %d; stderr %s", action, res.RC, res.Message, want, res.Stderr)
				}
			}
			step(ActionMonitor, RCNotRunning)
			step(ActionValidate, RCOK)
			step(ActionStart, RCOK)
			step(ActionMonitor, RCOK)
			step(ActionStart, RCOK) // idempotent
			step(ActionStop, RCOK)
			step(ActionMonitor, RCNotRunning)
			step(ActionStop, RCOK)
		})
	}
}
