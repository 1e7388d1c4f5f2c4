package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hacs/hacs/internal/device"
	"github.com/hacs/hacs/internal/tlspsk"
)

// ClientOptions choose what a Client negotiates.
type ClientOptions struct {
	// Export is the export name to open ("" for the default export).
	Export string
	// NoStructured disables structured replies (and so block status).
	NoStructured bool
	// HandshakeTimeout bounds negotiation (default 10s).
	HandshakeTimeout time.Duration
	// TLS, if set, upgrades the connection with NBD_OPT_STARTTLS before any
	// other option; a server that refuses, or a failed TLS handshake, fails
	// the connection (no plaintext fallback). When neither ServerName nor
	// InsecureSkipVerify is set, Dial uses the host of its address.
	TLS *tls.Config
	// PSK, if set, upgrades the connection like TLS but with TLS 1.3 and a
	// pre-shared key: Identity is offered, with its key in Keys (servers
	// such as nbdkit --tls-psk and hacs serve --tls-psk). Not with TLS.
	PSK *tlspsk.Config
	// Session, if set, names the connection for session reinstatement
	// (NBD_OPT_HACS_SESSION, see Session): a hacs server cuts the
	// session's connections of older generations on the export, and
	// waits for their requests to end, before this one starts. A server
	// that does not know the option (NBD_REP_ERR_UNSUP) is used without
	// it: ExportInfo.Session tells which; any other refusal fails Dial.
	Session *Session
	// DeadPeerTimeout, if set, bounds how long a TCP connection may wait
	// on a peer that no longer acknowledges what is sent to it, nor
	// answers keepalive probes (TCP_USER_TIMEOUT and keepalive): the
	// connection then fails, instead of waiting for TCP's retransmission
	// back-off (a reset lost in a partition leaves a connection that the
	// peer closed long ago, found dead only minutes later). A live peer
	// that is slow to reply is not affected: its kernel acknowledges.
	DeadPeerTimeout time.Duration
}

// ExportInfo is what the server told about the export.
type ExportInfo struct {
	Name        string
	Description string
	Size        int64
	Flags       uint16
	MinBlock    uint32
	PrefBlock   uint32
	MaxPayload  uint32
	Structured  bool
	BlockStatus bool // base:allocation negotiated
	TLS         bool // the connection runs over TLS
	// Session: the server accepted ClientOptions.Session (session
	// reinstatement holds for this connection).
	Session bool
}

// Client is a connection to one NBD export. It is a device.Device: many
// goroutines may issue requests at once; they are pipelined on the one
// connection and completed as replies arrive, in any order.
type Client struct {
	nc   net.Conn
	raw  net.Conn // the connection under TLS, if any (Abort)
	br   *bufio.Reader
	info ExportInfo
	meta uint32 // context id of base:allocation

	send   sender     // writes requests
	mu     sync.Mutex // guards pending, cookie, err
	cookie uint64
	// pending maps cookies to calls awaiting replies.
	pending map[uint64]*call
	err     error
	done    chan struct{}
	closing bool
}

// call is one request in flight.
type call struct {
	req   request
	dst   []byte // read destination
	err   error
	exts  []device.Extent
	ready chan struct{}
}

// ProtocolError is returned for requests the server failed, carrying the
// server's error value (as an errno) and message.
type ProtocolError struct {
	Errno   syscall.Errno
	Message string
}

func (e *ProtocolError) Error() string {
	if e.Message != "" {
		return fmt.Sprintf("nbd server error: %s (%v)", e.Message, e.Errno)
	}
	return fmt.Sprintf("nbd server error: %v", e.Errno)
}

func (e *ProtocolError) Unwrap() error { return e.Errno }

