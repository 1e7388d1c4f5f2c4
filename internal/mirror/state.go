package mirror

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/hacs/hacs/internal/fsutil"
)

// State is a volume's replication record in the cluster store: its epoch,
// its primary and the replicas that hold every acknowledged write.
type State struct {
	Epoch   uint64   `json:"epoch"`
	Primary string   `json:"primary"`
	InSync  []string `json:"in_sync"`
}

// Has reports whether id is in the in-sync set.
func (s State) Has(id string) bool { return slices.Contains(s.InSync, id) }

// ErrEpochChanged means a conditional update found a newer epoch: another
// primary has taken over and this one is fenced.
var ErrEpochChanged = fmt.Errorf("volume epoch changed: a newer primary has taken over: %w", syscall.ESHUTDOWN)

// StateStore holds volume states. The cluster store (etcd) implements it;
// MemStore and FileStore serve tests and single-machine use.
type StateStore interface {
	Load(ctx context.Context, volume string) (State, error)
	// Update applies fn to the volume's state atomically, only if its epoch
	// still equals epoch; otherwise it fails with ErrEpochChanged.
	// An update that returned an error may still commit later (etcd: a
	// transaction proposed before its context ended), but only if no
	// other update committed after the state it read: every successful
	// update, even one that changes nothing, is a barrier to those before.
	Update(ctx context.Context, volume string, epoch uint64, fn func(*State) error) (State, error)
}

// TakeOver makes newPrimary the volume's primary with a bumped epoch. It
// refuses a node outside the in-sync set (invariant 3).
func TakeOver(ctx context.Context, st StateStore, volume, newPrimary string) (State, error) {
	cur, err := st.Load(ctx, volume)
	if err != nil {
		return State{}, err
	}
	return st.Update(ctx, volume, cur.Epoch, func(s *State) error {
		if !s.Has(newPrimary) {
			return fmt.Errorf("volume %s: %s is not in the in-sync set %v and cannot become primary", volume, newPrimary, s.InSync)
		}
		s.Primary = newPrimary
		s.Epoch++
		return nil
	})
}

// Init creates a volume's state if it has none: epoch 1, the given primary,
// all replicas in sync (a new, empty volume).
func Init(ctx context.Context, st StateStore, volume, primary string, replicas []string) (State, error) {
	return st.Update(ctx, volume, 0, func(s *State) error {
		*s = State{Epoch: 1, Primary: primary, InSync: slices.Clone(replicas)}
		return nil
	})
}

// MemStore is an in-memory StateStore.
type MemStore struct {
	mu sync.Mutex
	m  map[string]State
	// Fail, when set, makes every Update fail with it (a store cut off
	// from quorum).
	Fail error
}

// NewMemStore returns an empty store.
func NewMemStore() *MemStore { return &MemStore{m: make(map[string]State)} }

// Load implements StateStore.
func (s *MemStore) Load(_ context.Context, volume string) (State, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.m[volume]
	st.InSync = slices.Clone(st.InSync)
	return st, nil
}

// Update implements StateStore.
func (s *MemStore) Update(_ context.Context, volume string, epoch uint64, fn func(*State) error) (State, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.Fail != nil {
		return State{}, s.Fail
	}
	st := s.m[volume]
	if st.Epoch != epoch {
		return State{}, fmt.Errorf("volume %s: expected epoch %d, store has %d: %w", volume, epoch, st.Epoch, ErrEpochChanged)
	}
	st.InSync = slices.Clone(st.InSync)
	if err := fn(&st); err != nil {
		return State{}, err
	}
	s.m[volume] = st
	return st, nil
}

// FileStore keeps volume states in one JSON file, locked with flock, so that
// several processes on one machine share it (tests, single-node setups).
type FileStore struct{ Path string }

func (f FileStore) locked(fn func(map[string]State) (bool, error)) error {
	lf, err := os.OpenFile(f.Path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer lf.Close()
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX); err != nil {
		return err
	}
	defer unix.Flock(int(lf.Fd()), unix.LOCK_UN)
	m := map[string]State{}
	b, err := os.ReadFile(f.Path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if len(b) > 0 {
		if err := json.Unmarshal(b, &m); err != nil {
			return fmt.Errorf("state file %s is corrupt: %w", f.Path, err)
		}
	}
	changed, err := fn(m)
	if err != nil || !changed {
		return err
	}
	b, err = json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(f.Path, b, 0o600)
}

// Load implements StateStore.
func (f FileStore) Load(_ context.Context, volume string) (State, error) {
	var st State
	err := f.locked(func(m map[string]State) (bool, error) {
		st = m[volume]
		return false, nil
	})
	return st, err
}

// Update implements StateStore.
func (f FileStore) Update(_ context.Context, volume string, epoch uint64, fn func(*State) error) (State, error) {
	var st State
	err := f.locked(func(m map[string]State) (bool, error) {
		st = m[volume]
		if st.Epoch != epoch {
			return false, fmt.Errorf("volume %s: expected epoch %d, store has %d: %w", volume, epoch, st.Epoch, ErrEpochChanged)
		}
		if err := fn(&st); err != nil {
			return false, err
		}
		m[volume] = st
		return true, nil
	})
	return st, err
}
