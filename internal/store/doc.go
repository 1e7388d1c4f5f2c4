// Package store is the local storage layer of hacs, the role LVM thin
// pools play in the classic stack: pools of thin volumes with named
// snapshots, clones and resize, that stay consistent across a kill -9.
//
// # Layout
//
// A pool is a directory:
//
//	pool.json                  settings (overcommit ratio), checksummed
//	volumes/NAME/volume.json   the volume's manifest, checksummed
//	volumes/NAME/layer-N.img   one sparse file per layer
//	volumes/NAME/lock          flock: one opener at a time
//
// Capacity is what the pool occupies (allocated bytes of its layer files)
// plus the free space of the filesystem (statfs); a volume is not created or
// grown when the sum of the volumes' sizes would pass capacity × overcommit
// (default 2.0). The filesystem must report holes (SEEK_DATA) and have
// blocks of at most 4 KiB; the pool refuses others.
//
// # Redirect-on-write layers
//
// A volume is a chain of layers, bottom first; the last is the writable
// head, each other one is frozen and named by the snapshot it completes.
// A 4 KiB block is present in a layer if and only if the layer's file has
// anything allocated there: allocation itself is the persistent index, so
// a data write needs no metadata write and a crash cannot leave them
// disagreeing. Two rules keep that true:
//
//   - a partial write to a block that lives only below the head first
//     copies the whole block up (read-modify-write into the head, under the
//     stripe's write lock), so the head never holds part of a block;
//   - trim and write-zeroes punch holes in the head only where no frozen
//     layer holds the block; where one does they write real zeroes (a hole,
//     or an unwritten extent from FALLOC_FL_ZERO_RANGE, which SEEK_DATA
//     reports as a hole, would let the older data show through).
//
// At open, each layer is scanned once with SEEK_DATA/SEEK_HOLE into an
// in-memory index: a bitmap of the blocks the head holds, and a byte per
// block naming the topmost frozen layer that holds it (two-level arrays
// allocated per 256 MiB of volume). A read of the head looks up one bit and
// at most one byte, whatever the number of snapshots: it never walks the
// chain. There is no metadata to write on the I/O path, so Flush is one
// fdatasync of the head.
//
// # Concurrency
//
// The volume is cut into 1 MiB granules guarded by 1024 striped RWMutexes
// (granule mod 1024). Reads and writes take the read side of the stripes
// they cover (a 4 KiB request takes one, uncontended); the head bitmap is
// updated with atomic operations. The write side is taken for a copy-up
// (one stripe, briefly), by a snapshot deletion merging one granule, and
// with all stripes for the instant a snapshot, revert, grow or close swaps
// the head or the index. Nothing on the I/O path allocates.
//
// # Metadata operations
//
// Each one ends in an atomic replacement of volume.json (temporary file,
// fsync, rename, fsync of the directory): it happened or it did not.
//
//   - Snapshot: fsync the head, stop I/O, fsync again, commit a manifest
//     that names the head as the snapshot and adds an empty head, swap,
//     resume. The snapshot holds every write completed before the call.
//   - Delete snapshot: commit "deleting", then merge the layer's blocks
//     that the layer above lacks into it, granule by granule under the
//     stripe's write lock, online. Every 64 MiB copied, the target is
//     fsynced and only then is the source range punched, so a deletion
//     needs little free space and every view stays intact at any instant.
//     Last, commit the manifest without the layer and unlink it. An
//     interrupted deletion resumes at the next open (or delete).
//   - Revert: commit a manifest whose head is a new empty layer above the
//     snapshot (newer snapshots are dropped only with force), swap.
//   - Clone: a new volume whose single layer is a sparse copy of the
//     flattened snapshot, built in a temporary directory and renamed in.
//   - Grow: extend every layer file and fsync, then commit. Shrink (forced
//     only): commit, then truncate. At open, layer files longer than the
//     manifest's size are cut back, so an interrupted resize resolves to
//     what the manifest says.
//
// Layer files the manifest does not name are leftovers of interrupted
// operations and are removed at open. A manifest that is not valid JSON,
// has a bad checksum, an unknown format or version, or names a missing or
// short layer file makes the open fail with the file's path and the problem;
// nothing is repaired by guessing.
//
// # Full filesystem
//
// Writes that hit ENOSPC fail with an error wrapping syscall.ENOSPC. Blocks
// a failed write had started to copy up are punched back out of the head,
// so older data is never hidden by a half-written block; nothing already
// written is touched, and writes work again once space is freed.
package store
