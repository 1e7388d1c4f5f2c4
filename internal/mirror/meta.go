package mirror

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"sort"
)

// Every replica device is the volume's data followed by a metadata area of
// MetaSize(size) bytes: two slots, written alternately with FUA, each holding
// the primary's activity log (regions that may have writes in flight) and,
// per replica that is out of sync, the regions it misses. Every in-sync
// replica has the record before any write lands in a region it names, so a
// new primary can reconcile after a crash from its own copy.
const (
	// RegionSize is the activity-log granularity.
	RegionSize = 4 << 20
	// ALCapacity bounds the activity log (hot regions).
	ALCapacity = 1024
	// MaxReplicas is the most replicas a volume may have.
	MaxReplicas = 5

	metaMagic   = 0x4841435330314d44 // "HACS01MD"
	metaVersion = 1
	metaHeader  = 64
)

// Regions is the number of activity-log regions of a volume of size bytes.
func Regions(size int64) int { return int((size + RegionSize - 1) / RegionSize) }

func slotSize(size int64) int64 {
	bm := int64(Regions(size)+7) / 8
	n := int64(metaHeader) + ALCapacity*4 + MaxReplicas*(2+256+4+bm)
	return (n + 4095) / 4096 * 4096
}

// MetaSize is the size of the metadata area after the data.
func MetaSize(size int64) int64 { return 2 * slotSize(size) }

// ReplicaSize is the size of a replica device for a volume of size bytes.
func ReplicaSize(size int64) int64 { return size + MetaSize(size) }

// meta is one metadata record.
type meta struct {
	Seq   uint64
	Epoch uint64
	Size  int64
	AL    []uint32
	// Dirty maps an out-of-sync replica to the regions it misses.
	Dirty map[string][]uint32
}

func (m *meta) encode(size int64) ([]byte, error) {
	b := make([]byte, metaHeader, slotSize(size))
	binary.BigEndian.PutUint64(b[0:], metaMagic)
	binary.BigEndian.PutUint32(b[8:], metaVersion)
	binary.BigEndian.PutUint64(b[16:], m.Seq)
	binary.BigEndian.PutUint64(b[24:], m.Epoch)
	binary.BigEndian.PutUint64(b[32:], uint64(m.Size))
	binary.BigEndian.PutUint32(b[40:], RegionSize)
	binary.BigEndian.PutUint32(b[44:], uint32(len(m.AL)))
	binary.BigEndian.PutUint32(b[48:], uint32(len(m.Dirty)))
	for _, r := range m.AL {
		b = binary.BigEndian.AppendUint32(b, r)
	}
	ids := make([]string, 0, len(m.Dirty))
	for id := range m.Dirty {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	nreg := Regions(m.Size)
	for _, id := range ids {
		if len(id) > 256 {
			return nil, fmt.Errorf("replica id %q too long", id)
		}
		b = binary.BigEndian.AppendUint16(b, uint16(len(id)))
		b = append(b, id...)
		bm := make([]byte, (nreg+7)/8)
		for _, r := range m.Dirty[id] {
			if int(r) < nreg {
				bm[r/8] |= 1 << (r % 8)
			}
		}
		b = binary.BigEndian.AppendUint32(b, uint32(len(bm)))
		b = append(b, bm...)
	}
	if int64(len(b)) > slotSize(size) {
		return nil, fmt.Errorf("metadata record of %d bytes exceeds its slot", len(b))
	}
	binary.BigEndian.PutUint32(b[52:], uint32(len(b)))
	binary.BigEndian.PutUint32(b[12:], crc32.Checksum(b[16:], castagnoli))
	// pad to the slot: the whole slot is written so stale bytes never mix
	return b[:slotSize(size)], nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var errNoMeta = errors.New("no metadata record")

func decodeMeta(b []byte) (*meta, error) {
	if len(b) < metaHeader || binary.BigEndian.Uint64(b) != metaMagic {
		return nil, errNoMeta
	}
	if v := binary.BigEndian.Uint32(b[8:]); v != metaVersion {
		return nil, fmt.Errorf("metadata version %d is not supported", v)
	}
	n := int(binary.BigEndian.Uint32(b[52:]))
	if n < metaHeader || n > len(b) {
		return nil, errors.New("metadata record length is corrupt")
	}
	if crc32.Checksum(b[16:n], castagnoli) != binary.BigEndian.Uint32(b[12:]) {
		return nil, errors.New("metadata record checksum mismatch")
	}
	m := &meta{
		Seq:   binary.BigEndian.Uint64(b[16:]),
		Epoch: binary.BigEndian.Uint64(b[24:]),
		Size:  int64(binary.BigEndian.Uint64(b[32:])),
		Dirty: map[string][]uint32{},
	}
	if rs := binary.BigEndian.Uint32(b[40:]); rs != RegionSize {
		return nil, fmt.Errorf("metadata region size %d is not supported", rs)
	}
	nal := int(binary.BigEndian.Uint32(b[44:]))
	nd := int(binary.BigEndian.Uint32(b[48:]))
	p := b[metaHeader:n]
	if nal > ALCapacity*2 || len(p) < 4*nal {
		return nil, errors.New("metadata activity log is corrupt")
	}
	for i := 0; i < nal; i++ {
		m.AL = append(m.AL, binary.BigEndian.Uint32(p[4*i:]))
	}
	p = p[4*nal:]
	for i := 0; i < nd; i++ {
		if len(p) < 2 {
			return nil, errors.New("metadata dirty map is corrupt")
		}
		l := int(binary.BigEndian.Uint16(p))
		if len(p) < 2+l+4 {
			return nil, errors.New("metadata dirty map is corrupt")
		}
		id := string(p[2 : 2+l])
		p = p[2+l:]
		bl := int(binary.BigEndian.Uint32(p))
		p = p[4:]
		if len(p) < bl {
			return nil, errors.New("metadata dirty bitmap is corrupt")
		}
		var regs []uint32
		for j := 0; j < bl*8; j++ {
			if p[j/8]&(1<<(j%8)) != 0 {
				regs = append(regs, uint32(j))
			}
		}
		m.Dirty[id] = regs
		p = p[bl:]
	}
	return m, nil
}

// readMeta returns the newest valid record of a replica device.
func readMeta(d interface {
	ReadAt([]byte, int64) error
}, size int64) (*meta, error) {
	ss := slotSize(size)
	var best *meta
	var firstErr error
	buf := make([]byte, ss)
	for slot := int64(0); slot < 2; slot++ {
		if err := d.ReadAt(buf, size+slot*ss); err != nil {
			return nil, fmt.Errorf("read metadata: %w", err)
		}
		m, err := decodeMeta(buf)
		if err != nil {
			if !errors.Is(err, errNoMeta) && firstErr == nil {
				firstErr = err
			}
			continue
		}
		if m.Size != size {
			continue
		}
		if best == nil || m.Seq > best.Seq {
			best = m
		}
	}
	if best == nil {
		if firstErr != nil {
			return nil, firstErr
		}
		return nil, errNoMeta
	}
	return best, nil
}

// slotOffset is where record seq is written.
func slotOffset(size int64, seq uint64) int64 { return size + int64(seq%2)*slotSize(size) }