// Dial connects to addr ("host:port", or a path for a Unix socket when
// network is "unix") and opens the export.
func Dial(ctx context.Context, network, addr string, opts ClientOptions) (*Client, error) {
	if opts.TLS != nil && opts.TLS.ServerName == "" && !opts.TLS.InsecureSkipVerify && network != "unix" {
		if host, _, err := net.SplitHostPort(addr); err == nil {
			opts.TLS = opts.TLS.Clone()
			opts.TLS.ServerName = host
		}
	}
	d := deadPeerDialer(opts.DeadPeerTimeout)
	nc, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("nbd dial %s: %w", addr, err)
	}
	c, err := NewClient(nc, opts)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

// deadPeerDialer is a dialer whose TCP connections fail when the peer
// stays silent for about timeout (none if timeout is 0): keepalive probes
// every timeout/5 (at least 200 ms) once nothing was received for that
// long, and TCP_USER_TIMEOUT, which ends the connection when sent data (a
// request, or a probe) stays unacknowledged for timeout.
func deadPeerDialer(timeout time.Duration) *net.Dialer {
	var d net.Dialer
	if timeout <= 0 {
		return &d
	}
	probe := max(timeout/5, 200*time.Millisecond)
	d.KeepAliveConfig = net.KeepAliveConfig{Enable: true, Idle: probe, Interval: probe, Count: 5}
	ms := int(timeout.Milliseconds())
	d.Control = func(network, _ string, rc syscall.RawConn) error {
		if !strings.HasPrefix(network, "tcp") {
			return nil
		}
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, ms)
		})
		if err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("TCP_USER_TIMEOUT: %w", serr)
		}
		return nil
	}
	return &d
}

// NewClient negotiates on an established connection.
func NewClient(nc net.Conn, opts ClientOptions) (*Client, error) {
	if opts.TLS != nil && opts.PSK != nil {
		return nil, errors.New("nbd: TLS with certificates and with a pre-shared key are exclusive: give one")
	}
	if opts.PSK != nil {
		if _, ok := opts.PSK.Keys.Lookup(opts.PSK.Identity); !ok {
			return nil, fmt.Errorf("nbd: no pre-shared key for identity %q", opts.PSK.Identity)
		}
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	c := &Client{nc: nc, raw: nc, br: bufio.NewReaderSize(nc, 128<<10), pending: make(map[uint64]*call), done: make(chan struct{})}
	timeout := opts.HandshakeTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	nc.SetDeadline(time.Now().Add(timeout))
	if err := c.handshake(opts); err != nil {
		if c.info.TLS {
			err = c.tlsAlert(err)
		}
		return nil, fmt.Errorf("nbd handshake with %s: %w", nc.RemoteAddr(), err)
	}
	nc.SetDeadline(time.Time{})
	c.send.w = c.nc
	if c.info.TLS {
		c.send.bw = bufio.NewWriterSize(c.nc, 64<<10)
	}
	c.send.onErr = func(err error) { c.fail(fmt.Errorf("nbd send: %w", err)) }
	go c.readLoop()
	return c, nil
}

type optReply struct {
	typ  uint32
	data []byte
}

func (c *Client) sendOption(opt uint32, data []byte) error {
	b := make([]byte, 16+len(data))
	binary.BigEndian.PutUint64(b[0:], magicOpt)
	binary.BigEndian.PutUint32(b[8:], opt)
	binary.BigEndian.PutUint32(b[12:], uint32(len(data)))
	copy(b[16:], data)
	_, err := c.nc.Write(b)
	return err
}

func (c *Client) readOptReply(opt uint32) (optReply, error) {
	var h [20]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return optReply{}, err
	}
	if m := binary.BigEndian.Uint64(h[0:]); m != magicOptReply {
		return optReply{}, fmt.Errorf("bad option reply magic %#x", m)
	}
	if o := binary.BigEndian.Uint32(h[8:]); o != opt {
		return optReply{}, fmt.Errorf("reply for option %d while waiting for %d", o, opt)
	}
	n := binary.BigEndian.Uint32(h[16:])
	if n > maxOptionLen {
		return optReply{}, fmt.Errorf("option reply of %d bytes is too large", n)
	}
	r := optReply{typ: binary.BigEndian.Uint32(h[12:]), data: make([]byte, n)}
	_, err := io.ReadFull(c.br, r.data)
	return r, err
}

