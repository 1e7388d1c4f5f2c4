package attach

import (
	"context"
	"fmt"
	"os"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/hacs/hacs/internal/device"
)

// FileView shows a device as one regular file in a FUSE mount: DIR/NAME.
// `losetup` on that file gives a block device (and a filesystem) on hosts
// without the nbd kernel module. fsync on the file flushes the device.
type FileView struct {
	server *fuse.Server
	Path   string // DIR/NAME
}

// MountFileView mounts dir (created when missing) with one file name
// backed by dev.
func MountFileView(dir, name string, dev device.Device) (*FileView, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	root := &fs.Inode{}
	file := &devFile{dev: dev}
	srv, err := fs.Mount(dir, root, &fs.Options{
		MountOptions: fuse.MountOptions{
			FsName:   "hacs:" + name,
			Name:     "hacs",
			MaxWrite: 1 << 20,
		},
		OnAdd: func(ctx context.Context) {
			ch := root.NewPersistentInode(ctx, file, fs.StableAttr{Mode: syscall.S_IFREG, Ino: 2})
			root.AddChild(name, ch, true)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("mount FUSE view on %s: %w (is fuse3 installed and /dev/fuse available?)", dir, err)
	}
	return &FileView{server: srv, Path: dir + "/" + name}, nil
}

// Unmount removes the view.
func (v *FileView) Unmount() error { return v.server.Unmount() }

// Wait blocks until the view is unmounted.
func (v *FileView) Wait() { v.server.Wait() }

type devFile struct {
	fs.Inode
	dev device.Device
}

var (
	_ fs.NodeOpener     = (*devFile)(nil)
	_ fs.NodeReader     = (*devFile)(nil)
	_ fs.NodeWriter     = (*devFile)(nil)
	_ fs.NodeFsyncer    = (*devFile)(nil)
	_ fs.NodeGetattrer  = (*devFile)(nil)
	_ fs.NodeSetattrer  = (*devFile)(nil)
	_ fs.NodeAllocater  = (*devFile)(nil)
	_ fs.NodeFlusher    = (*devFile)(nil)
	_ fs.NodeLseeker    = (*devFile)(nil)
	_ fs.NodeStatfser   = (*devFile)(nil)
	_ fs.NodeReleaser   = (*devFile)(nil)
	_ fs.NodeGetxattrer = (*devFile)(nil)
)

func errno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	return device.Errno(err)
}

func (f *devFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if f.dev.Capabilities().ReadOnly && flags&(syscall.O_WRONLY|syscall.O_RDWR) != 0 {
		return nil, 0, syscall.EROFS
	}
	// Direct I/O: no second page cache above the volume, and fsync
	// semantics stay exact.
	return nil, fuse.FOPEN_DIRECT_IO, 0
}

func (f *devFile) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	size := f.dev.Size()
	if off >= size {
		return fuse.ReadResultData(nil), 0
	}
	n := min(int64(len(dest)), size-off)
	if err := f.dev.ReadAt(dest[:n], off); err != nil {
		return nil, errno(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (f *devFile) Write(ctx context.Context, fh fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	size := f.dev.Size()
	if off >= size {
		return 0, syscall.ENOSPC
	}
	n := min(int64(len(data)), size-off)
	if err := f.dev.WriteAt(data[:n], off, false); err != nil {
		return 0, errno(err)
	}
	return uint32(n), 0
}

func (f *devFile) Fsync(ctx context.Context, fh fs.FileHandle, flags uint32) syscall.Errno {
	return errno(f.dev.Flush())
}

func (f *devFile) Flush(ctx context.Context, fh fs.FileHandle) syscall.Errno { return 0 }

func (f *devFile) Release(ctx context.Context, fh fs.FileHandle) syscall.Errno { return 0 }

func (f *devFile) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o600
	out.Size = uint64(f.dev.Size())
	out.Blocks = (out.Size + 511) / 512
	out.Blksize = device.BlockSize
	out.Nlink = 1
	return 0
}

// Setattr accepts a truncate to the current size only (the volume's size is
// changed through hacs, not through the file).
func (f *devFile) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if sz, ok := in.GetSize(); ok && int64(sz) != f.dev.Size() {
		return syscall.EPERM
	}
	return f.Getattr(ctx, fh, out)
}

// Allocate maps fallocate: punch-hole to trim, zero-range to write-zeroes.
func (f *devFile) Allocate(ctx context.Context, fh fs.FileHandle, off, size uint64, mode uint32) syscall.Errno {
	const punch, keep, zero = 0x02, 0x01, 0x10
	switch {
	case mode&punch != 0:
		return errno(f.dev.Trim(int64(off), int64(size)))
	case mode&zero != 0:
		return errno(f.dev.WriteZeroes(int64(off), int64(size), device.ZeroNoHole))
	case mode&^keep == 0:
		return 0 // preallocation: the volume is already that big
	}
	return syscall.EOPNOTSUPP
}

func (f *devFile) Lseek(ctx context.Context, fh fs.FileHandle, off uint64, whence uint32) (uint64, syscall.Errno) {
	size := uint64(f.dev.Size())
	if off >= size {
		return 0, syscall.ENXIO
	}
	const seekData, seekHole = 3, 4
	exts, err := f.dev.Extents(int64(off), int64(size-off))
	if err != nil {
		return 0, errno(err)
	}
	pos := off
	for _, e := range exts {
		isHole := e.Flags&device.ExtentHole != 0
		if whence == seekData && !isHole || whence == seekHole && isHole {
			return pos, 0
		}
		pos += uint64(e.Length)
	}
	if whence == seekHole {
		return size, 0
	}
	return 0, syscall.ENXIO
}

func (f *devFile) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	out.Bsize = device.BlockSize
	out.Blocks = uint64(f.dev.Size()) / device.BlockSize
	return 0
}

func (f *devFile) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	return 0, syscall.ENODATA
}
