package replica

import (
	"errors"
	"io/fs"

	"github.com/hacs/hacs/internal/device"
	"github.com/hacs/hacs/internal/store"
)

// PoolOpener keeps replicas as thin volumes of a storage pool, so they get
// snapshots, clones and resize from the store.
type PoolOpener struct{ Pool *store.Pool }

// Open implements Opener.
func (o PoolOpener) Open(volume string, size int64) (device.Device, error) {
	v, err := o.Pool.OpenVolume(volume, store.Options{})
	if errors.Is(err, fs.ErrNotExist) && size > 0 {
		if err := o.Pool.CreateVolume(volume, size); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, err
		}
		v, err = o.Pool.OpenVolume(volume, store.Options{})
	}
	if err != nil {
		return nil, err
	}
	return v, nil
}
