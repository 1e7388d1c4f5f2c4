package device

import (
	"crypto/sha256"
	"fmt"
	"syscall"
)

// Checksums are what replicas compare instead of data: one ChecksumSize-byte
// digest (truncated SHA-256) per ChecksumChunk bytes.
const (
	ChecksumChunk = 64 << 10
	ChecksumSize  = 16
	// MaxChecksumSpan bounds one Checksums call.
	MaxChecksumSpan = 64 << 20
)

var zeroChunkSum = func() (s [ChecksumSize]byte) {
	h := sha256.Sum256(make([]byte, ChecksumChunk))
	copy(s[:], h[:])
	return
}()

// ChecksumLen is the size of the digest list for length bytes.
func ChecksumLen(length int64) int {
	return int((length + ChecksumChunk - 1) / ChecksumChunk * ChecksumSize)
}

// Checksums computes the digests of [off, off+length) of d into out (of
// ChecksumLen(length) bytes). Chunks the device reports as holes are not
// read.
func Checksums(d Device, off, length int64, out []byte) error {
	if length <= 0 || length > MaxChecksumSpan || len(out) != ChecksumLen(length) {
		return fmt.Errorf("checksums: bad span %d or buffer %d: %w", length, len(out), syscall.EINVAL)
	}
	if err := CheckRange(off, length, d.Size()); err != nil {
		return err
	}
	zero := make([]bool, len(out)/ChecksumSize)
	if d.Capabilities().Extents {
		exts, err := d.Extents(off, length)
		if err == nil {
			pos := int64(0)
			for _, e := range exts {
				if e.Flags&ExtentZero != 0 {
					// whole chunks inside this zero extent
					first := (pos + ChecksumChunk - 1) / ChecksumChunk
					for c := first; (c+1)*ChecksumChunk <= pos+e.Length && c < int64(len(zero)); c++ {
						zero[c] = true
					}
				}
				pos += e.Length
			}
		}
	}
	buf := make([]byte, min(length, 4<<20))
	for c := 0; c < len(zero); {
		if zero[c] {
			copy(out[c*ChecksumSize:], zeroChunkSum[:])
			c++
			continue
		}
		// read a run of non-zero chunks at once
		start := c
		for c < len(zero) && !zero[c] && int64(c-start+1)*ChecksumChunk <= int64(len(buf)) {
			c++
		}
		lo := int64(start) * ChecksumChunk
		hi := min(int64(c)*ChecksumChunk, length)
		p := buf[:hi-lo]
		if err := d.ReadAt(p, off+lo); err != nil {
			return err
		}
		for i := start; i < c; i++ {
			a := int64(i-start) * ChecksumChunk
			b := min(a+ChecksumChunk, int64(len(p)))
			h := sha256.Sum256(p[a:b])
			copy(out[i*ChecksumSize:], h[:ChecksumSize])
		}
	}
	return nil
}

// Checksummer is implemented by devices that compute checksums where the
// data lives (a remote replica), so that only digests cross the network.
type Checksummer interface {
	Checksums(off, length int64, out []byte) error
}

// ChecksumsOf uses d's own Checksummer when it has one.
func ChecksumsOf(d Device, off, length int64, out []byte) error {
	if c, ok := d.(Checksummer); ok {
		return c.Checksums(off, length, out)
	}
	return Checksums(d, off, length, out)
}
