// Package testlog gives tests a logger and a log sink they can read while
// the code under test writes to it.
package testlog

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
)

// Logger is a test's logger: silent, unless the test runs with -v and
// HACS_TEST_LOG is set, then to stderr with the test's name.
func Logger(t testing.TB) *slog.Logger {
	if testing.Verbose() && os.Getenv("HACS_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, nil)).With("test", t.Name())
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// Buffer is a bytes.Buffer safe for writers (a logger, a child process's
// output) and a reader at the same time. The zero value is ready to use.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns what was written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
