package cli

import (
	"bytes"
	"os"
	"testing"
)

// TestReference keeps docs/CLI.md in step with the command tree.
func TestReference(t *testing.T) {
	var b bytes.Buffer
	WriteReference(&b)
	const path = "../../docs/CLI.md"
	if *update {
		if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	have, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(have, b.Bytes()) {
		t.Fatal("docs/CLI.md is out of date: run go test ./internal/cli -run TestReference -update")
	}
}
