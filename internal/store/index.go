package store

import (
	"math/bits"
	"sync/atomic"
)

const (
	blockShift = 12 // device.BlockSize == 1<<blockShift
	blockMask  = 1<<blockShift - 1
	blockSize  = 1 << blockShift

	// chunkShift: the indexes are two-level arrays of chunks of 1<<16
	// blocks (256 MiB of volume), allocated when something lives there.
	chunkShift  = 16
	chunkBlocks = 1 << chunkShift
	chunkMask   = chunkBlocks - 1

	// Stripe locks: the volume is cut into granules of 1 MiB; granule g is
	// guarded by stripe g mod nStripes.
	granuleShift = 20
	granuleSize  = 1 << granuleShift
	nStripes     = 1024
	stripeMask   = nStripes - 1

	// maxSlots bounds the frozen layers (snapshots) of one volume: base
	// index entries are one byte, 0 meaning "no frozen layer".
	maxSlots = 255
)

// bitChunk holds one presence bit per block of a chunk.
type bitChunk [chunkBlocks / 64]atomic.Uint64

// headMap records which blocks the head layer is authoritative for. Bits
// are set with atomic operations by writers holding a stripe read lock;
// they are only cleared by replacing the whole map with all stripes held.
type headMap struct {
	chunks []atomic.Pointer[bitChunk]
}

func chunksFor(blocks int64) int64 { return (blocks + chunkMask) >> chunkShift }

func newHeadMap(blocks int64) *headMap {
	return &headMap{chunks: make([]atomic.Pointer[bitChunk], chunksFor(blocks))}
}

func (h *headMap) test(b int64) bool {
	c := h.chunks[b>>chunkShift].Load()
	if c == nil {
		return false
	}
	i := b & chunkMask
	return c[i>>6].Load()&(1<<(i&63)) != 0
}

func (h *headMap) chunk(ci int64) *bitChunk {
	c := h.chunks[ci].Load()
	if c == nil {
		n := new(bitChunk)
		if h.chunks[ci].CompareAndSwap(nil, n) {
			return n
		}
		c = h.chunks[ci].Load()
	}
	return c
}

// setRange marks blocks [b0, b1] present.
func (h *headMap) setRange(b0, b1 int64) {
	for b := b0; b <= b1; {
		c := h.chunk(b >> chunkShift)
		i := b & chunkMask
		w := i >> 6
		bit := i & 63
		n := min(64-bit, b1-b+1)
		var mask uint64
		if n == 64 {
			mask = ^uint64(0)
		} else {
			mask = (1<<uint64(n) - 1) << uint64(bit)
		}
		if c[w].Load()&mask != mask {
			c[w].Or(mask)
		}
		b += n
	}
}

// resized returns a copy of h for a volume of the given number of blocks,
// dropping bits past the end. Call with all stripes held.
func (h *headMap) resized(blocks int64) *headMap {
	n := newHeadMap(blocks)
	for i := range n.chunks {
		if i < len(h.chunks) {
			n.chunks[i].Store(h.chunks[i].Load())
		}
	}
	// clear bits at and past the end inside the last chunk
	if blocks&chunkMask != 0 && len(n.chunks) > 0 {
		if c := n.chunks[len(n.chunks)-1].Load(); c != nil {
			cp := new(bitChunk)
			for w := range c {
				cp[w].Store(c[w].Load())
			}
			for i := blocks & chunkMask; i < chunkBlocks; i++ {
				cp[i>>6].And(^(uint64(1) << (i & 63)))
			}
			n.chunks[len(n.chunks)-1].Store(cp)
		}
	}
	return n
}

// baseMap maps a block to the slot of the topmost frozen layer holding it
// (0: none). Entries are read under a stripe read lock and written under
// the stripe's write lock; chunks are allocated only with all stripes held
// (or before the volume is shared).
type baseMap struct {
	chunks [][]uint8
}

func newBaseMap(blocks int64) *baseMap {
	return &baseMap{chunks: make([][]uint8, chunksFor(blocks))}
}

func (m *baseMap) get(b int64) uint8 {
	c := m.chunks[b>>chunkShift]
	if c == nil {
		return 0
	}
	return c[b&chunkMask]
}

func (m *baseMap) set(b int64, s uint8) {
	c := m.chunks[b>>chunkShift]
	if c == nil {
		if s == 0 {
			return
		}
		c = make([]uint8, chunkBlocks)
		m.chunks[b>>chunkShift] = c
	}
	c[b&chunkMask] = s
}

func (m *baseMap) setRange(b0, b1 int64, s uint8) {
	for b := b0; b <= b1; b++ {
		m.set(b, s)
	}
}

// resized returns a copy for a volume of the given number of blocks.
func (m *baseMap) resized(blocks int64) *baseMap {
	n := newBaseMap(blocks)
	copy(n.chunks, m.chunks)
	if blocks&chunkMask != 0 && len(n.chunks) > 0 {
		if c := n.chunks[len(n.chunks)-1]; c != nil {
			cp := make([]uint8, chunkBlocks)
			copy(cp[:blocks&chunkMask], c)
			n.chunks[len(n.chunks)-1] = cp
		}
	}
	return n
}

// foldHead records every block present in h as living in slot s.
func (m *baseMap) foldHead(h *headMap, s uint8) {
	for ci := range h.chunks {
		c := h.chunks[ci].Load()
		if c == nil {
			continue
		}
		for w := range c {
			word := c[w].Load()
			for word != 0 {
				bit := int64(bits.TrailingZeros64(word))
				word &^= 1 << bit
				m.set(int64(ci)<<chunkShift|int64(w)<<6|bit, s)
			}
		}
	}
}
