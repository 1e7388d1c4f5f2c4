package mirror

import (
	"bytes"
	"slices"
	"testing"

	"github.com/hacs/hacs/internal/device"
)

func TestDifferingChunks(t *testing.T) {
	sums := func(bs ...byte) []byte {
		var out []byte
		for _, b := range bs {
			out = append(out, bytes.Repeat([]byte{b}, device.ChecksumSize)...)
		}
		return out
	}
	const off = 10 * ChunkSize
	type span struct{ off, n int64 }
	for _, tc := range []struct {
		name   string
		ss, ds []byte
		n      int64
		want   []span
	}{
		{"all equal", sums(1, 2, 3), sums(1, 2, 3), 3 * ChunkSize, nil},
		{"first and last", sums(1, 2, 3), sums(9, 2, 9), 3 * ChunkSize, []span{{off, ChunkSize}, {off + 2*ChunkSize, ChunkSize}}},
		{"short last chunk", sums(1, 2), sums(1, 9), ChunkSize + 512, []span{{off + ChunkSize, 512}}},
		{"none", nil, nil, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []span
			for co, cn := range differingChunks(tc.ss, tc.ds, off, tc.n) {
				got = append(got, span{co, cn})
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
	// stopping early stops the walk
	count := 0
	for range differingChunks(sums(1, 2, 3), sums(4, 5, 6), off, 3*ChunkSize) {
		count++
		break
	}
	if count != 1 {
		t.Fatalf("%d chunks after a break, want 1", count)
	}
}
