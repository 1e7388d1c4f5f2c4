package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	rm "github.com/hacs/hacs/internal/agent"
	"github.com/hacs/hacs/internal/cluster"
)

// fenceNetnsAgent writes fence_netns: a fence agent whose "power off" of a
// node (its plug is the node's network namespace) kills every process left
// in it and removes every address a resource added there (the secondary
// addresses of eth0): what a reboot leaves of a floating IP and a mount.
func fenceNetnsAgent(t *testing.T) string {
	dir := shortTempDir(t)
	body := `#!/bin/sh
in=$(cat)
action=$(echo "$in" | sed -n 's/^action=//p')
plug=$(echo "$in" | sed -n 's/^plug=//p')
case "$action" in
metadata)
  echo '<resource-agent name="fence_netns"><parameters><parameter name="plug"><content type="string"/></parameter></parameters><actions><action name="off"/><action name="on"/><action name="reboot"/><action name="status"/><action name="monitor"/></actions></resource-agent>'
  exit 0;;
off|reboot)
  # the node "powers off": what it ran dies (its mounts with it), the
  # addresses resources added go
  for p in $(ip netns pids "$plug"); do kill -9 "$p"; done
  ip -n "$plug" addr flush dev eth0 secondary || exit 1
  echo "$(date +%s.%N) $action $plug" >> "$(dirname "$0")/fenced.log"
  exit 0;;
*) exit 0;;
esac
`
	if err := os.WriteFile(filepath.Join(dir, "fence_netns"), []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// inAgent runs a command in the mount and network namespaces of an agent
// (where its OCF agents mount file systems and add addresses).
func inAgent(t *testing.T, a *agent, args ...string) result {
	return runCmdTimeout(t, 20*time.Second, "nsenter", append([]string{"-t", fmt.Sprint(a.p.cmd.Process.Pid), "-m", "-n", "--"}, args...)...)
}

func resCall[T any](t *testing.T, a *agent, method, path string, body any) T {
	t.Helper()
	var out T
	if err := a.call(method, path, body, &out); err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return out
}

// TestResourceGroupFailover is issue 10's group proof: three agents in
// network namespaces run a group volume -> Filesystem -> ip -> Dummy (the
// volume attached through FUSE + loop, ext4 on it). The agent of the node
// running it is SIGKILLed: the volume fails over at once (epoch fencing),
// the group waits until the lost node is fenced (a fence device removing
// the addresses left on it), then starts on the volume's new primary in
// order; the file written before is there and the floating IP answers a
// client namespace's ping from its new node.
func TestResourceGroupFailover(t *testing.T) {
	requireRoot(t, "network namespaces, losetup, mount")
	requireTools(t, "losetup", "mkfs.ext4", "fusermount3", "nsenter", "ping")
	lab := newNetLab(t, 4) // 1-3 agents, 4 a client
	ocfRoot := testOCFRoot(t)
	fenceDir := fenceNetnsAgent(t)
	// Each agent runs in its network namespace and a mount namespace of its
	// own (ip netns exec), with a process that keeps that mount namespace
	// alive when the agent is killed: a node whose agent crashed keeps its
	// mounts and addresses until it is fenced.
	wrapper := filepath.Join(fenceDir, "hacs-node")
	if err := os.WriteFile(wrapper, []byte("#!/bin/sh\nsleep 100000 </dev/null >/dev/null 2>&1 &\nexec "+hacsBin+` "$@"`+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, ns := range lab.nodes {
			out := runCmd(t, "ip", "netns", "pids", ns)
			for _, pid := range strings.Fields(out.stdout) {
				runCmd(t, "kill", "-9", pid)
			}
		}
	})
	var all []*agent
	for i := 1; i <= 3; i++ {
		ip := lab.addr(i)
		varrun := shortTempDir(t)
		all = append(all, &agent{
			t: t, name: fmt.Sprintf("g%d", i), dir: shortTempDir(t), netns: lab.nodes[i-1], bin: wrapper,
			api: ip + ":7700", peer: ip + ":7701", client: ip + ":7702", replica: ip + ":7703", export: ip + ":10809",
			extra: []string{"--ocf-root", ocfRoot, "--ocf-env", "HA_VARRUN=" + varrun, "--ocf-env", "HA_RSCTMP=" + varrun,
				"--fence-agent-dir", fenceDir},
		})
	}
	startCluster(t, all...)
	a1 := all[0]
	byName := map[string]*agent{}
	hostMap := map[string]string{}
	for i, a := range all {
		byName[a.name] = a
		hostMap[a.name] = lab.nodes[i]
	}
	live := func() *agent {
		for _, a := range all {
			if !a.p.exited() {
				return a
			}
		}
		t.Fatal("no agent left")
		return nil
	}
	// Fencing: the fence_netns device covers every node.
	if err := a1.call("POST", "/v1/fence/devices", map[string]any{"name": "netns", "agent": "fence_netns", "host_map": hostMap, "timeout": "10s"}, nil); err != nil {
		t.Fatal(err)
	}
	for _, a := range all {
		if err := a1.call("POST", "/v1/fence/levels/"+a.name, map[string]any{"devices": []string{"netns"}}, nil); err != nil {
			t.Fatal(err)
		}
	}

	// The volume, attached from the client namespace (network only: the
	// FUSE view is in this mount namespace), a loop device and ext4 on it.
	if err := a1.call("POST", "/v1/volumes", map[string]any{"name": "gvol", "size": 64 << 20, "replicas": 2}, nil); err != nil {
		t.Fatal(err)
	}
	var vol rm.VolumeInfo
	waitFor(t, 30*time.Second, "gvol served", func() error {
		vol = resCall[rm.VolumeInfo](t, live(), "GET", "/v1/volumes/gvol", nil)
		if vol.Export == nil {
			return fmt.Errorf("not served: %s", vol.Health)
		}
		return nil
	})
	dir := shortTempDir(t)
	fuseDir := filepath.Join(dir, "fuse")
	apis := lab.addr(1) + ":7700," + lab.addr(2) + ":7700," + lab.addr(3) + ":7700"
	att := startProc(t, false, "nsenter", append([]string{"--net=/run/netns/" + lab.nodes[3], hacsBin, "volume", "attach", "gvol", "--fuse", fuseDir, "--cluster", apis}, append(cliCreds(a1.dir), exportCreds(a1.dir)...)...)...)
	file := filepath.Join(fuseDir, "gvol")
	att.waitReady(t, "FUSE file", func() error { _, err := os.Stat(file); return err })
	loop := strings.TrimSpace(mustCmd(t, "losetup", "-f", "--show", "--direct-io=on", file))
	t.Cleanup(func() { exec.Command("losetup", "-d", loop).Run() })
	mustCmd(t, "mkfs.ext4", "-q", "-F", loop)
	mnt := filepath.Join(dir, "mnt")
	// On failure, unmount in every live agent's mount namespace while the
	// volume is still served (else the last flush of a torn-down mount
	// namespace waits for a primary forever).
	t.Cleanup(func() {
		for _, a := range all {
			if !a.p.exited() {
				inAgent(t, a, "umount", mnt)
			}
		}
	})

	// The primitives (created stopped: they run as the group's members),
	// then the group.
	for _, r := range []map[string]any{
		{"name": "fs", "type": "ocf:heartbeat:Filesystem", "stopped": true, "params": map[string]string{"device": loop, "directory": mnt, "fstype": "ext4"}},
		{"name": "vip", "type": "ip", "stopped": true, "params": map[string]string{"ip": "10.77.0.100", "cidr_netmask": "24", "nic": "eth0"}},
		{"name": "svc", "type": "ocf:pacemaker:Dummy", "stopped": true},
	} {
		r["ops"] = map[string]any{"monitor_interval": "2s", "start_timeout": "30s", "stop_timeout": "30s"}
		if err := a1.call("POST", "/v1/resources", r, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := a1.call("POST", "/v1/resources", map[string]any{"name": "web", "type": "group", "members": []string{"volume:gvol", "fs", "vip", "svc"}}, nil); err != nil {
		t.Fatal(err)
	}
	waitGroup := func(except string) (string, rm.ResourceInfo) {
		t.Helper()
		var ri rm.ResourceInfo
		waitFor(t, 60*time.Second, "group web running", func() error {
			ri = resCall[rm.ResourceInfo](t, live(), "GET", "/v1/resources/web", nil)
			if ri.Health != "running" || len(ri.Running) != 1 || ri.Running[0] == except {
				why := ""
				if ri.Blocked != nil {
					why = ri.Blocked.Reason
				}
				return fmt.Errorf("health %s on %v: %s", ri.Health, ri.Running, why)
			}
			return nil
		})
		return ri.Running[0], ri
	}
	node, _ := waitGroup("")
	vol = resCall[rm.VolumeInfo](t, live(), "GET", "/v1/volumes/gvol", nil)
	if vol.State.Primary != node {
		t.Fatalf("group on %s, volume primary %s", node, vol.State.Primary)
	}
	client := lab.nodes[3]
	mustRun(t, "ip", "netns", "exec", client, "ping", "-c", "1", "-W", "2", "10.77.0.100")
	if r := inAgent(t, byName[node], "sh", "-c", "echo before-failover > "+mnt+"/proof && sync"); r.code != 0 {
		t.Fatalf("writing on the mounted file system: %s", r)
	}
	t.Logf("group web runs on %s (volume primary); vip answers the client", node)

	// SIGKILL the agent of the group's node.
	victim := byName[node]
	killed := time.Now()
	victim.kill()
	next, ri := waitGroup(node)
	took := time.Since(killed)
	vol = resCall[rm.VolumeInfo](t, live(), "GET", "/v1/volumes/gvol", nil)
	if vol.State.Primary != next {
		t.Fatalf("group on %s, volume primary %s", next, vol.State.Primary)
	}
	t.Logf("group web failed over from %s to %s in %v", node, next, took.Round(time.Millisecond))
	// In order on the new node: fs, then vip, then svc; all after the
	// lost node was fenced.
	var evs struct {
		Events []cluster.Event `json:"events"`
	}
	if err := live().call("GET", "/v1/events", nil, &evs); err != nil {
		t.Fatal(err)
	}
	started := map[string]time.Time{}
	var fenced time.Time
	for _, e := range evs.Events {
		if e.Time.Before(killed) {
			continue
		}
		if e.Kind == "fence-succeeded" && e.Fields["subject"] == node {
			fenced = e.Time
		}
		if r, ok := strings.CutPrefix(e.Resource, "resource/"); ok && e.Kind == "resource-started" && e.Node == next {
			started[r] = e.Time
		}
	}
	if fenced.IsZero() {
		t.Fatalf("no fence-succeeded event for %s", node)
	}
	order := []string{"fs", "vip", "svc"}
	for i, r := range order {
		if started[r].IsZero() || started[r].Before(fenced) || (i > 0 && started[r].Before(started[order[i-1]])) {
			t.Fatalf("start times after the failover %v (fenced at %v): want fs < vip < svc, all after fencing", started, fenced)
		}
	}
	t.Logf("%s fenced %v after the kill; started on %s: fs +%v, vip +%v, svc +%v", node, fenced.Sub(killed).Round(time.Millisecond), next,
		started["fs"].Sub(killed).Round(time.Millisecond), started["vip"].Sub(killed).Round(time.Millisecond), started["svc"].Sub(killed).Round(time.Millisecond))
	// The address left the lost node (fenced), is on the new one, and
	// answers the client.
	if out := mustRun(t, "ip", "-n", lab.nodes[slices.Index(all, victim)], "-o", "addr", "show", "dev", "eth0"); strings.Contains(out.stdout, "10.77.0.100/") {
		t.Fatalf("vip still on the fenced node: %s", out.stdout)
	}
	if out := mustRun(t, "ip", "-n", lab.nodes[slices.Index(all, byName[next])], "-o", "addr", "show", "dev", "eth0"); !strings.Contains(out.stdout, "10.77.0.100/") {
		t.Fatalf("vip not on %s: %s", next, out.stdout)
	}
	runCmd(t, "ip", "netns", "exec", client, "ip", "neigh", "flush", "all")
	mustRun(t, "ip", "netns", "exec", client, "ping", "-c", "1", "-W", "2", "10.77.0.100")
	// The file system moved with its data.
	if r := inAgent(t, byName[next], "cat", mnt+"/proof"); r.code != 0 || strings.TrimSpace(r.stdout) != "before-failover" {
		t.Fatalf("reading the file written before the failover on %s: %s", next, r)
	}
	_ = ri

	// Clean stop: stop the group (members stop in reverse order), then
	// delete everything; unmounted before the loop device goes.
	if err := live().call("POST", "/v1/resources/web/stop", nil, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "group web stopped", func() error {
		if ri := resCall[rm.ResourceInfo](t, live(), "GET", "/v1/resources/web", nil); ri.Health != "stopped" {
			return fmt.Errorf("health %s", ri.Health)
		}
		return nil
	})
	for _, r := range []string{"web", "svc", "vip", "fs"} {
		if err := live().call("DELETE", "/v1/resources/"+r, nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 30*time.Second, "file system unmounted on "+next, func() error {
		if r := inAgent(t, byName[next], "grep", "-q", " "+mnt+" ", "/proc/mounts"); r.code == 0 {
			return fmt.Errorf("still mounted")
		}
		return nil
	})
	mustCmd(t, "losetup", "-d", loop)
	att.stop()
}
