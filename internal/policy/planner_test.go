package policy

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the expected actions of the corpus from the planner's output")

// corpusCase is one saved cluster state with the actions expected from it,
// in the spirit of Pacemaker's scheduler regression tests.
type corpusCase[S, A any] struct {
	Description string `json:"description"`
	State       S      `json:"state"`
	Expected    []A    `json:"expected"`
}

func TestCorpus(t *testing.T) {
	runCorpus(t, "corpus", "testdata/*.json", 40, false, Plan)
}

// TestResourceCorpus: saved cluster states with resources and the
// resource actions expected from them.
func TestResourceCorpus(t *testing.T) {
	runCorpus(t, "resource corpus", "testdata/resources/*.json", 20, true, PlanResources)
}

// runCorpus plans each case of the files matching glob (at least min of
// them; strict: refusing unknown fields) and checks the actions against
// the expected ones, and that planning again gives the same; with -update
// it rewrites the expected actions instead.
func runCorpus[S, A any](t *testing.T, what, glob string, min int, strict bool, plan func(S) []A) {
	files, err := filepath.Glob(glob)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < min {
		t.Fatalf("%s has %d cases, want at least %d", what, len(files), min)
	}
	sort.Strings(files)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var c corpusCase[S, A]
			if strict {
				dec := json.NewDecoder(bytes.NewReader(b))
				dec.DisallowUnknownFields()
				err = dec.Decode(&c)
			} else {
				err = json.Unmarshal(b, &c)
			}
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			got := plan(c.State)
			if *update {
				c.Expected = got
				out, _ := json.MarshalIndent(c, "", "  ")
				os.WriteFile(f, append(out, '\n'), 0o644)
				return
			}
			if len(got) == 0 && len(c.Expected) == 0 {
				return
			}
			if !reflect.DeepEqual(got, c.Expected) {
				g, _ := json.MarshalIndent(got, "", "  ")
				e, _ := json.MarshalIndent(c.Expected, "", "  ")
				t.Fatalf("%s\ngot:\n%s\nwant:\n%s", c.Description, g, e)
			}
			// Determinism: the same state plans the same way again.
			if again := plan(c.State); !reflect.DeepEqual(again, got) {
				t.Fatal("planner is not deterministic")
			}
		})
	}
}

// TestManyNewVolumesSpread: volumes created at once on equal nodes are
// spread over them, primaries and replicas alike (the least loaded node
// wins a tie), and an existing primary does not move for balance.
func TestManyNewVolumesSpread(t *testing.T) {
	st := State{Now: time.Unix(1700000000, 0)}
	for _, n := range []string{"n1", "n2", "n3"} {
		st.Nodes = append(st.Nodes, Node{Name: n, Online: true, Roles: []string{RoleStorage}, FreeBytes: 1 << 40})
	}
	st.Volumes = append(st.Volumes, Volume{Name: "old", Size: 1 << 20, Replicas: 2, Placed: []string{"n1", "n2"}, Epoch: 1, Primary: "n1", InSync: []string{"n1", "n2"}})
	for i := 0; i < 300; i++ {
		st.Volumes = append(st.Volumes, Volume{Name: fmt.Sprintf("v%03d", i), Size: 1 << 20, Replicas: 2})
	}
	primaries, replicas := map[string]int{}, map[string]int{}
	for _, a := range Plan(st) {
		if a.Volume == "old" {
			t.Fatalf("the existing volume was moved: %+v", a)
		}
		if a.Kind != ActPlace {
			t.Fatalf("unexpected action %+v", a)
		}
		primaries[a.Node]++
		for _, r := range a.Replicas {
			replicas[r]++
		}
	}
	for _, n := range []string{"n1", "n2", "n3"} {
		if primaries[n] < 99 || primaries[n] > 101 || replicas[n] < 199 || replicas[n] > 201 {
			t.Errorf("not spread: primaries %v, replicas %v", primaries, replicas)
			break
		}
	}
}

// TestFailbackSettle: the boundaries of the failback settle time, for a
// healthy primary on n2 with n1 preferred (a preference move) and for a
// dead primary (a failover, never delayed).
func TestFailbackSettle(t *testing.T) {
	now := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		name       string
		online     time.Duration // how long n1 has been online; 0: unknown
		settle     Duration
		primaryOff bool
		want       string // the node promoted, "" for none
	}{
		{"online 3s: no failback", 3 * time.Second, 0, false, ""},
		{"online 9.999s: no failback", 10*time.Second - time.Millisecond, 0, false, ""},
		{"online 10s: failback", 10 * time.Second, 0, false, "n1"},
		{"online 15s: failback", 15 * time.Second, 0, false, "n1"},
		{"online since unknown: settled", 0, 0, false, "n1"},
		{"settle 30s, online 15s: no failback", 15 * time.Second, Duration(30 * time.Second), false, ""},
		{"settle off, online 1ms: failback", time.Millisecond, -1, false, "n1"},
		{"primary offline, n1 online 1ms: failover at once", time.Millisecond, 0, true, "n1"},
		{"primary offline, settle 1h: failover at once", time.Second, Duration(time.Hour), true, "n1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n1 := Node{Name: "n1", Online: true, FreeBytes: 1 << 40}
			if tc.online > 0 {
				n1.OnlineSince = now.Add(-tc.online)
			}
			n2 := Node{Name: "n2", Online: !tc.primaryOff, FreeBytes: 1 << 40}
			if tc.primaryOff {
				n2.OfflineSince = now.Add(-time.Second)
			}
			st := State{Now: now, Settings: Settings{FailbackSettle: tc.settle}, Nodes: []Node{n1, n2},
				Volumes: []Volume{{Name: "v", Size: 1 << 20, Replicas: 2, Constraints: Constraints{Prefer: []string{"n1", "n2"}},
					Epoch: 3, Primary: "n2", Placed: []string{"n1", "n2"}, InSync: []string{"n1", "n2"}}}}
			var got string
			for _, a := range Plan(st) {
				if a.Kind == ActPromote {
					got = a.Node
				}
			}
			if got != tc.want {
				t.Fatalf("promoted %q, want %q (actions %+v)", got, tc.want, Plan(st))
			}
		})
	}
}
