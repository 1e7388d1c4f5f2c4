package agent

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/mirror"
)

// failingStore fails the first n updates of a mirror's cluster store, as a
// store briefly out of quorum does.
type failingStore struct {
	mirror.StateStore
	left *atomic.Int32
}

func (s failingStore) Update(ctx context.Context, volume string, epoch uint64, fn func(*mirror.State) error) (mirror.State, error) {
	if s.left.Add(-1) >= 0 {
		return mirror.State{}, fmt.Errorf("volume %s: committing its state to the cluster store: rpc error: code = Unavailable (injected)", volume)
	}
	return s.StateStore.Update(ctx, volume, epoch, fn)
}

// TestStartFailureIsRetriedAtTheSameEpoch: a start that fails for a reason
// that passes (here the store refuses the mirror's first two updates) is
// tried again, at the same epoch, until the volume is served. Before, the
// agent counted the failure and never tried again at that epoch, and the
// DC saw nothing to do: the chaos suite (fifth session, round 10) found a
// volume left unserved so for minutes.
func TestStartFailureIsRetriedAtTheSameEpoch(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an in-process node")
	}
	var left atomic.Int32
	left.Store(2)
	hook := func(c *mirror.Config) {
		if c.Volume == "va" {
			c.Store = failingStore{StateStore: c.Store, left: &left}
		}
	}
	n1, a1 := startTestAgent(t, "n1", nil, hook)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	waitFor(t, 30*time.Second, "n1's replica server published", func() bool {
		info, ok := n1.Members().Node("n1")
		return ok && info.ReplicaAddr != "" && a1.started.Load()
	})
	if err := a1.createVolume(ctx, VolumeRequest{Name: "va", Size: 8 << 20, Replicas: 1}); err != nil {
		t.Fatal(err)
	}
	took := waitFor(t, 20*time.Second, "va served after its failed starts", func() bool { return exports(a1, "va") })
	if n := left.Load(); n > -1 {
		t.Fatalf("served although %d injected failures were left", n+1)
	}
	v, err := a1.volume(ctx, "va")
	if err != nil {
		t.Fatal(err)
	}
	if v.state.Epoch != 1 {
		t.Fatalf("served at epoch %d: the retry should not need a new epoch", v.state.Epoch)
	}
	t.Logf("served %v after creation, after 2 failed starts", took.Round(time.Millisecond))
}