func optReplyError(opt uint32, r optReply) error {
	names := map[uint32]string{
		repErrUnsup: "unsupported", repErrPolicy: "refused by policy", repErrInvalid: "invalid",
		repErrPlatform: "not supported on this platform", repErrTLSReqd: "TLS required",
		repErrUnknown: "unknown export", repErrShutdown: "server shutting down",
		repErrBlockSizeReqd: "block size negotiation required", repErrTooBig: "too big",
	}
	what := names[r.typ]
	if what == "" {
		what = fmt.Sprintf("error %#x", r.typ)
	}
	if len(r.data) > 0 {
		return fmt.Errorf("%s: %s: %s", optName(opt), what, r.data)
	}
	return fmt.Errorf("%s: %s", optName(opt), what)
}

func (c *Client) handshake(opts ClientOptions) error {
	var h [18]byte
	if _, err := io.ReadFull(c.br, h[:16]); err != nil {
		return err
	}
	if binary.BigEndian.Uint64(h[0:]) != magicNBD {
		return errors.New("not an NBD server (bad magic)")
	}
	if m := binary.BigEndian.Uint64(h[8:]); m == magicOldstyleOpts {
		return errors.New("server speaks oldstyle negotiation, which is not supported")
	} else if m != magicOpt {
		return fmt.Errorf("bad handshake magic %#x", m)
	}
	if _, err := io.ReadFull(c.br, h[16:18]); err != nil {
		return err
	}
	hf := binary.BigEndian.Uint16(h[16:])
	if hf&flagFixedNewstyle == 0 {
		return errors.New("server does not support fixed newstyle negotiation")
	}
	cf := clientFixedNewstyle
	noZeroes := hf&flagNoZeroes != 0
	if noZeroes {
		cf |= clientNoZeroes
	}
	if err := binary.Write(c.nc, binary.BigEndian, cf); err != nil {
		return err
	}
	c.info.Name = opts.Export
	if opts.TLS != nil || opts.PSK != nil {
		if err := c.startTLS(opts.TLS, opts.PSK); err != nil {
			return err
		}
	}
	if !opts.NoStructured {
		if err := c.sendOption(optStructuredReply, nil); err != nil {
			return err
		}
		r, err := c.readOptReply(optStructuredReply)
		if err != nil {
			return err
		}
		c.info.Structured = r.typ == repAck
	}
	if c.info.Structured {
		data := binary.BigEndian.AppendUint32(nil, uint32(len(opts.Export)))
		data = append(data, opts.Export...)
		data = binary.BigEndian.AppendUint32(data, 1)
		data = binary.BigEndian.AppendUint32(data, uint32(len(MetaBaseAllocation)))
		data = append(data, MetaBaseAllocation...)
		if err := c.sendOption(optSetMetaContext, data); err != nil {
			return err
		}
		for {
			r, err := c.readOptReply(optSetMetaContext)
			if err != nil {
				return err
			}
			if r.typ == repMetaContext && len(r.data) >= 4 && string(r.data[4:]) == MetaBaseAllocation {
				c.meta = binary.BigEndian.Uint32(r.data)
				c.info.BlockStatus = true
				continue
			}
			if r.typ != repAck {
				c.info.BlockStatus = false
			}
			if r.typ == repAck || r.typ&(1<<31) != 0 {
				break
			}
		}
	}
	if opts.Session != nil {
		if err := c.sendOption(optSession, opts.Session.encode()); err != nil {
			return err
		}
		r, err := c.readOptReply(optSession)
		if err != nil {
			return err
		}
		switch r.typ {
		case repAck:
			c.info.Session = true
		case repErrUnsup: // not a hacs server: no reinstatement
		default:
			return optReplyError(optSession, r)
		}
	}
	// GO with a block size request.
	data := binary.BigEndian.AppendUint32(nil, uint32(len(opts.Export)))
	data = append(data, opts.Export...)
	data = binary.BigEndian.AppendUint16(data, 2)
	data = binary.BigEndian.AppendUint16(data, infoBlockSize)
	data = binary.BigEndian.AppendUint16(data, infoDescription)
	if err := c.sendOption(optGo, data); err != nil {
		return err
	}
	gotExport := false
	for {
		r, err := c.readOptReply(optGo)
		if err != nil {
			return err
		}
		switch r.typ {
		case repInfo:
			if len(r.data) < 2 {
				return errors.New("short NBD_REP_INFO")
			}
			switch binary.BigEndian.Uint16(r.data) {
			case infoExport:
				if len(r.data) != 12 {
					return errors.New("bad NBD_INFO_EXPORT length")
				}
				c.info.Size = int64(binary.BigEndian.Uint64(r.data[2:]))
				c.info.Flags = binary.BigEndian.Uint16(r.data[10:])
				gotExport = true
			case infoBlockSize:
				if len(r.data) != 14 {
					return errors.New("bad NBD_INFO_BLOCK_SIZE length")
				}
				c.info.MinBlock = binary.BigEndian.Uint32(r.data[2:])
				c.info.PrefBlock = binary.BigEndian.Uint32(r.data[6:])
				c.info.MaxPayload = binary.BigEndian.Uint32(r.data[10:])
			case infoDescription:
				c.info.Description = string(r.data[2:])
			case infoName:
				c.info.Name = string(r.data[2:])
			}
		case repAck:
			if !gotExport {
				return errors.New("server finished GO without export information")
			}
			c.finishInfo()
			return nil
		case repErrUnsup:
			return c.exportNameFallback(opts.Export, noZeroes)
		default:
			return optReplyError(optGo, r)
		}
	}
}

