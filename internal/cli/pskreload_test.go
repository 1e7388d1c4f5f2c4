package cli

import (
	"bytes"
	"context"
	"encoding/hex"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/testlog"
	"github.com/hacs/hacs/internal/tlspsk"
)

func pskLine(id string, key byte) string {
	return id + ":" + hex.EncodeToString(bytes.Repeat([]byte{key}, 32)) + "\n"
}

// TestPSKReloader: SIGHUP re-reads the key file and hands the new keys
// over, naming what changed; a malformed file is refused with a clear log
// line and the keys in force stay; a change of the file is picked up
// without a signal once it holds still; re-reading an unchanged file hands
// nothing over.
func TestPSKReloader(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.psk")
	write := func(s string) {
		t.Helper()
		// a new file renamed into place, as an administrator should
		tmp := path + ".new"
		if err := os.WriteFile(tmp, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write(pskLine("alice", 1) + pskLine("bob", 2))
	keys, err := tlspsk.LoadKeys(path)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var applied []tlspsk.Keys
	apply := func(k tlspsk.Keys) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		applied = append(applied, k)
		return 1, nil
	}
	nApplied := func() int { mu.Lock(); defer mu.Unlock(); return len(applied) }
	logs := &testlog.Buffer{}
	r := newPSKReloader(path, keys, apply, slog.New(slog.NewTextHandler(logs, nil)))
	r.interval = 20 * time.Millisecond
	hup := make(chan os.Signal)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.run(ctx, hup); close(done) }()
	defer func() { cancel(); <-done }()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(3 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 3 s; log:\n%s", what, logs.String())
			}
		}
	}

	// SIGHUP: alice removed, bob's key changed, carol added
	write(pskLine("bob", 3) + pskLine("carol", 4))
	hup <- nil
	waitFor("the reload on SIGHUP", func() bool { return nApplied() == 1 })
	mu.Lock()
	if got := applied[0]; len(got) != 2 || got["carol"] == nil || got["bob"][0] != 3 {
		t.Fatalf("keys handed over: %v", got)
	}
	mu.Unlock()
	waitFor("its log line", func() bool {
		return strings.Contains(logs.String(), `msg="pre-shared key file reloaded"`) && strings.Contains(logs.String(), "trigger=SIGHUP identities=2 added=carol removed=alice key_changed=bob connections_cut=1")
	})

	// malformed: refused, nothing handed over, the keys in force stay
	for i, bad := range []string{"carol-without-a-key\n", pskLine("dave", 5) + "dave:0102\n", ""} {
		write(bad)
		hup <- nil
		waitFor("the refusal", func() bool { return strings.Count(logs.String(), "NOT reloaded") >= i+1 })
	}
	if n := strings.Count(logs.String(), `msg="pre-shared key file NOT reloaded: it is refused, the keys in force stay"`); n != 3 || nApplied() != 1 || len(r.keys) != 2 {
		t.Fatalf("%d refusals logged, %d key sets handed over; log:\n%s", n, nApplied(), logs.String())
	}
	if !strings.Contains(logs.String(), "want at least 16") || !strings.Contains(logs.String(), "no keys") {
		t.Fatalf("the refusals do not say why:\n%s", logs.String())
	}

	// a change without a signal
	write(pskLine("bob", 3) + pskLine("carol", 4) + pskLine("dave", 6))
	waitFor("the reload of the changed file", func() bool { return nApplied() == 2 })
	waitFor("its log line", func() bool {
		return strings.Contains(logs.String(), `trigger="the file changed" identities=3 added=dave`)
	})

	// the same keys again: nothing handed over
	hup <- nil
	waitFor("the re-read", func() bool { return strings.Contains(logs.String(), "pre-shared key file re-read: no change") })
	if nApplied() != 2 {
		t.Fatalf("an unchanged file was handed over")
	}
}

func TestDiffKeys(t *testing.T) {
	old := tlspsk.Keys{"a": {1}, "b": {2}, "c": {3}}
	new := tlspsk.Keys{"b": {2}, "c": {9}, "d": {4}, "e": {5}}
	added, removed, changed := diffKeys(old, new)
	if strings.Join(added, ",") != "d,e" || strings.Join(removed, ",") != "a" || strings.Join(changed, ",") != "c" {
		t.Fatalf("added %v removed %v changed %v", added, removed, changed)
	}
}
