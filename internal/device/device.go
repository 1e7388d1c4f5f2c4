// Package device defines the block-device interface that every layer of the
// hacs data path speaks — the NBD export serves one, the local store and the
// mirror implement one, fault injection wraps one — together with small
// helpers shared by the implementations.
//
// The interface follows the NBD command set: read, write (optionally FUA),
// flush, trim, write-zeroes, extents (allocation map) and size. Errors carry a
// syscall.Errno where the cause is known (ENOSPC, EPERM, EINVAL, ENOTSUP ...),
// so an export can map them onto the protocol's error values.
package device

import (
	"errors"
	"fmt"
	"syscall"
)

// BlockSize is the granularity hacs tracks data at (holes, dirty maps).
const BlockSize = 4096

// ZeroFlags modify WriteZeroes.
type ZeroFlags uint8

const (
	// ZeroNoHole asks that the range stays allocated (no hole is punched).
	ZeroNoHole ZeroFlags = 1 << iota
	// ZeroFast asks the device to fail with ENOTSUP rather than fall back to
	// writing zero buffers when it cannot zero faster than a write.
	ZeroFast
)

// Extent flags, identical to NBD's base:allocation state bits.
const (
	ExtentHole uint32 = 1 << 0 // not allocated
	ExtentZero uint32 = 1 << 1 // reads as zeroes
)

// Extent describes a run of bytes with the same allocation state.
type Extent struct {
	Length int64
	Flags  uint32
}

// Capabilities tell an export what a device can do, so that it advertises
// only what holds.
type Capabilities struct {
	ReadOnly  bool // writes fail with EPERM
	Flush     bool // Flush makes completed writes durable
	FUA       bool // WriteAt with fua=true is durable on return
	Trim      bool // Trim does something useful (punches holes)
	Zero      bool // WriteZeroes is supported
	FastZero  bool // WriteZeroes honours ZeroFast
	Extents   bool // Extents reports real holes
	Cache     bool // Cache prefetches
	MultiConn bool // flush on one handle covers writes made through any other
}

// Device is one block device. Implementations must be safe for concurrent
// use: an export issues many requests in parallel.
type Device interface {
	// ReadAt fills p from offset off. It returns an error unless all of p
	// was read.
	ReadAt(p []byte, off int64) error
	// WriteAt writes p at off; when fua is set the data is durable on return.
	WriteAt(p []byte, off int64, fua bool) error
	// Flush makes every write completed before the call durable.
	Flush() error
	// Trim declares the range unused; it then reads as zeroes.
	Trim(off, length int64) error
	// WriteZeroes sets the range to zeroes.
	WriteZeroes(off, length int64, flags ZeroFlags) error
	// Extents describes allocation from off for up to length bytes. The
	// extents are contiguous, start at off and cover at least one byte.
	Extents(off, length int64) ([]Extent, error)
	// Size is the device size in bytes.
	Size() int64
	// Capabilities tells what the device supports.
	Capabilities() Capabilities
	// Close releases the device.
	Close() error
}

// Cacher is implemented by devices that can prefetch a range (NBD_CMD_CACHE).
type Cacher interface {
	Cache(off, length int64) error
}

// Errors with a well-known meaning. They wrap an errno so that the export
// maps them to NBD error values.
var (
	ErrReadOnly    = fmt.Errorf("device is read-only: %w", syscall.EPERM)
	ErrOutOfRange  = fmt.Errorf("request beyond end of device: %w", syscall.EINVAL)
	ErrNoSpace     = fmt.Errorf("no space left: %w", syscall.ENOSPC)
	ErrUnsupported = fmt.Errorf("operation not supported: %w", syscall.ENOTSUP)
	ErrClosed      = fmt.Errorf("device is closed: %w", syscall.ESHUTDOWN)
)

// CheckRange returns ErrOutOfRange unless [off, off+length) lies within a
// device of the given size.
func CheckRange(off, length, size int64) error {
	if off < 0 || length < 0 || off > size || length > size-off {
		return fmt.Errorf("offset %d length %d, size %d: %w", off, length, size, ErrOutOfRange)
	}
	return nil
}

// Errno extracts the errno an error carries, or EIO when it carries none.
func Errno(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return syscall.EIO
}

// IsZero reports whether p holds only zero bytes.
func IsZero(p []byte) bool {
	for len(p) >= len(zeroBlock) {
		if string(p[:len(zeroBlock)]) != string(zeroBlock[:]) {
			return false
		}
		p = p[len(zeroBlock):]
	}
	return string(p) == string(zeroBlock[:len(p)])
}

var zeroBlock [BlockSize]byte

// ZeroBuf returns a read-only buffer of zeroes of at least n bytes (up to
// 1 MiB); callers write it in pieces for longer ranges.
func ZeroBuf(n int64) []byte {
	if n > int64(len(bigZero)) {
		n = int64(len(bigZero))
	}
	return bigZero[:n]
}

var bigZero = make([]byte, 1<<20)
