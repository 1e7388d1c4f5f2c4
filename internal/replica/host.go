// Package replica keeps the replicas a node holds and lets volume primaries
// use them, fenced by epoch: a primary opens a replica with the volume's
// epoch, a newer epoch permanently shuts out every handle opened with an
// older one (after letting its in-flight requests finish), and an older epoch
// is refused. The newest epoch seen is persisted, so the fence survives a
// restart. The same Host serves the local primary (in-process handles) and
// remote primaries (the NBD replica server in server.go).
package replica

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/hacs/hacs/internal/device"
	"github.com/hacs/hacs/internal/fsutil"
)

// ErrStaleEpoch is returned to a primary whose epoch is older than the
// newest the replica has seen. It wraps ESHUTDOWN so that it crosses NBD.
var ErrStaleEpoch = fmt.Errorf("stale epoch: a newer primary has taken over: %w", syscall.ESHUTDOWN)

// Opener opens the device backing a replica. A positive size creates it
// when missing (sparse); the device must then have exactly that size.
type Opener interface {
	Open(volume string, size int64) (device.Device, error)
}

// DirOpener keeps each replica as a sparse file DIR/VOLUME.img.
type DirOpener struct{ Dir string }

// Open implements Opener.
func (o DirOpener) Open(volume string, size int64) (device.Device, error) {
	if err := ValidName(volume); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, err
	}
	return device.OpenFile(filepath.Join(o.Dir, volume+".img"), size, false)
}

// ValidName checks a volume name: letters, digits, '-', '_', '.', not
// starting with '.', at most 128 bytes.
func ValidName(name string) error {
	if name == "" || len(name) > 128 || name[0] == '.' {
		return fmt.Errorf("invalid volume name %q", name)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("invalid volume name %q: only letters, digits, '-', '_' and '.' are allowed", name)
		}
	}
	return nil
}

// Host manages the replicas of one node.
type Host struct {
	stateDir string
	opener   Opener
	mu       sync.Mutex
	vols     map[string]*hostVol
	// onNewEpoch, if set, is told of every open at an epoch newer than the
	// volume's newest (SetOnNewEpoch).
	onNewEpoch func(volume string, epoch uint64)
}

// SetOnNewEpoch has fn called each time a primary opens a replica at an
// epoch newer than any seen for the volume, once the handles of earlier
// epochs are fenced, and before Acquire returns (so before that primary
// can serve). fn must not call back into the Host. The agent uses it to cut
// off at once the export of its own older primary of that volume, which
// would otherwise only learn at its next I/O that it was fenced. Set it
// before the Host is used.
func (h *Host) SetOnNewEpoch(fn func(volume string, epoch uint64)) { h.onNewEpoch = fn }

type hostVol struct {
	dev   device.Device
	refs  int
	epoch uint64
	gate  *gate
}

// NewHost keeps epoch records in stateDir and opens replicas with opener.
func NewHost(stateDir string, opener Opener) (*Host, error) {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("replica state dir: %w", err)
	}
	return &Host{stateDir: stateDir, opener: opener, vols: make(map[string]*hostVol)}, nil
}

// Epoch returns the newest epoch seen for a volume (0 if none).
func (h *Host) Epoch(volume string) (uint64, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if v := h.vols[volume]; v != nil {
		return v.epoch, nil
	}
	return h.loadEpoch(volume)
}

func (h *Host) epochPath(volume string) string {
	return filepath.Join(h.stateDir, volume+".epoch")
}

func (h *Host) loadEpoch(volume string) (uint64, error) {
	b, err := os.ReadFile(h.epochPath(volume))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	e, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("epoch file %s is corrupt: %q", h.epochPath(volume), b)
	}
	return e, nil
}

func (h *Host) storeEpoch(volume string, epoch uint64) error {
	return fsutil.WriteFileAtomic(h.epochPath(volume), []byte(strconv.FormatUint(epoch, 10)+"\n"), 0o600)
}

// Acquire opens a volume's replica for a primary at epoch. size > 0 creates
// the replica when missing. An epoch older than the newest seen fails with
// ErrStaleEpoch; otherwise every earlier handle (older epoch, or the same
// primary's previous connection) is fenced first: one live handle per
// replica.
func (h *Host) Acquire(volume string, epoch uint64, size int64) (*Handle, error) {
	if err := ValidName(volume); err != nil {
		return nil, err
	}
	if epoch == 0 {
		return nil, fmt.Errorf("volume %s: epoch 0 is not valid", volume)
	}
	newer := false
	defer func() { // after h.mu is released
		if newer && h.onNewEpoch != nil {
			h.onNewEpoch(volume, epoch)
		}
	}()
	h.mu.Lock()
	defer h.mu.Unlock()
	v := h.vols[volume]
	if v == nil {
		e, err := h.loadEpoch(volume)
		if err != nil {
			return nil, err
		}
		v = &hostVol{epoch: e}
	}
	if epoch < v.epoch {
		return nil, fmt.Errorf("volume %s: epoch %d < %d: %w", volume, epoch, v.epoch, ErrStaleEpoch)
	}
	if epoch > v.epoch {
		if err := h.storeEpoch(volume, epoch); err != nil {
			return nil, fmt.Errorf("volume %s: persist epoch %d: %w", volume, epoch, err)
		}
		v.epoch = epoch
		newer = true
	}
	// Every earlier handle is fenced, of an older epoch or of this one: a
	// primary opens a replica again only after giving up on its previous
	// connection, and a write still queued there must never land after the
	// resync that followed (it would overwrite newer data). Fencing waits
	// for the requests in flight on the earlier handle.
	if v.gate != nil {
		v.gate.fence()
		v.gate = nil
	}
	if v.dev == nil {
		dev, err := h.opener.Open(volume, size)
		if err != nil {
			return nil, fmt.Errorf("open replica %s: %w", volume, err)
		}
		v.dev = dev
	}
	if size > 0 && v.dev.Size() != size {
		if v.refs == 0 {
			v.dev.Close()
			v.dev = nil
		}
		return nil, fmt.Errorf("replica %s has size %d, primary expects %d", volume, h.sizeOf(v), size)
	}
	if v.gate == nil {
		v.gate = &gate{}
	}
	v.refs++
	h.vols[volume] = v
	return &Handle{Device: v.dev, gate: v.gate, host: h, volume: volume, epoch: epoch}, nil
}

