package store

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/hacs/hacs/internal/device"
)

// DefaultOvercommit is the overcommit ratio of a new pool: the thin sizes
// of its volumes may add up to twice the space the pool can use.
const DefaultOvercommit = 2.0

// Pool is a directory holding thin volumes.
type Pool struct {
	dir string
	cfg poolConfig
}

// PoolOptions configure CreatePool.
type PoolOptions struct {
	// Overcommit bounds the sum of the volumes' sizes to this multiple of
	// the pool's capacity (0: DefaultOvercommit; 1: no overcommit).
	Overcommit float64
}

// PoolStats is what a pool holds and promises.
type PoolStats struct {
	// Capacity is what the pool may occupy: its own usage plus the free
	// space of its filesystem.
	Capacity int64 `json:"capacity"`
	Used     int64 `json:"used"`     // allocated bytes of all layer files
	Free     int64 `json:"free"`     // free space of the filesystem
	Promised int64 `json:"promised"` // sum of the volumes' sizes
	// Limit is Capacity × Overcommit: volumes are not created past it.
	Limit      int64   `json:"limit"`
	Overcommit float64 `json:"overcommit"`
	Volumes    int     `json:"volumes"`
}

// VolumeInfo describes one volume of a pool.
type VolumeInfo struct {
	Name      string `json:"name"`
	Size      int64  `json:"size"`
	Used      int64  `json:"used"`
	Snapshots int    `json:"snapshots"`
	// Error is set when the volume's manifest cannot be read.
	Error string `json:"error,omitempty"`
}

// CreatePool makes dir (and its parents) a pool. It fails if dir is one
// already.
func CreatePool(dir string, opt PoolOptions) (*Pool, error) {
	if opt.Overcommit == 0 {
		opt.Overcommit = DefaultOvercommit
	}
	if !(opt.Overcommit >= 1) || opt.Overcommit > 1000 {
		return nil, fmt.Errorf("create pool %s: overcommit ratio %v must be between 1 and 1000", dir, opt.Overcommit)
	}
	if err := os.MkdirAll(filepath.Join(dir, "volumes"), 0o700); err != nil {
		return nil, fmt.Errorf("create pool: %w", err)
	}
	if err := checkFilesystem(dir); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(dir, poolConfigName)); err == nil {
		return nil, fmt.Errorf("create pool %s: already a pool: %w", dir, fs.ErrExist)
	}
	c := poolConfig{Format: poolFormat, Version: formatVersion, Overcommit: opt.Overcommit}
	data, err := encodePoolConfig(&c)
	if err != nil {
		return nil, err
	}
	if err := writeAtomic(filepath.Join(dir, poolConfigName), data); err != nil {
		return nil, fmt.Errorf("create pool: %w", err)
	}
	return OpenPool(dir)
}

// OpenPool opens the pool in dir.
func OpenPool(dir string) (*Pool, error) {
	c, err := readPoolConfig(dir)
	if err != nil {
		return nil, err
	}
	if err := checkFilesystem(dir); err != nil {
		return nil, err
	}
	p := &Pool{dir: dir, cfg: *c}
	if err := os.MkdirAll(p.volumesDir(), 0o700); err != nil {
		return nil, err
	}
	// Remove what interrupted creations and deletions left behind.
	unlock, err := p.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	ents, _ := os.ReadDir(p.volumesDir())
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			os.RemoveAll(filepath.Join(p.volumesDir(), e.Name()))
		}
	}
	return p, nil
}

// OpenOrCreatePool opens the pool in dir, creating it when dir holds none.
func OpenOrCreatePool(dir string, opt PoolOptions) (*Pool, error) {
	p, err := OpenPool(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if _, serr := os.Stat(filepath.Join(dir, poolConfigName)); errors.Is(serr, fs.ErrNotExist) {
			return CreatePool(dir, opt)
		}
	}
	return p, err
}