func (c *Client) exportNameFallback(name string, noZeroes bool) error {
	if err := c.sendOption(optExportName, []byte(name)); err != nil {
		return err
	}
	n := 10
	if !noZeroes {
		n += 124
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(c.br, b); err != nil {
		return fmt.Errorf("EXPORT_NAME %q refused: %w", name, err)
	}
	c.info.Size = int64(binary.BigEndian.Uint64(b))
	c.info.Flags = binary.BigEndian.Uint16(b[8:])
	c.finishInfo()
	return nil
}

func (c *Client) finishInfo() {
	if c.info.MaxPayload == 0 || c.info.MaxPayload > MaxPayload {
		c.info.MaxPayload = MaxPayload
	}
	if c.info.MinBlock == 0 {
		c.info.MinBlock = 1
	}
}

// Info describes the open export.
func (c *Client) Info() ExportInfo { return c.info }

// Size implements device.Device.
func (c *Client) Size() int64 { return c.info.Size }

// Capabilities implements device.Device from the transmission flags.
func (c *Client) Capabilities() device.Capabilities {
	f := c.info.Flags
	return device.Capabilities{
		ReadOnly:  f&FlagReadOnly != 0,
		Flush:     f&FlagSendFlush != 0,
		FUA:       f&FlagSendFUA != 0,
		Trim:      f&FlagSendTrim != 0,
		Zero:      f&FlagSendWriteZeroes != 0,
		FastZero:  f&FlagSendFastZero != 0,
		Extents:   c.info.BlockStatus,
		Cache:     f&FlagSendCache != 0,
		MultiConn: f&FlagCanMultiConn != 0,
	}
}

var callPool = sync.Pool{New: func() any { return &call{ready: make(chan struct{}, 1)} }}

// start sends a request; payload is the write data, if any.
func (c *Client) start(typ, flags uint16, off uint64, length uint32, payload, dst []byte) (*call, error) {
	cl := callPool.Get().(*call)
	cl.dst, cl.err, cl.exts = dst, nil, nil
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		callPool.Put(cl)
		return nil, err
	}
	c.cookie++
	cl.req = request{flags: flags, typ: typ, cookie: c.cookie, offset: off, length: length}
	c.pending[cl.req.cookie] = cl
	c.mu.Unlock()

	// Requests go out through the same flat-combining sender the server
	// uses for replies: concurrent requests share writev calls. payload
	// stays referenced until written, which is before any reply.
	m := newMsg(nil)
	m.hdr = m.hdr[:requestHeaderLen]
	cl.req.encode(m.hdr)
	m.iov = append(m.iov, m.hdr)
	if payload != nil {
		m.iov = append(m.iov, payload)
	}
	c.send.send(m)
	return cl, nil
}

