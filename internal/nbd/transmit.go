package nbd

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/hacs/hacs/internal/device"
)

// transmit runs the transmission phase with a fixed set of long-lived
// workers, the way nbdkit's threads work: each worker takes the read side,
// reads one request (and its payload), lets go of it, serves the request and
// sends the reply. Many requests are in flight at once and replies go out in
// completion order, with no goroutine started per request.
func (c *serverConn) transmit() error {
	limit := c.srv.MaxInflightBytes
	if limit < MaxPayload {
		limit = 64 << 20
	}
	workers := c.srv.Workers
	if workers <= 0 {
		workers = DefaultWorkers
	}
	c.inflightCond = sync.NewCond(&c.inflightMu)
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.worker(limit); err != nil {
				select {
				case errc <- err:
				default:
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

// DefaultWorkers is how many requests one connection serves at once.
const DefaultWorkers = 16

// worker serves requests until the client disconnects or breaks the
// protocol; then every worker ends once its current request is answered.
func (c *serverConn) worker(limit int64) error {
	var hdr [requestHeaderLen]byte
	for {
		c.readMu.Lock()
		if c.readDone {
			c.readMu.Unlock()
			return nil
		}
		req, payload, weight, err := c.readRequest(hdr[:], limit)
		if err != nil || req.typ == cmdDisc {
			c.readDone = true // the others finish what they hold, then stop
			c.readMu.Unlock()
			return err
		}
		c.readMu.Unlock()
		if payload == nil && weight < 0 {
			continue // already answered while reading
		}
		if c.stopped.Load() {
			// cut (a newer connection of its session replaced it, or
			// its export was removed): a request not started yet is
			// dropped, never executed later, and not answered
			if payload != nil {
				putBuf(payload)
			}
			c.release(weight)
			continue
		}
		if errno, msg := c.validate(req); errno != 0 {
			if payload != nil {
				putBuf(payload)
			}
			c.release(weight)
			c.replyError(req, errno, msg)
			continue
		}
		c.handle(req, payload)
	}
}

// readRequest reads one request and its payload. Callers hold readMu. A
// negative weight with a nil payload means the request was answered already
// (an oversized write whose payload was discarded).
func (c *serverConn) readRequest(hdr []byte, limit int64) (req request, payload *[]byte, weight int64, err error) {
	if _, err = io.ReadFull(c.br, hdr); err != nil {
		return req, nil, 0, err
	}
	if req, err = parseRequest(hdr); err != nil {
		return req, nil, 0, err // cannot resynchronise the stream
	}
	switch {
	case req.typ == cmdWrite && req.length > MaxPayload:
		// Keep the stream in sync by consuming the payload, within
		// reason; beyond that the client is hostile.
		if req.length > 256<<20 {
			return req, nil, 0, fmt.Errorf("write of %d bytes exceeds the maximum payload", req.length)
		}
		if _, err = io.CopyN(io.Discard, c.br, int64(req.length)); err != nil {
			return req, nil, 0, err
		}
		c.replyError(req, errOverflow, fmt.Sprintf("write of %d bytes exceeds the maximum payload of %d", req.length, MaxPayload))
		return req, nil, -1, nil
	case req.typ == cmdWrite:
		weight = int64(req.length)
		c.acquire(weight, limit)
		payload = getBuf(int(req.length))
		if _, err = io.ReadFull(c.br, *payload); err != nil {
			putBuf(payload)
			c.release(weight)
			return req, nil, 0, err
		}
	case req.typ == cmdRead && req.length <= MaxPayload:
		weight = int64(req.length)
		c.acquire(weight, limit)
	}
	return req, payload, weight, nil
}

func (c *serverConn) acquire(n, limit int64) {
	c.inflightMu.Lock()
	for c.inflight > 0 && c.inflight+n > limit {
		c.inflightCond.Wait()
	}
	c.inflight += n
	c.inflightMu.Unlock()
}

func (c *serverConn) release(n int64) {
	c.inflightMu.Lock()
	c.inflight -= n
	c.inflightMu.Unlock()
	c.inflightCond.Signal()
}

// validate checks a request against the negotiated state and export size.
func (c *serverConn) validate(req request) (uint32, string) {
	allowed := cmdFlagFUA
	switch req.typ {
	case cmdRead:
		if c.structured {
			allowed |= cmdFlagDF
		}
	case cmdWriteZeroes:
		allowed |= cmdFlagNoHole | cmdFlagFastZero
	case cmdBlockStatus:
		allowed |= cmdFlagReqOne
	case cmdWrite, cmdFlush, cmdTrim, cmdCache, cmdChecksum:
	default:
		return errInval, fmt.Sprintf("unknown command %d", req.typ)
	}
	if req.flags&^allowed != 0 {
		return errInval, fmt.Sprintf("invalid flags %#x for command %d", req.flags, req.typ)
	}
	ro := c.flags&FlagReadOnly != 0
	size := uint64(c.export.Device.Size())
	end := req.offset + uint64(req.length)
	outOfRange := end < req.offset || end > size
	switch req.typ {
	case cmdRead:
		if req.length > MaxPayload {
			return errOverflow, fmt.Sprintf("read of %d bytes exceeds the maximum payload of %d", req.length, MaxPayload)
		}
		if outOfRange {
			return errInval, "read beyond the end of the export"
		}
	case cmdWrite, cmdWriteZeroes:
		if ro {
			return errPerm, "export is read-only"
		}
		if outOfRange {
			return errNoSpc, "write beyond the end of the export"
		}
	case cmdTrim:
		if ro {
			return errPerm, "export is read-only"
		}
		if outOfRange {
			return errInval, "trim beyond the end of the export"
		}
	case cmdCache:
		if outOfRange {
			return errInval, "cache beyond the end of the export"
		}
	case cmdChecksum:
		if req.length == 0 || req.length > device.MaxChecksumSpan || outOfRange {
			return errInval, "checksum range invalid"
		}
	case cmdBlockStatus:
		if !c.metaSet {
			return errInval, "no metadata context was negotiated"
		}
		if req.length == 0 || outOfRange {
			return errInval, "block status range invalid"
		}
	}
	return 0, ""
}

// handle executes one validated request and sends its reply.
func (c *serverConn) handle(req request, payload *[]byte) {
	dev := c.export.Device
	off, n := int64(req.offset), int64(req.length)
	var err error
	switch req.typ {
	case cmdRead:
		c.handleRead(req)
		return
	case cmdWrite:
		err = dev.WriteAt(*payload, off, req.flags&cmdFlagFUA != 0)
		putBuf(payload)
		c.release(n)
	case cmdFlush:
		err = dev.Flush()
	case cmdTrim:
		if err = dev.Trim(off, n); err == nil && req.flags&cmdFlagFUA != 0 {
			err = dev.Flush()
		}
	case cmdWriteZeroes:
		var zf device.ZeroFlags
		if req.flags&cmdFlagNoHole != 0 {
			zf |= device.ZeroNoHole
		}
		if req.flags&cmdFlagFastZero != 0 {
			zf |= device.ZeroFast
		}
		if err = dev.WriteZeroes(off, n, zf); err == nil && req.flags&cmdFlagFUA != 0 {
			err = dev.Flush()
		}
	case cmdCache:
		if ch, ok := dev.(device.Cacher); ok {
			err = ch.Cache(off, n)
		}
	case cmdBlockStatus:
		c.handleBlockStatus(req)
		return
	case cmdChecksum:
		c.handleChecksum(req)
		return
	}
	if err != nil {
		c.replyErr(req, err)
		return
	}
	c.replyOK(req)
}

func (c *serverConn) replyErr(req request, err error) {
	errno := device.Errno(err)
	c.log.Debug("nbd request failed", "cmd", req.typ, "offset", req.offset, "length", req.length, "err", err)
	c.replyError(req, errnoToWire(errno), err.Error())
}

func (c *serverConn) handleRead(req request) {
	n := int(req.length)
	defer c.release(int64(n))
	buf := getBuf(n)
	if err := c.export.Device.ReadAt(*buf, int64(req.offset)); err != nil {
		putBuf(buf)
		c.replyErr(req, err)
		return
	}
	m := newMsg(buf)
	if !c.structured {
		m.hdr = appendSimpleReply(m.hdr[:0], req.cookie, 0)
		m.iov = append(m.iov[:0], m.hdr, *buf)
		c.send.send(m)
		return
	}
	data := *buf
	if device.IsZero(data) && n > 0 {
		m.hdr = appendHoleChunk(m.hdr[:0], req.cookie, replyFlagDone, req.offset, req.length)
		m.iov = append(m.iov[:0], m.hdr)
		c.send.send(m)
		return
	}
	if req.flags&cmdFlagDF != 0 || n < 2*minHoleRun {
		m.hdr = appendChunkHeader(m.hdr[:0], req.cookie, replyFlagDone, replyTypeOffsetData, uint32(8+n))
		m.hdr = binary.BigEndian.AppendUint64(m.hdr, req.offset)
		m.iov = append(m.iov[:0], m.hdr, data)
		c.send.send(m)
		return
	}
	c.sendSparseRead(m, req, data)
}

// minHoleRun is the smallest run of zero bytes inside a read that is sent as
// a hole chunk instead of data.
const minHoleRun = 64 << 10

// sendSparseRead splits a read into data and hole chunks.
func (c *serverConn) sendSparseRead(m *outMsg, req request, data []byte) {
	type run struct {
		start, end int
		zero       bool
	}
	var runs []run
	for pos := 0; pos < len(data); {
		end := min(pos+device.BlockSize, len(data))
		z := device.IsZero(data[pos:end])
		if z && end-pos < device.BlockSize {
			z = false
		}
		if k := len(runs) - 1; k >= 0 && runs[k].zero == z {
			runs[k].end = end
		} else {
			runs = append(runs, run{pos, end, z})
		}
		pos = end
	}
	// Short zero runs travel as data: merge them into their neighbours.
	merged := runs[:0]
	for _, r := range runs {
		if r.zero && r.end-r.start < minHoleRun {
			r.zero = false
		}
		if k := len(merged) - 1; k >= 0 && merged[k].zero == r.zero {
			merged[k].end = r.end
		} else {
			merged = append(merged, r)
		}
	}
	// Build all headers first (the slice may grow), then the iovecs.
	m.hdr = m.hdr[:0]
	ends := make([]int, len(merged))
	for i, r := range merged {
		var fl uint16
		if i == len(merged)-1 {
			fl = replyFlagDone
		}
		off := req.offset + uint64(r.start)
		if r.zero {
			m.hdr = appendHoleChunk(m.hdr, req.cookie, fl, off, uint32(r.end-r.start))
		} else {
			m.hdr = appendChunkHeader(m.hdr, req.cookie, fl, replyTypeOffsetData, uint32(8+r.end-r.start))
			m.hdr = binary.BigEndian.AppendUint64(m.hdr, off)
		}
		ends[i] = len(m.hdr)
	}
	m.iov = m.iov[:0]
	start := 0
	for i, r := range merged {
		m.iov = append(m.iov, m.hdr[start:ends[i]])
		if !r.zero {
			m.iov = append(m.iov, data[r.start:r.end])
		}
		start = ends[i]
	}
	c.send.send(m)
}

func (c *serverConn) handleChecksum(req request) {
	sums := make([]byte, device.ChecksumLen(int64(req.length)))
	if err := device.Checksums(c.export.Device, int64(req.offset), int64(req.length), sums); err != nil {
		c.replyErr(req, err)
		return
	}
	m := newMsg(nil)
	if c.structured {
		m.hdr = appendChunkHeader(m.hdr[:0], req.cookie, replyFlagDone, replyTypeOffsetData, uint32(8+len(sums)))
		m.hdr = binary.BigEndian.AppendUint64(m.hdr, req.offset)
	} else {
		m.hdr = appendSimpleReply(m.hdr[:0], req.cookie, 0)
	}
	m.iov = append(m.iov[:0], m.hdr, sums)
	c.send.send(m)
}

func (c *serverConn) handleBlockStatus(req request) {
	dev := c.export.Device
	off, n := int64(req.offset), int64(req.length)
	var exts []device.Extent
	if dev.Capabilities().Extents {
		var err error
		if exts, err = dev.Extents(off, n); err != nil {
			c.replyErr(req, err)
			return
		}
	}
	if len(exts) == 0 {
		exts = []device.Extent{{Length: n}}
	}
	b := make([]byte, 0, 20+4+8*min(len(exts), 1<<16))
	b = appendChunkHeader(b, req.cookie, replyFlagDone, replyTypeBlockStatus, 0)
	b = binary.BigEndian.AppendUint32(b, 1) // context id of base:allocation
	var total int64
	count := 0
	for _, e := range exts {
		if e.Length <= 0 || total >= n {
			break
		}
		l := min(e.Length, n-total, 1<<32-device.BlockSize)
		// Merge with the previous descriptor when the state matches.
		if count > 0 && binary.BigEndian.Uint32(b[len(b)-4:]) == e.Flags &&
			int64(binary.BigEndian.Uint32(b[len(b)-8:]))+l < 1<<32-device.BlockSize {
			prev := binary.BigEndian.Uint32(b[len(b)-8:])
			binary.BigEndian.PutUint32(b[len(b)-8:], prev+uint32(l))
		} else {
			if count > 0 && req.flags&cmdFlagReqOne != 0 {
				break
			}
			b = binary.BigEndian.AppendUint32(b, uint32(l))
			b = binary.BigEndian.AppendUint32(b, e.Flags)
			count++
		}
		total += l
	}
	binary.BigEndian.PutUint32(b[16:], uint32(len(b)-20))
	m := newMsg(nil)
	m.iov = append(m.iov[:0], b)
	c.send.send(m)
}

func (c *serverConn) replyOK(req request) {
	m := newMsg(nil)
	if c.structured {
		m.hdr = appendChunkHeader(m.hdr[:0], req.cookie, replyFlagDone, replyTypeNone, 0)
	} else {
		m.hdr = appendSimpleReply(m.hdr[:0], req.cookie, 0)
	}
	m.iov = append(m.iov[:0], m.hdr)
	c.send.send(m)
}

// replyError sends an error for req; with structured replies it carries msg.
func (c *serverConn) replyError(req request, errno uint32, msg string) {
	m := newMsg(nil)
	if c.structured {
		if len(msg) > 1024 {
			msg = msg[:1024]
		}
		m.hdr = appendChunkHeader(m.hdr[:0], req.cookie, replyFlagDone, replyTypeError, uint32(6+len(msg)))
		m.hdr = binary.BigEndian.AppendUint32(m.hdr, errno)
		m.hdr = binary.BigEndian.AppendUint16(m.hdr, uint16(len(msg)))
		m.hdr = append(m.hdr, msg...)
	} else {
		m.hdr = appendSimpleReply(m.hdr[:0], req.cookie, errno)
	}
	m.iov = append(m.iov[:0], m.hdr)
	c.send.send(m)
}

func appendSimpleReply(b []byte, cookie uint64, errno uint32) []byte {
	b = binary.BigEndian.AppendUint32(b, magicSimpleReply)
	b = binary.BigEndian.AppendUint32(b, errno)
	return binary.BigEndian.AppendUint64(b, cookie)
}

func appendChunkHeader(b []byte, cookie uint64, flags, typ uint16, length uint32) []byte {
	b = binary.BigEndian.AppendUint32(b, magicStructReply)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	return binary.BigEndian.AppendUint32(b, length)
}

func appendHoleChunk(b []byte, cookie uint64, flags uint16, off uint64, length uint32) []byte {
	b = appendChunkHeader(b, cookie, flags, replyTypeOffsetHole, 12)
	b = binary.BigEndian.AppendUint64(b, off)
	return binary.BigEndian.AppendUint32(b, length)
}

// outMsg is one reply: a list of byte slices written in order, and the
// pooled buffer to return once they are on the wire.
type outMsg struct {
	hdr    []byte
	iov    [][]byte
	buf    *[]byte
	hdrArr [48]byte
	iovArr [2][]byte
}

func newMsg(buf *[]byte) *outMsg {
	m := &outMsg{buf: buf}
	m.hdr = m.hdrArr[:0]
	m.iov = m.iovArr[:0]
	return m
}

// sender writes replies with flat combining: the goroutine that finds the
// connection idle writes its reply and every reply queued meanwhile, in one
// writev, so many replies in flight share few system calls.
type sender struct {
	w io.Writer
	// bw, if set, buffers w: a batch is copied into it and flushed, so a
	// writer that frames every Write (TLS) sees few large writes.
	bw *bufio.Writer
	// onErr, if set, learns of a failed write (once); the messages queued
	// then are dropped.
	onErr    func(error)
	mu       sync.Mutex
	queue    []*outMsg
	spare    []*outMsg
	busy     bool
	err      error
	reported bool
	bufs     net.Buffers
}

func (s *sender) send(m *outMsg) {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		putBuf(m.buf)
		return
	}
	s.queue = append(s.queue, m)
	if s.busy {
		s.mu.Unlock()
		return
	}
	s.busy = true
	for len(s.queue) > 0 && s.err == nil {
		batch := s.queue
		s.queue = s.spare[:0]
		s.mu.Unlock()
		bufs := s.bufs[:0]
		for _, q := range batch {
			bufs = append(bufs, q.iov...)
		}
		s.bufs = bufs[:0]
		var err error
		if s.bw != nil {
			for _, b := range bufs {
				if _, err = s.bw.Write(b); err != nil {
					break
				}
			}
			if err == nil {
				err = s.bw.Flush()
			}
		} else {
			_, err = bufs.WriteTo(s.w)
		}
		for i, q := range batch {
			putBuf(q.buf)
			batch[i] = nil
		}
		s.mu.Lock()
		s.spare = batch[:0]
		if err != nil {
			s.err = err
		}
	}
	for _, q := range s.queue { // connection failed: drop what is left
		putBuf(q.buf)
	}
	s.queue = s.queue[:0]
	s.busy = false
	err, report := s.err, s.err != nil && !s.reported
	s.reported = s.reported || report
	s.mu.Unlock()
	if report && s.onErr != nil {
		s.onErr(err)
	}
}
