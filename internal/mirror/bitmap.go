package mirror

import (
	"math/bits"
	"sync"
)

// bitmap is a set of chunk indices, safe for concurrent use.
type bitmap struct {
	mu    sync.Mutex
	words []uint64
	count int
}

func newBitmap(n int) *bitmap { return &bitmap{words: make([]uint64, (n+63)/64)} }

// setRange adds [lo, hi).
func (b *bitmap) setRange(lo, hi int) {
	b.mu.Lock()
	for i := lo; i < hi; i++ {
		w, m := i/64, uint64(1)<<(i%64)
		if b.words[w]&m == 0 {
			b.words[w] |= m
			b.count++
		}
	}
	b.mu.Unlock()
}

func (b *bitmap) setAll(n int) { b.setRange(0, n) }

// clearRange removes [lo, hi).
func (b *bitmap) clearRange(lo, hi int) {
	b.mu.Lock()
	for i := lo; i < hi; i++ {
		w, m := i/64, uint64(1)<<(i%64)
		if b.words[w]&m != 0 {
			b.words[w] &^= m
			b.count--
		}
	}
	b.mu.Unlock()
}

func (b *bitmap) len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.count
}

// nextRun returns the first run of set bits at or after from, at most max
// long; ok is false when none is left.
func (b *bitmap) nextRun(from, max int) (lo, hi int, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := len(b.words) * 64
	i := from
	for i < n {
		w := b.words[i/64] >> (i % 64)
		if w == 0 {
			i = (i/64 + 1) * 64
			continue
		}
		i += bits.TrailingZeros64(w)
		break
	}
	if i >= n {
		return 0, 0, false
	}
	lo = i
	for i < n && i-lo < max && b.words[i/64]&(1<<(i%64)) != 0 {
		i++
	}
	return lo, i, true
}

// test reports whether bit i is set.
func (b *bitmap) test(i int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.words[i/64]&(1<<(i%64)) != 0
}