// wait blocks until the call completes and returns its error.
func (c *Client) wait(cl *call) error {
	<-cl.ready
	err := cl.err
	cl.dst, cl.exts = nil, nil
	callPool.Put(cl)
	return err
}

func (c *Client) do(typ, flags uint16, off uint64, length uint32, payload, dst []byte) error {
	cl, err := c.start(typ, flags, off, length, payload, dst)
	if err != nil {
		return err
	}
	return c.wait(cl)
}

// fail records a fatal connection error and fails every pending call.
func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
		close(c.done)
	}
	pending := c.pending
	c.pending = make(map[uint64]*call)
	c.mu.Unlock()
	c.nc.Close()
	for _, cl := range pending {
		cl.err = err
		cl.ready <- struct{}{}
	}
}

// Err returns the error that broke the connection, or nil.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Done is closed when the connection has failed or been closed.
func (c *Client) Done() <-chan struct{} { return c.done }

func (c *Client) readLoop() {
	var h [20]byte
	for {
		if _, err := io.ReadFull(c.br, h[:4]); err != nil {
			c.fail(c.connErr(err))
			return
		}
		var err error
		switch m := binary.BigEndian.Uint32(h[:4]); m {
		case magicSimpleReply:
			err = c.readSimple(h[:])
		case magicStructReply:
			err = c.readChunk(h[:])
		default:
			err = fmt.Errorf("bad reply magic %#x", m)
		}
		if err != nil {
			c.fail(c.connErr(err))
			return
		}
	}
}

func (c *Client) connErr(err error) error {
	c.mu.Lock()
	closing := c.closing
	c.mu.Unlock()
	if closing {
		return device.ErrClosed
	}
	return fmt.Errorf("nbd connection to %s: %w", c.nc.RemoteAddr(), err)
}

func (c *Client) take(cookie uint64, remove bool) *call {
	c.mu.Lock()
	defer c.mu.Unlock()
	cl := c.pending[cookie]
	if remove {
		delete(c.pending, cookie)
	}
	return cl
}

func (c *Client) readSimple(h []byte) error {
	if _, err := io.ReadFull(c.br, h[4:16]); err != nil {
		return err
	}
	errv := binary.BigEndian.Uint32(h[4:])
	cl := c.take(binary.BigEndian.Uint64(h[8:]), true)
	if cl == nil {
		return fmt.Errorf("reply for unknown cookie %d", binary.BigEndian.Uint64(h[8:]))
	}
	if errv != 0 {
		cl.err = &ProtocolError{Errno: wireToErrno(errv)}
	} else if cl.dst != nil { // read or checksum payload
		if _, err := io.ReadFull(c.br, cl.dst); err != nil {
			cl.err = err
			cl.ready <- struct{}{}
			return err
		}
	}
	cl.ready <- struct{}{}
	return nil
}