// Use runs fn on a volume's replica device for an administrative operation
// (snapshot, resize, revert, clone), opening it if no primary has it open.
// The device is shared with the primaries' handles. fence > 0 also fences
// every handle opened before, like a primary of epoch fence opening it (an
// operation that needs the volume stopped: no write of an earlier primary
// may land after it); an older fence fails with ErrStaleEpoch.
func (h *Host) Use(volume string, fence uint64, fn func(device.Device) error) error {
	if err := ValidName(volume); err != nil {
		return err
	}
	h.mu.Lock()
	v := h.vols[volume]
	if v == nil {
		e, err := h.loadEpoch(volume)
		if err != nil {
			h.mu.Unlock()
			return err
		}
		v = &hostVol{epoch: e}
	}
	if fence > 0 {
		if fence < v.epoch {
			h.mu.Unlock()
			return fmt.Errorf("volume %s: epoch %d < %d: %w", volume, fence, v.epoch, ErrStaleEpoch)
		}
		if fence > v.epoch {
			if err := h.storeEpoch(volume, fence); err != nil {
				h.mu.Unlock()
				return fmt.Errorf("volume %s: persist epoch %d: %w", volume, fence, err)
			}
			v.epoch = fence
		}
		if v.gate != nil {
			v.gate.fence()
			v.gate = nil
		}
	}
	if v.dev == nil {
		dev, err := h.opener.Open(volume, 0)
		if err != nil {
			h.mu.Unlock()
			return fmt.Errorf("open replica %s: %w", volume, err)
		}
		v.dev = dev
	}
	v.refs++
	h.vols[volume] = v
	dev := v.dev
	h.mu.Unlock()
	defer h.release(volume)
	return fn(dev)
}

func (h *Host) sizeOf(v *hostVol) int64 {
	if v.dev == nil {
		return 0
	}
	return v.dev.Size()
}

func (h *Host) release(volume string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	v := h.vols[volume]
	if v == nil {
		return
	}
	v.refs--
	if v.refs <= 0 {
		if v.dev != nil {
			v.dev.Close()
		}
		delete(h.vols, volume)
	}
}

// gate lets requests through until it is fenced.
type gate struct {
	mu     sync.RWMutex
	fenced bool
}

func (g *gate) enter() error {
	g.mu.RLock()
	if g.fenced {
		g.mu.RUnlock()
		return ErrStaleEpoch
	}
	return nil
}

func (g *gate) exit() { g.mu.RUnlock() }

func (g *gate) fence() {
	g.mu.Lock()
	g.fenced = true
	g.mu.Unlock()
}

// Handle is a replica opened at one epoch; it is a device.Device whose
// requests fail with ErrStaleEpoch once a newer epoch has opened the
// replica.
type Handle struct {
	device.Device
	gate   *gate
	host   *Host
	volume string
	epoch  uint64
	once   sync.Once
}

// Epoch is the epoch the handle was opened with.
func (hd *Handle) Epoch() uint64 { return hd.epoch }

// ReadAt implements device.Device.
func (hd *Handle) ReadAt(p []byte, off int64) error {
	if err := hd.gate.enter(); err != nil {
		return err
	}
	defer hd.gate.exit()
	return hd.Device.ReadAt(p, off)
}

// WriteAt implements device.Device.
func (hd *Handle) WriteAt(p []byte, off int64, fua bool) error {
	if err := hd.gate.enter(); err != nil {
		return err
	}
	defer hd.gate.exit()
	return hd.Device.WriteAt(p, off, fua)
}

// Flush implements device.Device.
func (hd *Handle) Flush() error {
	if err := hd.gate.enter(); err != nil {
		return err
	}
	defer hd.gate.exit()
	return hd.Device.Flush()
}

// Trim implements device.Device.
func (hd *Handle) Trim(off, length int64) error {
	if err := hd.gate.enter(); err != nil {
		return err
	}
	defer hd.gate.exit()
	return hd.Device.Trim(off, length)
}

// WriteZeroes implements device.Device.
func (hd *Handle) WriteZeroes(off, length int64, f device.ZeroFlags) error {
	if err := hd.gate.enter(); err != nil {
		return err
	}
	defer hd.gate.exit()
	return hd.Device.WriteZeroes(off, length, f)
}

// Extents implements device.Device.
func (hd *Handle) Extents(off, length int64) ([]device.Extent, error) {
	if err := hd.gate.enter(); err != nil {
		return nil, err
	}
	defer hd.gate.exit()
	return hd.Device.Extents(off, length)
}

// Checksums implements device.Checksummer.
func (hd *Handle) Checksums(off, length int64, out []byte) error {
	if err := hd.gate.enter(); err != nil {
		return err
	}
	defer hd.gate.exit()
	return device.Checksums(hd.Device, off, length, out)
}

// Close releases the handle (not the shared device, until the last one).
func (hd *Handle) Close() error {
	hd.once.Do(func() { hd.host.release(hd.volume) })
	return nil
}
