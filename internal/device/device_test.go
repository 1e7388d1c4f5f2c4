package device

import (
	"bytes"
	"errors"
	"path/filepath"
	"syscall"
	"testing"
)

func devices(t *testing.T, size int64) map[string]Device {
	f, err := OpenFile(filepath.Join(t.TempDir(), "d.img"), size, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return map[string]Device{"file": f, "memory": NewMemory(size)}
}

func TestDevicesBehaveAlike(t *testing.T) {
	const size = 1 << 20
	for name, d := range devices(t, size) {
		t.Run(name, func(t *testing.T) {
			// Unaligned write keeps neighbours.
			if err := d.WriteAt(bytes.Repeat([]byte{1}, 10000), 1000, false); err != nil {
				t.Fatal(err)
			}
			if err := d.WriteAt([]byte{2, 2, 2}, 4095, true); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, 12000)
			if err := d.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			want := make([]byte, 12000)
			copy(want[1000:11000], bytes.Repeat([]byte{1}, 10000))
			copy(want[4095:], []byte{2, 2, 2})
			if !bytes.Equal(got, want) {
				t.Fatal("unaligned writes disturbed neighbours")
			}
			// Trim makes whole blocks holes and reads zero.
			if err := d.Trim(0, 65536); err != nil {
				t.Fatal(err)
			}
			if err := d.ReadAt(got, 0); err != nil || !IsZero(got) {
				t.Fatalf("after trim: zero=%v err=%v", IsZero(got), err)
			}
			exts, err := d.Extents(0, size)
			if err != nil {
				t.Fatal(err)
			}
			if len(exts) != 1 || exts[0].Flags != ExtentHole|ExtentZero || exts[0].Length != size {
				t.Fatalf("extents after trim: %v", exts)
			}
			// Write-zeroes, range errors.
			if err := d.WriteAt(bytes.Repeat([]byte{9}, 8192), 8192, false); err != nil {
				t.Fatal(err)
			}
			if err := d.WriteZeroes(8192, 4096, ZeroNoHole); err != nil {
				t.Fatal(err)
			}
			b := make([]byte, 8192)
			d.ReadAt(b, 8192)
			if !IsZero(b[:4096]) || b[4096] != 9 {
				t.Fatal("write-zeroes wrong")
			}
			if err := d.ReadAt(make([]byte, 10), size-5); !errors.Is(err, syscall.EINVAL) {
				t.Fatalf("read past end: %v", err)
			}
			if err := d.WriteAt(make([]byte, 10), size-5, false); !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("write past end: %v", err)
			}
			if err := d.Flush(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestChecksumsSkipHolesAndMatch(t *testing.T) {
	const size = 4 << 20
	ds := devices(t, size)
	for _, d := range ds {
		d.WriteAt(bytes.Repeat([]byte("x"), 100000), 300000, false)
	}
	a, b := make([]byte, ChecksumLen(size)), make([]byte, ChecksumLen(size))
	if err := Checksums(ds["file"], 0, size, a); err != nil {
		t.Fatal(err)
	}
	if err := Checksums(ds["memory"], 0, size, b); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatal("same content, different checksums")
	}
	ds["memory"].WriteAt([]byte("y"), 3<<20, false)
	Checksums(ds["memory"], 0, size, b)
	diff := 0
	for i := 0; i < len(a); i += ChecksumSize {
		if !bytes.Equal(a[i:i+ChecksumSize], b[i:i+ChecksumSize]) {
			diff++
		}
	}
	if diff != 1 {
		t.Fatalf("%d chunks differ, want 1", diff)
	}
	if err := Checksums(ds["file"], 0, MaxChecksumSpan+1, nil); err == nil {
		t.Fatal("oversized span accepted")
	}
}

func TestFaulty(t *testing.T) {
	f := NewFaulty(NewMemory(1 << 20))
	f.FailWrites(ErrInjected)
	if err := f.WriteAt([]byte{1}, 0, false); !errors.Is(err, syscall.EIO) {
		t.Fatal(err)
	}
	if err := f.ReadAt(make([]byte, 1), 0); err != nil {
		t.Fatal(err)
	}
	f.FailWrites(nil)
	if err := f.WriteAt([]byte{1}, 0, false); err != nil {
		t.Fatal(err)
	}
}

func TestOpenFileErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := OpenFile(filepath.Join(dir, "missing"), 0, false); err == nil {
		t.Fatal("opened a missing file without a size")
	}
	p := filepath.Join(dir, "f")
	d, err := OpenFile(p, 8192, false)
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	if _, err := OpenFile(p, 4096, false); err == nil {
		t.Fatal("size mismatch accepted")
	}
	ro, err := OpenFile(p, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if err := ro.WriteAt([]byte{1}, 0, false); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("write to read-only: %v", err)
	}
}
