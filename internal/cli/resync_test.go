package cli

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/hacs/hacs/internal/agent"
	"github.com/hacs/hacs/internal/mirror"
)

// resyncAPI answers GET /v1/volumes/vol with each of the states in turn
// (the last one from then on).
func resyncAPI(t *testing.T, states ...agent.VolumeInfo) string {
	var mu sync.Mutex
	i := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/volumes/vol" {
			http.Error(w, `{"error":"no such thing"}`, http.StatusNotFound)
			return
		}
		mu.Lock()
		v := states[min(i, len(states)-1)]
		i++
		mu.Unlock()
		json.NewEncoder(w).Encode(v)
	}))
	t.Cleanup(srv.Close)
	return srv.URL // plain http://: like an --insecure cluster
}

func volState(health string, inSync []string, reps ...mirror.ReplicaStatus) agent.VolumeInfo {
	v := agent.VolumeInfo{Spec: agent.Spec{Name: "vol", Size: 64 << 20, Replicas: 2}, Health: health,
		State: &mirror.State{Epoch: 3, Primary: "n1", InSync: inSync}}
	if reps != nil {
		v.Mirror = &mirror.Status{Volume: "vol", Primary: "n1", Epoch: 3, Replicas: reps}
	}
	return v
}

func TestResyncWait(t *testing.T) {
	n1 := mirror.ReplicaStatus{ID: "n1", Local: true, State: "in-sync", Connected: true}
	outdated := mirror.ReplicaStatus{ID: "n2", State: "outdated", OutOfSync: 32 << 20}
	resync := func(done int64) mirror.ReplicaStatus {
		return mirror.ReplicaStatus{ID: "n2", State: "resyncing", Connected: true, ResyncDone: done, ResyncTotal: 32 << 20}
	}
	addr := resyncAPI(t,
		volState("degraded", []string{"n1"}),                     // no primary view yet
		volState("degraded", []string{"n1"}, n1, outdated),       // 0 %
		volState("degraded", []string{"n1"}, n1, resync(8<<20)),  // 25 %
		volState("degraded", []string{"n1"}, n1, resync(8<<20)),  // same
		volState("degraded", []string{"n1"}, n1, resync(24<<20)), // 75 %
		volState("ok", []string{"n1", "n2"}, n1, mirror.ReplicaStatus{ID: "n2", State: "in-sync", Connected: true}),
	)
	r := runCLI("volume", "resync-wait", "vol", "--interval", "5ms", "--cluster", addr)
	wantErr := `resync vol (n2): 0% 0 B / 32.0 MiB
resync vol (n2): 25% 8.0 MiB / 32.0 MiB
resync vol (n2): 75% 24.0 MiB / 32.0 MiB
`
	if r.code != 0 || r.stderr != wantErr || !strings.HasPrefix(r.stdout, "vol: 2 replica(s) in sync (n1,n2) after ") {
		t.Fatalf("exit %d\nstdout %q\nstderr:\n%s\nwant stderr:\n%s", r.code, r.stdout, r.stderr, wantErr)
	}

	r = runCLI("volume", "resync-wait", "vol", "--interval", "5ms", "--json", "--cluster", addr)
	if r.code != 0 || r.stderr != "" || !strings.Contains(r.stdout, `"in_sync": [`) {
		t.Fatalf("--json: exit %d\nstdout %q\nstderr %q", r.code, r.stdout, r.stderr)
	}

	stopped := volState("stopped", []string{"n1", "n2"})
	stopped.Spec.Stopped = true
	r = runCLI("volume", "resync-wait", "vol", "--cluster", resyncAPI(t, stopped))
	if r.code == 0 || !strings.Contains(r.stderr, "volume vol is stopped (standby): no resync runs") {
		t.Fatalf("stopped: exit %d, stderr %q", r.code, r.stderr)
	}

	// (long enough for a first answer on a loaded CI machine)
	r = runCLI("volume", "resync-wait", "vol", "--interval", "5ms", "--timeout", "2s", "--cluster",
		resyncAPI(t, volState("degraded", []string{"n1"}, n1, resync(1<<20))))
	if r.code == 0 || !strings.Contains(r.stderr, "volume vol: not in sync after 2s (health degraded)") {
		t.Fatalf("timeout: exit %d, stderr %q", r.code, r.stderr)
	}
}
