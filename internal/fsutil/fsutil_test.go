package fsutil

import (
	"os"
	"path/filepath"
	"testing"
)

// TestWriteFileAtomicPerm: the file gets perm even when a leftover temporary
// file (a crash between create and rename) or a planted symlink has the
// temporary name: a key written 0600 must not inherit 0644, nor land
// elsewhere.
func TestWriteFileAtomicPerm(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "client-key.pem")
	if err := os.WriteFile(p+".tmp", []byte("stale"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteFileAtomic(p, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v after a leftover temporary file, want 0600", st.Mode().Perm())
	}
	other := filepath.Join(dir, "elsewhere")
	if err := os.Symlink(other, p+".tmp"); err != nil {
		t.Fatal(err)
	}
	if err := WriteFileAtomic(p, []byte("secret2"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(other); err == nil {
		t.Fatal("wrote through a symlink at the temporary name")
	}
	if b, _ := os.ReadFile(p); string(b) != "secret2" {
		t.Fatalf("content %q", b)
	}
}