// checkFilesystem refuses filesystems the layer format cannot live on: the
// presence of a block in a layer is its allocation (SEEK_DATA), so blocks
// of the filesystem must not be larger than 4 KiB and holes must show.
func checkFilesystem(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("pool %s: statfs: %w", dir, err)
	}
	if st.Bsize <= 0 || st.Bsize > blockSize || blockSize%st.Bsize != 0 {
		return fmt.Errorf("pool %s: filesystem block size %d is not supported (must divide %d)", dir, st.Bsize, blockSize)
	}
	f, err := os.CreateTemp(dir, ".probe-")
	if err != nil {
		return fmt.Errorf("pool %s: %w", dir, err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if _, err := f.WriteAt([]byte{1}, 1<<20); err != nil {
		return fmt.Errorf("pool %s: probe: %w", dir, normalizeSpace(err))
	}
	off, err := unix.Seek(int(f.Fd()), 0, unix.SEEK_DATA)
	if err != nil || off < 1<<20-blockSize {
		return fmt.Errorf("pool %s: the filesystem does not report holes (SEEK_DATA found data at %d, err %v); thin volumes need a filesystem with sparse files such as ext4, xfs, btrfs or tmpfs", dir, off, err)
	}
	return nil
}

// Dir is the pool's directory.
func (p *Pool) Dir() string { return p.dir }

// Overcommit is the pool's overcommit ratio.
func (p *Pool) Overcommit() float64 { return p.cfg.Overcommit }

func (p *Pool) volumesDir() string { return filepath.Join(p.dir, "volumes") }

// lock takes the pool's exclusive lock (across processes) for creations
// and deletions.
func (p *Pool) lock() (func(), error) {
	f, err := os.OpenFile(filepath.Join(p.dir, "pool.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock pool %s: %w", p.dir, err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock pool %s: %w", p.dir, err)
	}
	return func() { f.Close() }, nil
}

// Volumes lists the pool's volumes by name.
func (p *Pool) Volumes() ([]VolumeInfo, error) {
	ents, err := os.ReadDir(p.volumesDir())
	if err != nil {
		return nil, fmt.Errorf("pool %s: %w", p.dir, err)
	}
	var out []VolumeInfo
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		dir := filepath.Join(p.volumesDir(), e.Name())
		vi := VolumeInfo{Name: e.Name()}
		files, _ := os.ReadDir(dir)
		for _, f := range files {
			if layerFileRE.MatchString(f.Name()) {
				vi.Used += allocated(filepath.Join(dir, f.Name()))
			}
		}
		if m, err := readManifest(dir, e.Name()); err != nil {
			vi.Error = err.Error()
		} else {
			vi.Size = m.Size
			for _, l := range m.Layers[:len(m.Layers)-1] {
				if !l.Deleting {
					vi.Snapshots++
				}
			}
		}
		out = append(out, vi)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Stats reports capacity, usage and promises.
func (p *Pool) Stats() (PoolStats, error) {
	vols, err := p.Volumes()
	if err != nil {
		return PoolStats{}, err
	}
	var st unix.Statfs_t
	if err := unix.Statfs(p.dir, &st); err != nil {
		return PoolStats{}, fmt.Errorf("pool %s: statfs: %w", p.dir, err)
	}
	s := PoolStats{Overcommit: p.cfg.Overcommit, Volumes: len(vols), Free: int64(st.Bavail) * st.Bsize}
	for _, v := range vols {
		s.Used += v.Used
		s.Promised += v.Size
	}
	s.Capacity = s.Used + s.Free
	s.Limit = int64(float64(s.Capacity) * s.Overcommit)
	return s, nil
}

// checkPromise refuses to promise extra bytes past the overcommit limit.
func (p *Pool) checkPromise(what string, extra int64) error {
	s, err := p.Stats()
	if err != nil {
		return err
	}
	if s.Promised+extra > s.Limit {
		return fmt.Errorf("pool %s: %s needs %s more, but the pool already promises %s of its limit %s (capacity %s = used %s + free %s, × overcommit %.2f): %w",
			p.dir, what, fmtBytes(extra), fmtBytes(s.Promised), fmtBytes(s.Limit), fmtBytes(s.Capacity), fmtBytes(s.Used), fmtBytes(s.Free), s.Overcommit, syscall.ENOSPC)
	}
	return nil
}

func fmtBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB (%d bytes)", float64(n)/float64(div), "KMGTPE"[exp], n)
}

// CreateVolume creates an empty thin volume of the given size (a multiple
// of 4 KiB).
func (p *Pool) CreateVolume(name string, size int64) error {
	return p.createVolume(name, size, nil)
}

// createVolume builds the volume in a temporary directory, then renames it
// into place, so that it appears whole or not at all.
func (p *Pool) createVolume(name string, size int64, fill func(*device.File) error) error {
	if err := checkName("volume", name); err != nil {
		return err
	}
	if size <= 0 || size%blockSize != 0 {
		return fmt.Errorf("create volume %s: size %d must be a positive multiple of %d: %w", name, size, blockSize, syscall.EINVAL)
	}
	unlock, err := p.lock()
	if err != nil {
		return err
	}
	defer unlock()
	dst := filepath.Join(p.volumesDir(), name)
	if _, err := os.Lstat(dst); err == nil {
		return fmt.Errorf("create volume %s: it exists already in pool %s: %w", name, p.dir, fs.ErrExist)
	}
	if err := p.checkPromise(fmt.Sprintf("creating volume %s", name), size); err != nil {
		return err
	}
	var rnd [6]byte
	rand.Read(rnd[:])
	tmp := filepath.Join(p.volumesDir(), ".tmp-"+name+"-"+hex.EncodeToString(rnd[:]))
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return fmt.Errorf("create volume %s: %w", name, err)
	}
	err = func() error {
		file := layerFileName(1)
		dev, err := device.OpenFile(filepath.Join(tmp, file), size, false)
		if err != nil {
			return err
		}
		if fill != nil {
			err = fill(dev)
		}
		if err == nil {
			err = dev.Flush()
		}
		if cerr := dev.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		m := manifest{Format: volumeFormat, Version: formatVersion, Name: name, Size: size, NextID: 2,
			Layers: []manifestLayer{{ID: 1, File: file, Created: now()}}}
		data, err := encodeManifest(&m)
		if err != nil {
			return err
		}
		if err := writeAtomic(filepath.Join(tmp, manifestName), data); err != nil {
			return err
		}
		if err := os.Rename(tmp, dst); err != nil {
			return err
		}
		return syncDir(p.volumesDir())
	}()
	if err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("create volume %s: %w", name, normalizeSpace(err))
	}
	return nil
}

