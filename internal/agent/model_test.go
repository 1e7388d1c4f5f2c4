package agent

import (
	"testing"

	"github.com/hacs/hacs/internal/cluster"
	"github.com/hacs/hacs/internal/mirror"
)

func snap(kv map[string]string) cluster.Snapshot {
	s := cluster.Snapshot{KVs: map[string]cluster.KV{}, Synced: true}
	rev := int64(1)
	for k, v := range kv {
		s.KVs[k] = cluster.KV{Value: []byte(v), ModRev: rev}
		rev++
	}
	return s
}

func TestVolumesFrom(t *testing.T) {
	views, errs := volumesFrom(snap(map[string]string{
		specKey("a"):                `{"name":"a","size":4096,"replicas":2}`,
		placementKey("a"):           `{"replicas":["n1","n2"]}`,
		cluster.VolumeStateKey("a"): `{"epoch":3,"primary":"n2","in_sync":["n2"]}`,
		exportKey("a"):              `{"node":"n2","addr":"127.0.0.1:1","export":"a","epoch":3}`,
		failureKey("a", "n1"):       `{"count":2,"last":"2026-11-22T00:00:00Z"}`,
		degradedKey("a"):            `{"reason":"why","since":"2026-11-22T00:00:00Z"}`,
		specKey("b"):                `{not json`,
		"/hacs/volumes/c":           `ignored: no part`,
	}))
	if len(errs) != 1 {
		t.Fatalf("errors %v, want one (the corrupt spec of b)", errs)
	}
	a := views["a"]
	if a == nil || a.spec.Size != 4096 || a.placement.Replicas[1] != "n2" || a.state.Epoch != 3 ||
		a.export.Node != "n2" || a.failures["n1"].Count != 2 || a.degraded.Reason != "why" {
		t.Fatalf("volume a decoded wrongly: %+v", a)
	}
	if a.revs[specKey("a")] == 0 {
		t.Fatal("revisions not recorded")
	}
}

func TestHealth(t *testing.T) {
	members := cluster.Membership{Nodes: []cluster.NodeInfo{
		{NodeConfig: cluster.NodeConfig{Name: "n1"}, Online: true},
		{NodeConfig: cluster.NodeConfig{Name: "n2"}, Online: false},
	}}
	a := &Agent{}
	spec := &Spec{Name: "v", Size: 4096, Replicas: 2}
	cases := []struct {
		name string
		v    volumeView
		want string
	}{
		{"pending", volumeView{name: "v", spec: spec}, "pending"},
		{"ok", volumeView{name: "v", spec: spec, state: &mirror.State{Epoch: 2, Primary: "n1", InSync: []string{"n1", "n2"}},
			export: &Export{Node: "n1", Epoch: 2}}, "ok"},
		{"degraded", volumeView{name: "v", spec: spec, state: &mirror.State{Epoch: 2, Primary: "n1", InSync: []string{"n1"}},
			export: &Export{Node: "n1", Epoch: 2}}, "degraded"},
		{"stale export epoch", volumeView{name: "v", spec: spec, state: &mirror.State{Epoch: 3, Primary: "n1", InSync: []string{"n1", "n2"}},
			export: &Export{Node: "n1", Epoch: 2}}, "down"},
		{"primary offline", volumeView{name: "v", spec: spec, state: &mirror.State{Epoch: 2, Primary: "n2", InSync: []string{"n1", "n2"}},
			export: &Export{Node: "n2", Epoch: 2}}, "down"},
		{"stopped", volumeView{name: "v", spec: &Spec{Name: "v", Stopped: true}}, "stopped"},
	}
	for _, c := range cases {
		if got := a.info(&c.v, members).Health; got != c.want {
			t.Errorf("%s: health %q, want %q", c.name, got, c.want)
		}
	}
}
