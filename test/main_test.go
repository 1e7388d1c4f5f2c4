// Package test holds the real-peer integration tests of hacs: `hacs serve` is
// started as a child process and driven by the standard NBD tools (nbdinfo,
// nbdcopy, nbdfuse, qemu-io, qemu-img, fio, the kernel via a loop device),
// and the hacs NBD client is run against nbdkit.
//
// The Debian packages the tests need are installed by scripts/install-deps.sh
// (make test). A missing tool fails the test that needs it, naming the
// package; nothing is skipped silently.
package test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// hacsBin is the path of the hacs binary built once by TestMain.
var hacsBin string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "hacs-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "test: temp dir:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	hacsBin = filepath.Join(dir, "hacs")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// Built without -race: the server under test is the production binary;
	// the race detector covers the client code running inside the tests.
	cmd := exec.CommandContext(ctx, "go", "build", "-o", hacsBin, "github.com/hacs/hacs/cmd/hacs")
	cmd.Stdout = os.Stderr
	cmd.Stderr = os.Stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "test: building hacs:", err)
		return 1
	}
	return m.Run()
}