func (c *Client) readChunk(h []byte) error {
	if _, err := io.ReadFull(c.br, h[4:20]); err != nil {
		return err
	}
	flags := binary.BigEndian.Uint16(h[4:])
	typ := binary.BigEndian.Uint16(h[6:])
	cookie := binary.BigEndian.Uint64(h[8:])
	length := binary.BigEndian.Uint32(h[16:])
	done := flags&replyFlagDone != 0
	cl := c.take(cookie, done)
	if cl == nil {
		return fmt.Errorf("reply chunk for unknown cookie %d", cookie)
	}
	err := c.chunkPayload(cl, typ, length)
	if err != nil {
		if done {
			cl.err = err
			cl.ready <- struct{}{}
		}
		return err
	}
	if done {
		cl.ready <- struct{}{}
	}
	return nil
}

func (c *Client) chunkPayload(cl *call, typ uint16, length uint32) error {
	switch typ {
	case replyTypeNone:
		if length != 0 {
			return errors.New("NONE chunk with payload")
		}
	case replyTypeOffsetData:
		if length < 8 || cl.dst == nil {
			return errors.New("unexpected OFFSET_DATA chunk")
		}
		var ob [8]byte
		if _, err := io.ReadFull(c.br, ob[:]); err != nil {
			return err
		}
		rel := binary.BigEndian.Uint64(ob[:]) - cl.req.offset
		n := uint64(length - 8)
		if rel > uint64(len(cl.dst)) || n > uint64(len(cl.dst))-rel {
			return errors.New("OFFSET_DATA chunk outside the request")
		}
		if _, err := io.ReadFull(c.br, cl.dst[rel:rel+n]); err != nil {
			return err
		}
	case replyTypeOffsetHole:
		if length != 12 || cl.req.typ != cmdRead {
			return errors.New("unexpected OFFSET_HOLE chunk")
		}
		var b [12]byte
		if _, err := io.ReadFull(c.br, b[:]); err != nil {
			return err
		}
		rel := binary.BigEndian.Uint64(b[:]) - cl.req.offset
		n := uint64(binary.BigEndian.Uint32(b[8:]))
		if rel > uint64(len(cl.dst)) || n > uint64(len(cl.dst))-rel {
			return errors.New("OFFSET_HOLE chunk outside the request")
		}
		clear(cl.dst[rel : rel+n])
	case replyTypeBlockStatus:
		if cl.req.typ != cmdBlockStatus || length < 12 || (length-4)%8 != 0 || length > 8<<20 {
			return errors.New("unexpected BLOCK_STATUS chunk")
		}
		b := make([]byte, length)
		if _, err := io.ReadFull(c.br, b); err != nil {
			return err
		}
		if binary.BigEndian.Uint32(b) != c.meta {
			return nil // another context; we asked only for one
		}
		for p := b[4:]; len(p) >= 8; p = p[8:] {
			cl.exts = append(cl.exts, device.Extent{Length: int64(binary.BigEndian.Uint32(p)), Flags: binary.BigEndian.Uint32(p[4:])})
		}
	case replyTypeError, replyTypeErrorOffset:
		if length < 6 || length > maxOptionLen {
			return errors.New("malformed error chunk")
		}
		b := make([]byte, length)
		if _, err := io.ReadFull(c.br, b); err != nil {
			return err
		}
		ml := int(binary.BigEndian.Uint16(b[4:]))
		msg := ""
		if 6+ml <= len(b) {
			msg = string(b[6 : 6+ml])
		}
		cl.err = &ProtocolError{Errno: wireToErrno(binary.BigEndian.Uint32(b)), Message: msg}
	default:
		if typ&(1<<15) != 0 { // unknown error chunk: still an error
			if _, err := io.CopyN(io.Discard, c.br, int64(length)); err != nil {
				return err
			}
			cl.err = &ProtocolError{Errno: syscall.EIO, Message: fmt.Sprintf("unknown error chunk type %d", typ)}
			return nil
		}
		return fmt.Errorf("unknown reply chunk type %d", typ)
	}
	return nil
}

