package nbd

import (
	"math/bits"
	"sync"
)

// Buffers for payloads come from pools by power-of-two size class, from
// 4 KiB up to MaxPayload, so the hot path allocates nothing in steady state.
const (
	minClassShift = 12
	maxClassShift = 25 // MaxPayload
)

var bufPools [maxClassShift - minClassShift + 1]sync.Pool

func sizeClass(n int) int {
	if n <= 1<<minClassShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minClassShift
}

// getBuf returns a buffer of length n (n <= MaxPayload).
func getBuf(n int) *[]byte {
	c := sizeClass(n)
	if p, ok := bufPools[c].Get().(*[]byte); ok {
		*p = (*p)[:n]
		return p
	}
	b := make([]byte, n, 1<<(c+minClassShift))
	return &b
}

// putBuf returns a buffer obtained from getBuf.
func putBuf(p *[]byte) {
	if p == nil {
		return
	}
	c := sizeClass(cap(*p))
	if cap(*p) != 1<<(c+minClassShift) {
		return
	}
	bufPools[c].Put(p)
}
