// Package testnode starts in-process cluster nodes for tests. It does not
// import internal/cluster (it takes any node with the methods below), so
// that package's own tests can use it too.
package testnode

import (
	"context"
	"testing"
	"time"
)

// ReadyWithin is how long Start waits for a node to become ready.
const ReadyWithin = 60 * time.Second

// Node is what Start needs of a node (*cluster.Node); P is its phase
// type, shown when the node is not ready in time.
type Node[P any] interface {
	Start(context.Context) error
	Stop(context.Context) error
	Ready() <-chan struct{}
	Done() <-chan struct{}
	Err() error
	Phase() P
}

// Start starts n, stops it when the test ends, and waits until it is
// ready; the test fails if the node fails first or is not ready within
// ReadyWithin.
func Start[P any](t testing.TB, name string, n Node[P]) {
	t.Helper()
	if err := n.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Stop(context.Background()) })
	select {
	case <-n.Ready():
	case <-n.Done():
		t.Fatalf("node %s failed: %v", name, n.Err())
	case <-time.After(ReadyWithin):
		t.Fatalf("node %s not ready after %v (phase %v)", name, ReadyWithin, n.Phase())
	}
}
