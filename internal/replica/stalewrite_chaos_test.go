package replica

import (
	"bytes"
	"path/filepath"
	"testing"
)

// TestReopenFencesEarlierHandleOfSameEpoch is the regression test of a
// finding of the fault-injection suite (issue 9; long run with seed
// 1795311267828343486, round 86-87, vol cv0 block 90): acknowledged writes
// were lost. The primary n1 gave up on replica n2 during a split (its
// write timed out; n2 was dropped from the in-sync set); after the heal it
// reconnected to n2 with the same epoch, resynced the chunks written
// meanwhile and went on mirroring new writes. But a write sent on the old
// connection before the split was still in TCP's hands: delivered after the
// heal, it was applied by n2's replica host on the old handle (same epoch,
// so not fenced) over newer data. n2 was then in the in-sync set with a
// block 21 writes (15 s) old; when n1 was paused past its lease, n2 took
// over, reconciled the hot regions from its own copy onto n1, and the
// volume read w3#18872 where w3#19317 had been acknowledged (read back
// before the pause). Opening a replica again must fence every earlier
// handle, not only those of older epochs.
//
// Fixed: Acquire fences every earlier handle, whatever its epoch.
func TestReopenFencesEarlierHandleOfSameEpoch(t *testing.T) {
	dir := t.TempDir()
	h, err := NewHost(filepath.Join(dir, "state"), DirOpener{Dir: filepath.Join(dir, "data")})
	if err != nil {
		t.Fatal(err)
	}
	// The primary's first connection; it gives up on it (timeout) ...
	old, err := h.Acquire("vol", 3, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	// ... reconnects, resyncs and mirrors a newer write ...
	fresh, err := h.Acquire("vol", 3, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	if err := fresh.WriteAt([]byte("new"), 0, false); err != nil {
		t.Fatal(err)
	}
	// ... and a write sent on the first connection arrives late.
	old.WriteAt([]byte("old"), 0, false)
	got := make([]byte, 3)
	if err := fresh.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, []byte("new")) {
		t.Fatalf("a late write of an abandoned handle overwrote newer data: the replica holds %q", got)
	}
}