// OpenVolume opens a volume. A volume is open at most once at a time.
func (p *Pool) OpenVolume(name string, opt Options) (*Volume, error) {
	if err := checkName("volume", name); err != nil {
		return nil, err
	}
	dir := filepath.Join(p.volumesDir(), name)
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("pool %s has no volume %q: %w", p.dir, name, fs.ErrNotExist)
	}
	return openVolume(p, name, dir, opt)
}

// DeleteVolume removes a volume that is not open, with its snapshots.
func (p *Pool) DeleteVolume(name string) error {
	if err := checkName("volume", name); err != nil {
		return err
	}
	unlock, err := p.lock()
	if err != nil {
		return err
	}
	defer unlock()
	dir := filepath.Join(p.volumesDir(), name)
	if _, err := os.Stat(dir); err != nil {
		return fmt.Errorf("pool %s has no volume %q: %w", p.dir, name, fs.ErrNotExist)
	}
	lf, err := lockVolumeDir(dir)
	if err != nil {
		return err
	}
	defer lf.Close()
	var rnd [6]byte
	rand.Read(rnd[:])
	tmp := filepath.Join(p.volumesDir(), ".tmp-del-"+name+"-"+hex.EncodeToString(rnd[:]))
	if err := os.Rename(dir, tmp); err != nil {
		return fmt.Errorf("delete volume %s: %w", name, err)
	}
	if err := syncDir(p.volumesDir()); err != nil {
		return err
	}
	return os.RemoveAll(tmp)
}
