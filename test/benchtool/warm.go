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
func warmFiles(paths []string) (int64, error) {
	buf := make([]byte, 1<<20)
	var total int64
	for _, p := range paths {
		n, err := warmFile(p, buf)
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

func warmFile(path string, buf []byte) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	fd := int(f.Fd())
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