// ReadAt implements device.Device, splitting large reads into pipelined
// requests of at most the server's maximum payload.
func (c *Client) ReadAt(p []byte, off int64) error {
	return c.split(cmdRead, 0, p, off, int64(len(p)))
}

// WriteAt implements device.Device.
func (c *Client) WriteAt(p []byte, off int64, fua bool) error {
	var fl uint16
	if fua {
		fl = cmdFlagFUA
	}
	return c.split(cmdWrite, fl, p, off, int64(len(p)))
}

func (c *Client) split(typ, flags uint16, p []byte, off, length int64) error {
	max := int64(c.info.MaxPayload)
	if length <= max {
		var payload, dst []byte
		if typ == cmdWrite {
			payload = p
		} else if typ == cmdRead {
			dst = p
		}
		return c.do(typ, flags, uint64(off), uint32(length), payload, dst)
	}
	var calls []*call
	var firstErr error
	for done := int64(0); done < length; done += max {
		n := min(max, length-done)
		var payload, dst []byte
		if typ == cmdWrite {
			payload = p[done : done+n]
		} else if typ == cmdRead {
			dst = p[done : done+n]
		}
		cl, err := c.start(typ, flags, uint64(off+done), uint32(n), payload, dst)
		if err != nil {
			firstErr = err
			break
		}
		calls = append(calls, cl)
	}
	for _, cl := range calls {
		if err := c.wait(cl); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

// Checksums asks a hacs server for device.Checksums of a range (up to
// device.MaxChecksumSpan bytes) into out.
func (c *Client) Checksums(off, length int64, out []byte) error {
	if length <= 0 || length > device.MaxChecksumSpan || len(out) != device.ChecksumLen(length) {
		return fmt.Errorf("nbd checksums: bad span %d: %w", length, syscall.EINVAL)
	}
	return c.do(cmdChecksum, 0, uint64(off), uint32(length), nil, out)
}

// Flush implements device.Device.
func (c *Client) Flush() error { return c.do(cmdFlush, 0, 0, 0, nil, nil) }

// Trim implements device.Device.
func (c *Client) Trim(off, length int64) error {
	return c.rangeCmd(cmdTrim, 0, off, length)
}

// WriteZeroes implements device.Device.
func (c *Client) WriteZeroes(off, length int64, flags device.ZeroFlags) error {
	var fl uint16
	if flags&device.ZeroNoHole != 0 {
		fl |= cmdFlagNoHole
	}
	if flags&device.ZeroFast != 0 {
		if c.info.Flags&FlagSendFastZero == 0 {
			return device.ErrUnsupported
		}
		fl |= cmdFlagFastZero
	}
	return c.rangeCmd(cmdWriteZeroes, fl, off, length)
}

// Cache implements device.Cacher.
func (c *Client) Cache(off, length int64) error {
	return c.rangeCmd(cmdCache, 0, off, length)
}

// rangeCmd issues a payload-less command over a range of any length.
func (c *Client) rangeCmd(typ, flags uint16, off, length int64) error {
	const chunk = 1 << 30
	for length > 0 {
		n := min(length, chunk)
		if err := c.do(typ, flags, uint64(off), uint32(n), nil, nil); err != nil {
			return err
		}
		off, length = off+n, length-n
	}
	return nil
}

// Extents implements device.Device with NBD_CMD_BLOCK_STATUS.
func (c *Client) Extents(off, length int64) ([]device.Extent, error) {
	if !c.info.BlockStatus {
		return []device.Extent{{Length: length}}, nil
	}
	n := min(length, 1<<31)
	cl, err := c.start(cmdBlockStatus, 0, uint64(off), uint32(n), nil, nil)
	if err != nil {
		return nil, err
	}
	<-cl.ready
	exts, err := cl.exts, cl.err
	cl.dst, cl.exts = nil, nil
	callPool.Put(cl)
	if err != nil {
		return nil, err
	}
	if len(exts) == 0 {
		return nil, errors.New("nbd: block status reply without extents")
	}
	return exts, nil
}

// Close sends a disconnect request and closes the connection.
// Abort drops the connection at once, without the disconnect request:
// whatever the kernel still holds unsent (requests written while the
// server was out of reach) is discarded with a reset instead of being
// delivered later. A client that re-issues its pending requests on another
// connection must abort the old one: a request delivered late by TCP on
// the old connection would land after newer writes.
func (c *Client) Abort() {
	if tc, ok := c.raw.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.fail(device.ErrClosed)
}

func (c *Client) Close() error {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return nil
	}
	c.closing = true
	c.mu.Unlock()
	c.nc.SetWriteDeadline(time.Now().Add(time.Second))
	m := newMsg(nil)
	m.hdr = m.hdr[:requestHeaderLen]
	request{typ: cmdDisc}.encode(m.hdr)
	m.iov = append(m.iov, m.hdr)
	c.send.send(m)
	c.fail(device.ErrClosed)
	return nil
}

// startTLS asks for TLS and upgrades the connection (x509 with cfg, or a
// pre-shared key with psk); a refusal is an error.
func (c *Client) startTLS(cfg *tls.Config, psk *tlspsk.Config) error {
	if err := c.sendOption(optStartTLS, nil); err != nil {
		return err
	}
	r, err := c.readOptReply(optStartTLS)
	if err != nil {
		return err
	}
	if r.typ != repAck {
		return fmt.Errorf("server refused TLS: %w", optReplyError(optStartTLS, r))
	}
	if c.br.Buffered() > 0 {
		return errors.New("server sent data after accepting STARTTLS")
	}
	if psk != nil {
		pc := tlspsk.Client(c.nc, psk)
		if err := pc.Handshake(); err != nil {
			return pskError(psk.Identity, err)
		}
		c.nc = pc
	} else {
		tc := tls.Client(c.nc, cfg)
		if err := tc.Handshake(); err != nil {
			return fmt.Errorf("TLS handshake: %w", err)
		}
		c.nc = tc
	}
	c.br = bufio.NewReaderSize(c.nc, 128<<10)
	c.info.TLS = true
	return nil
}

// pskError says what a failed TLS-PSK handshake as identity means.
func pskError(identity string, err error) error {
	var ae *tlspsk.AlertError
	hint := ""
	if errors.As(err, &ae) && ae.Received {
		switch ae.Alert {
		case alertUnknownPSKIdentity:
			hint = fmt.Sprintf(": the server does not know the identity %q", identity)
		case alertDecryptError:
			hint = fmt.Sprintf(": the server has another key for the identity %q (wrong key)", identity)
		}
	} else if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		// GnuTLS servers (nbdkit) close without an alert.
		hint = " (the server hung up during the handshake: a wrong key, an unknown identity, or no pre-shared keys on the server)"
	}
	return fmt.Errorf("TLS-PSK handshake as %q: %w%s", identity, err, hint)
}

// TLS alerts that explain a refused TLS-PSK handshake.
const (
	alertUnknownPSKIdentity = 115
	alertDecryptError       = 51
)

// tlsAlert returns the TLS alert that explains err, a failure to write or
// read after the TLS handshake: with TLS 1.3 a server that refuses our
// certificate says so only after our handshake has finished.
func (c *Client) tlsAlert(err error) error {
	isAlert := func(err error) bool {
		var ae tls.AlertError
		var pe *tlspsk.AlertError
		return errors.As(err, &ae) || errors.As(err, &pe)
	}
	if isAlert(err) {
		return err
	}
	c.nc.SetReadDeadline(time.Now().Add(time.Second))
	if _, rerr := c.br.Peek(1); rerr != nil && isAlert(rerr) {
		return fmt.Errorf("TLS: %w", rerr)
	}
	return err
}
