package cli

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestOpenPoolVolume covers what `hacs serve --pool DIR VOLUME [--size]`
// does before serving: create the pool and the volume with --size, reopen
// without it, refuse a size mismatch and a missing pool.
func TestOpenPoolVolume(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pool")
	if _, err := openPoolVolume(dir, "vm1", 0, false); err == nil || !strings.Contains(err.Error(), "pool.json") {
		t.Fatalf("missing pool without --size: %v", err)
	}
	v, err := openPoolVolume(dir, "vm1", 1<<20, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt([]byte("hello"), 4095, false); err != nil {
		t.Fatal(err)
	}
	v.Close()
	v, err = openPoolVolume(dir, "vm1", 0, true)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if err := v.ReadAt(buf, 4095); err != nil || string(buf) != "hello" {
		t.Fatalf("read back %q, %v", buf, err)
	}
	if err := v.WriteAt(buf, 0, false); err == nil {
		t.Fatal("read-only volume accepted a write")
	}
	v.Close()
	if _, err := openPoolVolume(dir, "vm1", 2<<20, false); err == nil || !strings.Contains(err.Error(), "differs") {
		t.Fatalf("size mismatch: %v", err)
	}
}
