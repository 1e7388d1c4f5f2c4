package agent

import (
	"testing"
	"time"

	"github.com/hacs/hacs/internal/cluster"
	"github.com/hacs/hacs/internal/policy"
)

func snapOf(kv map[string]string) cluster.Snapshot {
	s := cluster.Snapshot{Rev: 100, KVs: map[string]cluster.KV{}, Synced: true}
	for k, v := range kv {
		s.KVs[k] = cluster.KV{Value: []byte(v), ModRev: 50}
	}
	return s
}

func TestResourcesFrom(t *testing.T) {
	m, errs := resourcesFrom(snapOf(map[string]string{
		resKey("g", "spec"):        `{"name":"g","type":"group","members":["volume:v1","fs","ip"]}`,
		resKey("g", "assign"):      `{"node":"n2"}`,
		resKey("fs", "spec"):       `{"name":"fs","type":"ocf:heartbeat:Filesystem"}`,
		resKey("ip", "spec"):       `{"name":"ip","type":"ip"}`,
		resStatusKey("fs", "n2"):   `{"state":"running","lease":"7"}`,
		resStatusKey("fs", "n1"):   `{"state":"stopped","lease":"5"}`,
		resStatusKey("ip", "n2"):   `{"state":"failed","lease":"7"}`,
		resFailureKey("ip", "n2"):  `{"count":2,"last":"2026-11-22T10:00:00Z","op":"monitor"}`,
		resKey("d", "spec"):        `{"name":"d","type":"ocf:pacemaker:Dummy"}`,
		resKey("bad", "spec"):      `{not json`,
		constraintKey("o1"):        `{"id":"o1","kind":"order","resource":"d","first":"g"}`,
		resStatusKey("gone", "n1"): `{"state":"running","lease":"5"}`,
	}))
	if len(errs) != 1 {
		t.Fatalf("errors %v, want one (the corrupt spec)", errs)
	}
	if m.unit("fs") != "g" || m.unit("d") != "d" || m.group["volume:v1"] != "" {
		t.Fatalf("units: fs->%s d->%s", m.unit("fs"), m.unit("d"))
	}
	byName := map[string]policy.Resource{}
	for _, r := range m.policyResources() {
		byName[r.Name] = r
	}
	if _, ok := byName["gone"]; ok {
		t.Fatal("a resource without a spec was planned")
	}
	fs := byName["fs"]
	if fs.Group != "g" || len(fs.Active) != 1 || fs.Active["n2"] != policy.StateRunning || fs.Leases["n2"] != 7 {
		t.Fatalf("fs: %+v (stopped statuses are not active; leases kept)", fs)
	}
	if ip := byName["ip"]; ip.Active["n2"] != policy.StateFailed || ip.Failures["n2"].Count != 2 {
		t.Fatalf("ip: %+v", ip)
	}
	if g := byName["g"]; g.Assigned != "n2" || g.Group != "" {
		t.Fatalf("g: %+v", g)
	}
	if cs := m.policyConstraints(); len(cs) != 1 || cs[0].First != "g" {
		t.Fatalf("constraints %+v", cs)
	}
}

func TestMayStartHere(t *testing.T) {
	a := &Agent{}
	now := time.Now().UTC()
	for _, tc := range []struct {
		name string
		meta ResourceSpec
		f    *policy.Failure
		want bool
	}{
		{"no failure", ResourceSpec{}, nil, true},
		{"below threshold", ResourceSpec{Policy: policy.Constraints{MigrationThreshold: 3}}, &policy.Failure{Count: 2, Last: now}, true},
		{"at threshold", ResourceSpec{Policy: policy.Constraints{MigrationThreshold: 3}}, &policy.Failure{Count: 3, Last: now}, false},
		{"expired", ResourceSpec{Policy: policy.Constraints{MigrationThreshold: 1, FailureTimeout: policy.Duration(time.Minute)}}, &policy.Failure{Count: 5, Last: now.Add(-2 * time.Minute)}, true},
		{"fatal", ResourceSpec{}, &policy.Failure{Count: 1, Fatal: true, Last: now}, false},
		{"on-fail move", ResourceSpec{OnFail: policy.OnFailMove}, &policy.Failure{Count: 1, Last: now}, false},
		{"on-fail stop", ResourceSpec{OnFail: policy.OnFailStop}, &policy.Failure{Count: 1, Last: now}, false},
		{"on-fail ignore", ResourceSpec{OnFail: policy.OnFailIgnore, Policy: policy.Constraints{MigrationThreshold: 1}}, &policy.Failure{Count: 4, Last: now}, true},
		{"restart, no threshold", ResourceSpec{}, &policy.Failure{Count: 9, Last: now}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := &resView{name: "r", failures: map[string]policy.Failure{}}
			if tc.f != nil {
				v.failures["n1"] = *tc.f
			}
			m := &resModel{res: map[string]*resView{"r": v}}
			why := a.mayStartHereAs(m, &localRes{name: "r"}, tc.meta, "n1")
			if (why == "") != tc.want {
				t.Fatalf("mayStartHere = %q, want allowed=%v", why, tc.want)
			}
		})
	}
}
