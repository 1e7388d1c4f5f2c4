package device

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// File is a Device backed by a regular file (or a block device node). Trim
// punches holes, write-zeroes uses fallocate where the filesystem allows,
// extents come from SEEK_DATA/SEEK_HOLE and flush is fdatasync.
type File struct {
	f        *os.File
	fd       int
	size     atomic.Int64
	readOnly bool
	// noPunch / noZeroRange remember that the filesystem refused the
	// fallocate mode, so we stop asking.
	noPunch     atomic.Bool
	noZeroRange atomic.Bool
	noSeekData  atomic.Bool
}

// OpenFile opens path as a device. When the file does not exist and size is
// positive it is created sparse with that size. A positive size that differs
// from an existing file's size is an error.
func OpenFile(path string, size int64, readOnly bool) (*File, error) {
	flags := os.O_RDWR
	if readOnly {
		flags = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flags, 0)
	if errors.Is(err, os.ErrNotExist) && size > 0 && !readOnly {
		f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err == nil {
			if err = f.Truncate(size); err != nil {
				f.Close()
				os.Remove(path)
				return nil, fmt.Errorf("create %s: %w", path, err)
			}
		}
	}
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("open %s: file does not exist (give a size to create it): %w", path, err)
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	d := &File{f: f, fd: int(f.Fd()), readOnly: readOnly}
	actual, err := fileSize(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	if size > 0 && actual != size {
		f.Close()
		return nil, fmt.Errorf("open %s: existing size %d differs from requested size %d", path, actual, size)
	}
	d.size.Store(actual)
	return d, nil
}

func fileSize(f *os.File) (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	if st.Mode().IsRegular() {
		return st.Size(), nil
	}
	// Block devices report size 0 in stat; seek to the end instead.
	n, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, fmt.Errorf("size of %s: %w", f.Name(), err)
	}
	return n, nil
}

// Size implements Device.
func (d *File) Size() int64 { return d.size.Load() }

// Capabilities implements Device.
func (d *File) Capabilities() Capabilities {
	return Capabilities{
		ReadOnly: d.readOnly, Flush: true, FUA: true, Trim: true, Zero: true,
		FastZero: true, Extents: true, Cache: true, MultiConn: true,
	}
}

// ReadAt implements Device.
func (d *File) ReadAt(p []byte, off int64) error {
	if err := CheckRange(off, int64(len(p)), d.Size()); err != nil {
		return err
	}
	for len(p) > 0 {
		n, err := unix.Pread(d.fd, p, off)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return fmt.Errorf("read %s at %d: %w", d.f.Name(), off, err)
		}
		if n == 0 { // file shrank under us: reads as zeroes
			clear(p)
			return nil
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// WriteAt implements Device.
func (d *File) WriteAt(p []byte, off int64, fua bool) error {
	if d.readOnly {
		return ErrReadOnly
	}
	if err := CheckRange(off, int64(len(p)), d.Size()); err != nil {
		return fmt.Errorf("write: %w", ErrNoSpace)
	}
	for len(p) > 0 {
		n, err := unix.Pwrite(d.fd, p, off)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return fmt.Errorf("write %s at %d: %w", d.f.Name(), off, NormalizeSpace(err))
		}
		p, off = p[n:], off+int64(n)
	}
	if fua {
		return d.Flush()
	}
	return nil
}

// NormalizeSpace maps quota and file-size errors onto ENOSPC, as NBD asks.
func NormalizeSpace(err error) error {
	if errors.Is(err, syscall.EDQUOT) || errors.Is(err, syscall.EFBIG) {
		return fmt.Errorf("%w: %w", err, syscall.ENOSPC)
	}
	return err
}

// Flush implements Device.
func (d *File) Flush() error {
	if d.readOnly {
		return nil
	}
	for {
		err := unix.Fdatasync(d.fd)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("fdatasync %s: %w", d.f.Name(), err)
		}
		return nil
	}
}

