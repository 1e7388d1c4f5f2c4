package device

import (
	"sync"
)

// Memory is a sparse in-memory Device made of 4 KiB blocks; blocks never
// written (or trimmed) are holes. It serves tests and the reference model
// other devices are checked against.
type Memory struct {
	mu     sync.RWMutex
	size   int64
	blocks map[int64][]byte
}

// NewMemory returns an empty device of the given size.
func NewMemory(size int64) *Memory {
	return &Memory{size: size, blocks: make(map[int64][]byte)}
}

// Size implements Device.
func (m *Memory) Size() int64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.size
}

// Capabilities implements Device.
func (m *Memory) Capabilities() Capabilities {
	return Capabilities{Flush: true, FUA: true, Trim: true, Zero: true, FastZero: true, Extents: true, MultiConn: true}
}

// ReadAt implements Device.
func (m *Memory) ReadAt(p []byte, off int64) error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if err := CheckRange(off, int64(len(p)), m.size); err != nil {
		return err
	}
	for len(p) > 0 {
		bi, bo := off/BlockSize, off%BlockSize
		n := min(int64(len(p)), BlockSize-bo)
		if b := m.blocks[bi]; b != nil {
			copy(p[:n], b[bo:])
		} else {
			clear(p[:n])
		}
		p, off = p[n:], off+n
	}
	return nil
}

// WriteAt implements Device.
func (m *Memory) WriteAt(p []byte, off int64, fua bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := CheckRange(off, int64(len(p)), m.size); err != nil {
		return ErrNoSpace
	}
	for len(p) > 0 {
		bi, bo := off/BlockSize, off%BlockSize
		n := min(int64(len(p)), BlockSize-bo)
		b := m.blocks[bi]
		if b == nil {
			b = make([]byte, BlockSize)
			m.blocks[bi] = b
		}
		copy(b[bo:], p[:n])
		p, off = p[n:], off+n
	}
	return nil
}

// Flush implements Device.
func (m *Memory) Flush() error { return nil }

// Trim implements Device: whole blocks become holes, partial ones zeroes.
func (m *Memory) Trim(off, length int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := CheckRange(off, length, m.size); err != nil {
		return err
	}
	m.zero(off, length)
	return nil
}

func (m *Memory) zero(off, length int64) {
	end := off + length
	for off < end {
		bi, bo := off/BlockSize, off%BlockSize
		n := min(end-off, BlockSize-bo)
		if b := m.blocks[bi]; b != nil {
			if n == BlockSize {
				delete(m.blocks, bi)
			} else {
				clear(b[bo : bo+n])
			}
		}
		off += n
	}
}

// WriteZeroes implements Device.
func (m *Memory) WriteZeroes(off, length int64, flags ZeroFlags) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := CheckRange(off, length, m.size); err != nil {
		return ErrNoSpace
	}
	m.zero(off, length)
	return nil
}

// Extents implements Device.
func (m *Memory) Extents(off, length int64) ([]Extent, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if err := CheckRange(off, length, m.size); err != nil {
		return nil, err
	}
	var out []Extent
	end := off + length
	for off < end {
		bi, bo := off/BlockSize, off%BlockSize
		n := min(end-off, BlockSize-bo)
		var fl uint32
		if m.blocks[bi] == nil {
			fl = ExtentHole | ExtentZero
		}
		if k := len(out) - 1; k >= 0 && out[k].Flags == fl {
			out[k].Length += n
		} else {
			out = append(out, Extent{Length: n, Flags: fl})
		}
		off += n
	}
	return out, nil
}

// Resize changes the size; bytes past a shrink are discarded.
func (m *Memory) Resize(size int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if size < m.size {
		m.zero(size, m.size-size)
	}
	m.size = size
	return nil
}

// Close implements Device.
func (m *Memory) Close() error { return nil }
