package store

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// smallFS mounts a fresh 32 MiB ext4 (on a loop device) and returns its
// mount point. It skips the test where that is not possible (not root, no
// loop devices).
func smallFS(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("needs root for a loop mount (make test runs as root in CI)")
	}
	for _, tool := range []string{"mkfs.ext4", "losetup", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("needs %s: install e2fsprogs, util-linux, mount (make deps)", tool)
		}
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "fs.img")
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o700)
	run := func(name string, args ...string) (string, error) {
		out, err := exec.Command(name, args...).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	if out, err := run("truncate", "-s", "32M", img); err != nil {
		t.Fatalf("truncate: %v %s", err, out)
	}
	if out, err := run("mkfs.ext4", "-q", "-b", "4096", "-m", "0", img); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	loop, err := run("losetup", "--find", "--show", img)
	if err != nil {
		t.Fatalf("losetup: %v %s", err, loop)
	}
	t.Cleanup(func() { run("losetup", "-d", loop) })
	if out, err := run("mount", loop, mnt); err != nil {
		t.Fatalf("mount: %v %s", err, out)
	}
	t.Cleanup(func() { run("umount", "-l", mnt) })
	return mnt
}

// TestENOSPC fills a small filesystem under a pool: writes fail with
// ENOSPC, nothing written before is damaged, and after space is freed
// (deleting another volume, then a snapshot) the volume works again.
func TestENOSPC(t *testing.T) {
	mnt := smallFS(t)
	p, err := CreatePool(filepath.Join(mnt, "pool"), PoolOptions{Overcommit: 10})
	if err != nil {
		t.Fatal(err)
	}
	const size = 64 << 20 // thin: twice the filesystem
	v := newVolume(t, p, "v", size)
	filler := newVolume(t, p, "filler", size)
	// Data to keep, and a snapshot of it.
	keep := pattern(1, 4<<20)
	if err := v.WriteAt(keep, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := v.Snapshot("s"); err != nil {
		t.Fatal(err)
	}
	// Fill the filesystem through the other volume.
	chunk := pattern(2, 1<<20)
	var off int64
	for ; off < size; off += int64(len(chunk)) {
		if err := filler.WriteAt(chunk, off, false); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling: %v, want ENOSPC", err)
			}
			break
		}
	}
	if off >= size {
		t.Fatal("the filesystem never filled up")
	}
	// Writes to v now fail with ENOSPC: new blocks, copy-ups of snapshot
	// blocks (partial writes), and zeroes over snapshot blocks.
	full := 0
	for i, o := range []struct{ off, n int64 }{{8 << 20, 1 << 20}, {4096 + 100, 10}, {1 << 20, 3 << 20}} {
		err := v.WriteAt(pattern(int64(10+i), int(o.n)), o.off, false)
		if err != nil && !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("write on a full filesystem: %v, want ENOSPC", err)
		}
		if err != nil {
			full++
			t.Logf("write %d: %v", i, err)
		}
	}
	if full == 0 {
		t.Fatal("no write saw ENOSPC")
	}
	if err := v.Snapshot("t"); err != nil && !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("snapshot on a full filesystem: %v", err)
	}
	// What was written before is intact: the snapshot exactly, the head
	// outside the ranges whose writes failed (undefined per the protocol).
	s, err := v.OpenSnapshot("s")
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(keep))
	if err := s.ReadAt(got, 0); err != nil || !bytes.Equal(got, keep) {
		t.Fatalf("snapshot damaged by ENOSPC: %v", err)
	}
	s.Close()
	if err := v.ReadAt(got[:4096], 0); err != nil || !bytes.Equal(got[:4096], keep[:4096]) {
		t.Fatalf("head block 0 damaged by ENOSPC: %v", err)
	}
	b1 := make([]byte, 4096)
	v.ReadAt(b1, 4096)
	for i := range b1 {
		if i >= 100 && i < 110 {
			continue
		}
		if b1[i] != keep[4096+i] {
			t.Fatalf("neighbours of a failed partial write changed at byte %d", 4096+i)
		}
	}
	// Free space: delete the filler volume; v works again.
	filler.Close()
	if err := p.DeleteVolume("filler"); err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(keep)
	more := pattern(3, 8<<20)
	if err := v.WriteAt(more, 8<<20, false); err != nil {
		t.Fatalf("write after freeing space: %v", err)
	}
	if err := v.WriteAt(pattern(4, 10), 4096+100, false); err != nil {
		t.Fatal(err)
	}
	copy(want[4096+100:], pattern(4, 10))
	if err := v.WriteAt(want[1<<20:], 1<<20, false); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := v.DeleteSnapshot("s"); err != nil {
		t.Fatal(err)
	}
	v.DeleteSnapshot("t")
	v.Close()
	v2, err := p.OpenVolume("v", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer v2.Close()
	got = make([]byte, 16<<20)
	if err := v2.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:len(want)], want) || !bytes.Equal(got[8<<20:16<<20], more) {
		t.Fatal("data differs after ENOSPC and recovery")
	}
}
