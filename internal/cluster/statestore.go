package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/hacs/hacs/internal/mirror"
)

// VolumeStore is the etcd-backed mirror.StateStore: each volume's state
// (epoch, primary, in-sync set) is one key, VolumeStateKey(volume), updated
// only by transactions conditioned on the revision that was read, so that an
// update based on an outdated epoch can never commit.
type VolumeStore struct {
	cli *clientv3.Client
	// guard, when set, returns comparisons every update must also pass
	// (such as "this node still holds its liveness lease"), and the error
	// to return when they fail.
	guard func() ([]clientv3.Cmp, error)
}

var _ mirror.StateStore = (*VolumeStore)(nil)

// NewVolumeStore returns a store over cli with no extra guard.
func NewVolumeStore(cli *clientv3.Client) *VolumeStore { return &VolumeStore{cli: cli} }

// Load implements mirror.StateStore: the zero State (epoch 0) when the
// volume has no state yet.
func (s *VolumeStore) Load(ctx context.Context, volume string) (mirror.State, error) {
	st, _, err := s.load(ctx, volume)
	return st, err
}

func (s *VolumeStore) load(ctx context.Context, volume string) (mirror.State, int64, error) {
	if err := ValidName("volume", volume); err != nil {
		return mirror.State{}, 0, err
	}
	resp, err := s.cli.Get(ctx, VolumeStateKey(volume))
	if err != nil {
		return mirror.State{}, 0, fmt.Errorf("volume %s: reading its state from the cluster store: %w", volume, err)
	}
	if len(resp.Kvs) == 0 {
		return mirror.State{}, 0, nil
	}
	st, err := decodeState(volume, resp.Kvs[0].Value)
	return st, resp.Kvs[0].ModRevision, err
}

func decodeState(volume string, b []byte) (mirror.State, error) {
	var st mirror.State
	if err := json.Unmarshal(b, &st); err != nil {
		return mirror.State{}, fmt.Errorf("volume %s: state in the cluster store is corrupt: %w", volume, err)
	}
	return st, nil
}

// Update implements mirror.StateStore: fn is applied to a copy of the
// stored state only if its epoch equals epoch (0: no state yet), and the
// result is committed only if the key did not change since it was read.
// When another writer got in between, the state is read again and, if the
// epoch still matches, fn is applied again (so fn must not have side
// effects). A different epoch fails with an error wrapping
// mirror.ErrEpochChanged.
func (s *VolumeStore) Update(ctx context.Context, volume string, epoch uint64, fn func(*mirror.State) error) (mirror.State, error) {
	for {
		var guards []clientv3.Cmp
		if s.guard != nil {
			// checked first: a node that is not serving fails at once
			// instead of waiting for a quorum it cannot reach
			g, err := s.guard()
			if err != nil {
				return mirror.State{}, fmt.Errorf("volume %s: %w", volume, err)
			}
			guards = g
		}
		cur, modRev, err := s.load(ctx, volume)
		if err != nil {
			return mirror.State{}, err
		}
		if cur.Epoch != epoch {
			return mirror.State{}, fmt.Errorf("volume %s: expected epoch %d, cluster store has %d: %w", volume, epoch, cur.Epoch, mirror.ErrEpochChanged)
		}
		next := cur
		next.InSync = slices.Clone(cur.InSync)
		if err := fn(&next); err != nil {
			return mirror.State{}, err
		}
		b, err := json.Marshal(next)
		if err != nil {
			return mirror.State{}, err
		}
		key := VolumeStateKey(volume)
		cmps := append([]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", modRev)}, guards...)
		resp, err := s.cli.Txn(ctx).If(cmps...).Then(clientv3.OpPut(key, string(b))).Else(clientv3.OpGet(key)).Commit()
		if err != nil {
			return mirror.State{}, fmt.Errorf("volume %s: committing its state to the cluster store: %w", volume, err)
		}
		if resp.Succeeded {
			return next, nil
		}
		// Either the key changed (retry) or a guard failed (give up).
		var nowRev int64
		if r := resp.Responses[0].GetResponseRange(); r != nil && len(r.Kvs) > 0 {
			nowRev = r.Kvs[0].ModRevision
		}
		if nowRev == modRev {
			return mirror.State{}, fmt.Errorf("volume %s: %w", volume, ErrNotServing)
		}
		if err := ctx.Err(); err != nil {
			return mirror.State{}, err
		}
	}
}

// Delete removes a volume's state if its epoch is still epoch.
func (s *VolumeStore) Delete(ctx context.Context, volume string, epoch uint64) error {
	cur, modRev, err := s.load(ctx, volume)
	if err != nil {
		return err
	}
	if cur.Epoch != epoch {
		return fmt.Errorf("volume %s: expected epoch %d, cluster store has %d: %w", volume, epoch, cur.Epoch, mirror.ErrEpochChanged)
	}
	key := VolumeStateKey(volume)
	resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", modRev)).Then(clientv3.OpDelete(key)).Commit()
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		return fmt.Errorf("volume %s: its state changed while deleting: %w", volume, mirror.ErrEpochChanged)
	}
	return nil
}

// List returns every volume's state and the revision it was read at.
func (s *VolumeStore) List(ctx context.Context) (map[string]mirror.State, int64, error) {
	resp, err := s.cli.Get(ctx, PrefixVolumes, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, err
	}
	out := map[string]mirror.State{}
	for _, kv := range resp.Kvs {
		rest := strings.TrimPrefix(string(kv.Key), PrefixVolumes)
		name, part, ok := strings.Cut(rest, "/")
		if !ok || part != "state" {
			continue
		}
		st, err := decodeState(name, kv.Value)
		if err != nil {
			return nil, 0, err
		}
		out[name] = st
	}
	return out, resp.Header.Revision, nil
}