// Trim implements Device: it punches a hole.
func (d *File) Trim(off, length int64) error {
	if d.readOnly {
		return ErrReadOnly
	}
	if err := CheckRange(off, length, d.Size()); err != nil {
		return err
	}
	if length == 0 || d.noPunch.Load() {
		return nil // trim is advisory
	}
	err := d.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	if errors.Is(err, unix.EOPNOTSUPP) {
		d.noPunch.Store(true)
		return nil
	}
	return err
}

// WriteZeroes implements Device.
func (d *File) WriteZeroes(off, length int64, flags ZeroFlags) error {
	if d.readOnly {
		return ErrReadOnly
	}
	if err := CheckRange(off, length, d.Size()); err != nil {
		return fmt.Errorf("write zeroes: %w", ErrNoSpace)
	}
	if length == 0 {
		return nil
	}
	if flags&ZeroNoHole == 0 && !d.noPunch.Load() {
		err := d.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EOPNOTSUPP) {
			return err
		}
		d.noPunch.Store(true)
	}
	if !d.noZeroRange.Load() {
		err := d.fallocate(unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, length)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EOPNOTSUPP) {
			return err
		}
		d.noZeroRange.Store(true)
	}
	if flags&ZeroFast != 0 {
		return ErrUnsupported
	}
	return WriteZeroBuffers(d, off, length)
}

// WriteZeroBuffers zeroes a range by writing zero buffers: the slow path
// for devices with no cheaper way.
func WriteZeroBuffers(d Device, off, length int64) error {
	for length > 0 {
		z := ZeroBuf(length)
		if err := d.WriteAt(z, off, false); err != nil {
			return err
		}
		off += int64(len(z))
		length -= int64(len(z))
	}
	return nil
}

func (d *File) fallocate(mode uint32, off, length int64) error {
	for {
		err := unix.Fallocate(d.fd, mode, off, length)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("fallocate %s [%d,+%d): %w", d.f.Name(), off, length, NormalizeSpace(err))
		}
		return nil
	}
}

// Extents implements Device using SEEK_DATA and SEEK_HOLE.
func (d *File) Extents(off, length int64) ([]Extent, error) {
	size := d.Size()
	if err := CheckRange(off, length, size); err != nil {
		return nil, err
	}
	if length == 0 {
		return nil, fmt.Errorf("extents: zero length: %w", syscall.EINVAL)
	}
	end := off + length
	if d.noSeekData.Load() {
		return []Extent{{Length: length}}, nil
	}
	var out []Extent
	pos := off
	for pos < end && len(out) < maxExtents {
		data, err := unix.Seek(d.fd, pos, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			data = size // no data after pos: hole to EOF
		} else if err != nil {
			if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
				d.noSeekData.Store(true)
				return []Extent{{Length: length}}, nil
			}
			return nil, fmt.Errorf("seek data in %s: %w", d.f.Name(), err)
		}
		if data > pos {
			hole := min(data, end) - pos
			out = append(out, Extent{Length: hole, Flags: ExtentHole | ExtentZero})
			pos += hole
			continue
		}
		h, err := unix.Seek(d.fd, pos, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("seek hole in %s: %w", d.f.Name(), err)
		}
		n := min(h, end) - pos
		if n <= 0 { // the file changed under us; report the rest as data
			n = end - pos
		}
		out = append(out, Extent{Length: n})
		pos += n
	}
	return out, nil
}

// maxExtents bounds one Extents answer; callers ask again for the rest.
const maxExtents = 1 << 16

// Cache implements Cacher with readahead advice.
func (d *File) Cache(off, length int64) error {
	if err := CheckRange(off, length, d.Size()); err != nil {
		return err
	}
	return unix.Fadvise(d.fd, off, length, unix.FADV_WILLNEED)
}

// Resize grows or shrinks the file to size.
func (d *File) Resize(size int64) error {
	if d.readOnly {
		return ErrReadOnly
	}
	if err := d.f.Truncate(size); err != nil {
		return fmt.Errorf("resize %s: %w", d.f.Name(), err)
	}
	d.size.Store(size)
	return nil
}

// Close implements Device.
func (d *File) Close() error { return d.f.Close() }
