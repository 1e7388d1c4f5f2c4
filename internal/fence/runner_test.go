package fence

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/cluster"
)

// debianAgents are the real agents' directories; the tests need Debian's
// fence-agents (scripts/install-deps.sh installs it).
func needDummy(t *testing.T) *Runner {
	t.Helper()
	r := NewRunner()
	if _, err := r.Path("fence_dummy"); err != nil {
		t.Fatalf("%v: run scripts/install-deps.sh", err)
	}
	return r
}

// scriptAgents writes small fence agents (shell scripts) for the faults the
// real agents do not produce on demand, and returns a runner that finds
// them besides the real ones.
func scriptAgents(t *testing.T) (*Runner, string) {
	t.Helper()
	dir := t.TempDir()
	scripts := map[string]string{
		// reads stdin like the real agents, records it, answers by action
		"fence_script": `#!/bin/sh
in=$(cat)
echo "$in" > "$(dirname "$0")/last-input"
action=$(echo "$in" | sed -n 's/^action=//p')
plug=$(echo "$in" | sed -n 's/^plug=//p')
case "$action" in
metadata) cat <<'XML'
<?xml version="1.0" ?>
<resource-agent name="fence_script" shortdesc="test agent">
<parameters>
 <parameter name="action" required="1"><content type="string" default="reboot"/></parameter>
 <parameter name="plug" required="1"><content type="string"/></parameter>
 <parameter name="ipaddr" required="1"><content type="string"/><shortdesc lang="en">IP address</shortdesc></parameter>
 <parameter name="power_wait" required="0"><content type="second" default="0"/></parameter>
 <parameter name="passwd" required="0"><content type="string"/></parameter>
 <parameter name="verbose" required="0"><content type="boolean"/></parameter>
</parameters>
<actions><action name="on"/><action name="off"/><action name="status"/><action name="monitor"/><action name="metadata"/></actions>
</resource-agent>
XML
;;
off|on|monitor) echo "$action $plug" >> "$(dirname "$0")/log"; exit 0 ;;
status) exit 2 ;;
*) echo "unknown action $action" >&2; exit 1 ;;
esac
`,
		"fence_hang":    "#!/bin/sh\ncat >/dev/null\necho starting >&2\nsleep 300 &\necho $! > \"$(dirname \"$0\")/hang-child\"\nsleep 300\n",
		"fence_garbage": "#!/bin/sh\ncat >/dev/null\nhead -c 100000 /dev/urandom\nhead -c 100000 /dev/urandom >&2\nexit 7\n",
		"fence_fail": `#!/bin/sh
if grep -q '^action=metadata'; then
  echo '<resource-agent name="fence_fail"><parameters><parameter name="plug"><content type="string"/></parameter></parameters></resource-agent>'
  exit 0
fi
echo 'connecting to 192.0.2.1' >&2
echo 'Failed: Unable to connect' >&2
exit 1
`,
	}
	for name, body := range scripts {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return NewRunner(append([]string{dir}, DefaultAgentDirs...)...), dir
}

func TestDummyAgentActions(t *testing.T) {
	r := needDummy(t)
	ctx := context.Background()
	status := filepath.Join(t.TempDir(), "status")
	d := Device{Name: "dummy1", Agent: "fence_dummy", Params: map[string]string{"type": "file", "status_file": status}, Timeout: cluster.Duration(20 * time.Second)}
	steps := []struct {
		action string
		off    bool
		file   string
	}{
		{ActionOn, false, "on"},
		{ActionStatus, false, "on"},
		{ActionOff, false, "off"},
		{ActionStatus, true, "off"},
		{ActionReboot, false, "on"},
		{ActionMonitor, false, "on"},
	}
	for _, s := range steps {
		res := r.Run(ctx, d, s.action, "n1")
		if res.Err != nil {
			t.Fatalf("%s: %v (stderr %q)", s.action, res.Err, res.Stderr)
		}
		if res.Off != s.off {
			t.Errorf("%s: off = %v, want %v", s.action, res.Off, s.off)
		}
		b, _ := os.ReadFile(status)
		if got := strings.TrimSpace(string(b)); got != s.file {
			t.Errorf("after %s the dummy's status file says %q, want %q", s.action, got, s.file)
		}
		// fence_dummy has no plug parameter: none is sent (it would warn)
		if strings.Contains(res.Stderr, "Ignoring unknown option") {
			t.Errorf("%s: sent an option the agent does not know: %s", s.action, res.Stderr)
		}
	}
	// type=fail: the agent's own failure, exit 1, with its stderr kept
	d.Params = map[string]string{"type": "fail", "power_timeout": "1"}
	res := r.Run(ctx, d, ActionOff, "n1")
	if res.Err == nil || res.ExitCode != 1 || !strings.Contains(res.Stderr, "Timed out") {
		t.Fatalf("fail type: exit %d err %v stderr %q", res.ExitCode, res.Err, res.Stderr)
	}
	if !strings.Contains(res.Err.Error(), "Timed out waiting to power OFF") {
		t.Errorf("the error does not carry the agent's reason: %v", res.Err)
	}
}

func TestDummyMetadataValidates(t *testing.T) {
	r := needDummy(t)
	m, err := r.Metadata(context.Background(), "fence_dummy")
	if err != nil {
		t.Fatal(err)
	}
	if m.Name != "fence_dummy" || !m.HasAction(ActionReboot) || !m.HasAction(ActionMonitor) {
		t.Fatalf("metadata: %+v", m)
	}
	tests := []struct {
		params map[string]string
		bad    string
	}{
		{map[string]string{"type": "file", "status_file": "/tmp/x"}, ""},
		{map[string]string{"bogus": "1"}, `unknown parameter "bogus"`},
		{map[string]string{"power_timeout": "soon"}, "not a number of seconds"},
		{map[string]string{"verbose": "maybe"}, "not a boolean"},
	}
	for _, tt := range tests {
		err := m.Check(Device{Name: "d", Agent: "fence_dummy", Params: tt.params})
		if (err != nil) != (tt.bad != "") || (err != nil && !strings.Contains(err.Error(), tt.bad)) {
			t.Errorf("%v: err %v, want %q", tt.params, err, tt.bad)
		}
	}
}

func TestScriptAgentProtocol(t *testing.T) {
	r, dir := scriptAgents(t)
	ctx := context.Background()
	d := Device{Name: "pdu", Agent: "fence_script", Params: map[string]string{"ipaddr": "192.0.2.10"}, HostMap: map[string]string{"n1": "outlet-3", "n2": "outlet-4"}}
	m, err := r.Metadata(ctx, "fence_script")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Check(d); err != nil {
		t.Fatalf("valid device refused: %v", err)
	}
	if err := m.Check(Device{Name: "pdu", Agent: "fence_script"}); err == nil || !strings.Contains(err.Error(), "required parameter ipaddr missing") {
		t.Fatalf("missing required parameter: %v", err)
	}
	res := r.Run(ctx, d, ActionOff, "n1")
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	in, _ := os.ReadFile(filepath.Join(dir, "last-input"))
	if got, want := string(in), "action=off\nipaddr=192.0.2.10\nplug=outlet-3\n"; got != want {
		t.Errorf("stdin %q, want %q", got, want)
	}
	if res := r.Run(ctx, d, ActionStatus, "n2"); res.Err != nil || !res.Off || res.ExitCode != 2 {
		t.Errorf("status of an off plug: %+v", res)
	}
	if res := r.Run(ctx, d, ActionList, ""); res.Err == nil || !strings.Contains(res.Err.Error(), "unknown action list") {
		t.Errorf("unsupported action: %v", res.Err)
	}
	if !d.Covers("n1") || d.Covers("n3") {
		t.Error("Covers follows the host map")
	}
}

func TestAgentFaults(t *testing.T) {
	r, dir := scriptAgents(t)
	ctx := context.Background()
	tests := []struct {
		agent   string
		timeout time.Duration
		want    string
		exit    int
	}{
		{"fence_hang", 500 * time.Millisecond, "timed out after 500ms and was killed: starting", -1},
		{"fence_garbage", 5 * time.Second, "unknown exit code 7", 7},
		{"fence_fail", 5 * time.Second, "failed (exit 1): Failed: Unable to connect", 1},
		{"fence_missing", time.Second, "not in", -1},
	}
	for _, tt := range tests {
		t.Run(tt.agent, func(t *testing.T) {
			start := time.Now()
			res := r.Exec(ctx, tt.agent, ActionOff, map[string]string{"plug": "n1"}, tt.timeout)
			if res.Err == nil || !strings.Contains(res.Err.Error(), tt.want) {
				t.Fatalf("err %v, want %q", res.Err, tt.want)
			}
			if res.ExitCode != tt.exit {
				t.Errorf("exit code %d, want %d", res.ExitCode, tt.exit)
			}
			if took := time.Since(start); took > tt.timeout+3*time.Second {
				t.Errorf("took %v", took)
			}
			if len(res.Stderr) > outputLimit+10 || len(res.Stdout) > outputLimit+10 {
				t.Errorf("output not bounded: %d/%d bytes", len(res.Stdout), len(res.Stderr))
			}
		})
	}
	// the hung agent's child was killed with it
	b, err := os.ReadFile(filepath.Join(dir, "hang-child"))
	if err != nil {
		t.Fatal(err)
	}
	pid := strings.TrimSpace(string(b))
	deadline := time.Now().Add(3 * time.Second)
	for {
		st, err := os.ReadFile("/proc/" + pid + "/stat")
		if err != nil || strings.Contains(string(st), ") Z ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the hung agent's child %s survived it", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestLevelsFallBack(t *testing.T) {
	r, dir := scriptAgents(t)
	ctx := context.Background()
	devs := map[string]Device{
		"ipmi": {Name: "ipmi", Agent: "fence_fail"},
		"pdu1": {Name: "pdu1", Agent: "fence_script", Params: map[string]string{"ipaddr": "192.0.2.10"}},
		"pdu2": {Name: "pdu2", Agent: "fence_script", Params: map[string]string{"ipaddr": "192.0.2.11"}},
		"hang": {Name: "hang", Agent: "fence_hang", Timeout: cluster.Duration(300 * time.Millisecond)},
	}
	var seen []int
	lvl, out, err := r.FenceLevels(ctx, "n1", ActionReboot, [][]string{{"ipmi"}, {"hang", "pdu1"}, {"pdu1", "pdu2"}}, devs, func(lr LevelResult) { seen = append(seen, lr.Level) })
	if err != nil || lvl != 3 {
		t.Fatalf("level %d, err %v", lvl, err)
	}
	if len(out) != 3 || out[0].Err == nil || out[1].Err == nil || out[2].Err != nil || len(seen) != 3 {
		t.Fatalf("results %+v", out)
	}
	// reboot over two devices: both off, then both on
	log, _ := os.ReadFile(filepath.Join(dir, "log"))
	if got, want := string(log), "off n1\noff n1\non n1\non n1\n"; got != want {
		t.Errorf("pdu log %q, want %q", got, want)
	}
	// all fail: the error names every level
	_, _, err = r.FenceLevels(ctx, "n1", ActionOff, [][]string{{"ipmi"}, {"nosuch"}}, devs, nil)
	if err == nil || !strings.Contains(err.Error(), "level 1: device ipmi") || !strings.Contains(err.Error(), "level 2: device nosuch is not configured") {
		t.Fatalf("all failed: %v", err)
	}
}
