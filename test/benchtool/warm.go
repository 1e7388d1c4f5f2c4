package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// warmFiles reads the data of files into the page cache, skipping holes
// (SEEK_DATA/SEEK_HOLE): reading the holes of a sparse file would fill the
// page cache with pages of zeroes (a pool volume's layers are sparse files
// as large as the volume). It returns the bytes read.
//
// The reads are made with readahead off (POSIX_FADV_RANDOM), so that the
// pages they bring in are single pages, not large folios: on Linux 6.18
// ext4, a 4 KiB write into a large folio costs time proportional to the
// folio's size (ext4_block_write_begin walks all its buffer heads, under
// the inode lock), which made every server's 4k random writes 3-5 times
// slower on files whose page cache had been filled by readahead or by
// large sequential writes. With drop, the files' cached pages are first
// dropped (POSIX_FADV_DONTNEED; the caller syncs before), so that every
// page is read again as a single page.
func warmFiles(paths []string, drop bool) (int64, error) {
	buf := make([]byte, 1<<20)
	var total int64
	for _, p := range paths {
		n, err := warmFile(p, buf, drop)
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

func warmFile(path string, buf []byte, drop bool) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	fd := int(f.Fd())
	if drop {
		if err := unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED); err != nil {
			return 0, fmt.Errorf("%s: fadvise dontneed: %w", path, err)
		}
	}
	if err := unix.Fadvise(fd, 0, 0, unix.FADV_RANDOM); err != nil {
		return 0, fmt.Errorf("%s: fadvise random: %w", path, err)
	}
	var total, pos int64
	for {
		start, err := unix.Seek(fd, pos, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return total, nil // no data after pos
		}
		if err != nil {
			return total, fmt.Errorf("%s: seek data: %w", path, err)
		}
		end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		if err != nil {
			return total, fmt.Errorf("%s: seek hole: %w", path, err)
		}
		for off := start; off < end; {
			n, err := f.ReadAt(buf[:min(int64(len(buf)), end-off)], off)
			off += int64(n)
			total += int64(n)
			if err == io.EOF {
				return total, nil
			}
			if err != nil {
				return total, fmt.Errorf("%s: %w", path, err)
			}
		}
		pos = end
	}
}
