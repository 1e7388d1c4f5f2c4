package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hacs/hacs/internal/connlimit"
	"github.com/hacs/hacs/internal/device"
	"github.com/hacs/hacs/internal/tlspsk"
)

// Export is one named device a Server offers.
type Export struct {
	Name        string
	Description string
	Device      device.Device
	// ReadOnly exports refuse writes even when the device accepts them.
	ReadOnly bool
	// Release, if set, is called once when the connection that opened a
	// resolved export ends (see Server.Resolve).
	Release func()
	// TLS is the export's policy: TLSRequired refuses plaintext clients
	// (NBD_REP_ERR_TLS_REQD to INFO and GO, a disconnect for EXPORT_NAME)
	// even on a server that allows plaintext.
	TLS TLSPolicy
	// ClientAuth admits only clients that authenticated in the TLS
	// handshake: with a client certificate that the server's TLSConfig
	// verified (it must verify presented certificates: ClientAuth
	// VerifyClientCertIfGiven or stricter, or VerifyPeerCertificate), or
	// with a pre-shared key. It implies TLS required; others get
	// NBD_REP_ERR_TLS_REQD in plaintext and NBD_REP_ERR_POLICY over TLS.
	ClientAuth bool
	// Authorize, if set, decides whether an authenticated client may open
	// the export (per-export grants): it is given who the client proved
	// to be (the zero Peer for a client that did not authenticate) and
	// returns why not. The client gets NBD_REP_ERR_POLICY with that text
	// (a disconnect for EXPORT_NAME), the export is left out of its
	// NBD_OPT_LIST, and the server keeps serving everyone else.
	// SetExportAuthorize replaces it while the export is served.
	Authorize func(Peer) error

	removed bool // by RemoveExport (guarded by the server's mu)
}

// Server serves NBD exports on any number of listeners. It is safe for
// concurrent use; exports can be added and removed while it runs.
type Server struct {
	// Logger receives connection and protocol events (default: slog.Default).
	Logger *slog.Logger
	// Limits bound the connections that have not negotiated yet (and the
	// connections per export): HandshakeTimeout, MaxNegotiating, ...
	Limits
	// MaxInflightBytes bounds the payload memory one connection may hold in
	// requests being served (default 64 MiB; at least MaxPayload).
	MaxInflightBytes int64
	// Workers is how many requests of one connection are served at once
	// (default DefaultWorkers).
	Workers int
	// Resolve, if set, is asked for export names that were not added with
	// AddExport. Each successful call opens the export for one connection
	// (or one NBD_OPT_INFO); its Release is called when that ends. Its
	// error message is sent to the client.
	Resolve func(name string) (*Export, error)
	// TLSConfig enables NBD_OPT_STARTTLS (x509 certificates; set ClientAuth
	// and ClientCAs to verify clients). Set it before serving.
	TLSConfig *tls.Config
	// PSKKeys enables NBD_OPT_STARTTLS with TLS 1.3 pre-shared keys: the
	// identities clients may use and their keys (the psktool file that
	// nbdkit --tls-psk reads; see internal/tlspsk). With TLSConfig as well,
	// each client gets what its ClientHello asks for: a PSK handshake when
	// it offers a pre-shared key, certificates otherwise.
	PSKKeys tlspsk.Keys
	// TLSPolicy is the server-wide TLS mode (see TLSPolicy).
	TLSPolicy TLSPolicy
	// ReinstateTimeout bounds how long NBD_OPT_GO of a client that names
	// its session (session reinstatement, see Session) waits for the
	// requests of the session's older connections to end; beyond it the
	// GO is refused and the client tries again (default
	// DefaultReinstateTimeout).
	ReinstateTimeout time.Duration

	mu        sync.Mutex
	exports   map[string]*Export
	def       string // export served for the empty name
	listeners map[net.Listener]struct{}
	conns     map[*serverConn]struct{}
	neg       connlimit.Counter            // connections in negotiation
	pskLive   atomic.Pointer[tlspsk.Keys]  // the keys of SetPSKKeys
	perExport map[string]int               // connections serving each export
	sessions  map[sessionKey]*sessionState // session reinstatement (session.go)
	refused   connlimit.RateLog            // refusals for a limit
	cut       connlimit.RateLog            // connections cut at the negotiation deadline
	closed    bool
	wg        sync.WaitGroup
}

// NewServer returns a server with no exports.
func NewServer(logger *slog.Logger) *Server {
	if logger == nil {
		logger = slog.Default()
	}
	return &Server{
		Logger:    logger,
		exports:   make(map[string]*Export),
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*serverConn]struct{}),
		perExport: make(map[string]int),
		sessions:  make(map[sessionKey]*sessionState),
	}
}

// AddExport offers e. The first export added is also the default one,
// answered for the empty name.
func (s *Server) AddExport(e Export) error {
	if e.Device == nil {
		return errors.New("nbd: export has no device")
	}
	if len(e.Name) > maxNameLen {
		return fmt.Errorf("nbd: export name longer than %d bytes", maxNameLen)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.exports[e.Name]; dup {
		return fmt.Errorf("nbd: export %q already exists", e.Name)
	}
	s.exports[e.Name] = &e
	if len(s.exports) == 1 {
		s.def = e.Name
	}
	return nil
}

// RemoveExport stops offering an export and disconnects its clients. It
// returns once no request on it is being served any more, with the time its
// clients were cut off: no request was taken, and no reply could reach a
// client, after it (the wait for the requests in flight comes after).
func (s *Server) RemoveExport(name string) time.Time {
	cut, victims := s.cutExport(name)
	for _, c := range victims {
		<-c.done
	}
	return cut
}

// CutExport is RemoveExport without the wait for the requests in flight:
// it returns as soon as the export's clients are cut off (their requests
// still in the device end on their own; no reply reaches a client).
func (s *Server) CutExport(name string) time.Time {
	cut, _ := s.cutExport(name)
	return cut
}

// ExportNames lists the exports offered now.
func (s *Server) ExportNames() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.exports))
	for n := range s.exports {
		names = append(names, n)
	}
	return names
}

func (s *Server) cutExport(name string) (time.Time, []*serverConn) {
	s.mu.Lock()
	e := s.exports[name]
	if e != nil {
		e.removed = true // a client still negotiating cannot select it
	}
	delete(s.exports, name)
	if s.def == name {
		s.def = ""
	}
	var victims []*serverConn
	for c := range s.conns {
		if c.export == e && e != nil {
			c.stopped.Store(true) // a request read but not started is dropped
			victims = append(victims, c)
		}
	}
	s.mu.Unlock()
	// Close every connection first, then (RemoveExport) wait for them all:
	// one with a request stuck in the device must not keep the others
	// serving.
	for _, c := range victims {
		c.nc.Close()
	}
	return time.Now(), victims
}

// CutPeers closes at once every connection whose client authenticated
// with a TLS certificate for which match returns true (a revoked one), in
// negotiation or in transmission, and returns how many it closed; each is
// logged with reason. Requests in flight end on their own; no reply
// reaches the client.
func (s *Server) CutPeers(match func(*x509.Certificate) bool, reason string) int {
	type victim struct {
		c      *serverConn
		peer   *x509.Certificate
		export string
	}
	s.mu.Lock()
	var victims []victim
	for c := range s.conns {
		if c.peer != nil && match(c.peer) {
			c.stopped.Store(true) // a request read but not started is dropped
			v := victim{c: c, peer: c.peer}
			if c.export != nil {
				v.export = c.export.Name
			}
			victims = append(victims, v)
		}
	}
	s.mu.Unlock()
	for _, v := range victims {
		v.c.nc.Close()
		v.c.log.Warn("nbd connection cut: "+reason, "peer", v.peer.Subject.CommonName, "serial", fmt.Sprintf("%x", v.peer.SerialNumber), "export", v.export)
	}
	return len(victims)
}

func (s *Server) lookup(name string) *Export {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.exports[name]; ok {
		return e
	}
	if name == "" && s.def != "" {
		return s.exports[s.def]
	}
	return nil
}

// open finds a static export or resolves a dynamic one.
func (s *Server) open(name string) (*Export, error) {
	if e := s.lookup(name); e != nil {
		return e, nil
	}
	if s.Resolve == nil {
		return nil, fmt.Errorf("no export named %q", name)
	}
	e, err := s.Resolve(name)
	if err != nil {
		return nil, err
	}
	if e == nil || e.Device == nil {
		return nil, fmt.Errorf("no export named %q", name)
	}
	return e, nil
}

func (e *Export) release() {
	if e != nil && e.Release != nil {
		e.Release()
	}
}

func (s *Server) exportList() []*Export {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Export, 0, len(s.exports))
	for _, e := range s.exports {
		out = append(out, e)
	}
	return out
}

// Serve accepts connections on ln until ln is closed or the server is.
func (s *Server) Serve(ln net.Listener) error {
	if err := s.checkTLS(); err != nil {
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return net.ErrClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// Out of file descriptors and the like: back off, keep serving.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.Logger.Warn("nbd accept failed", "err", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		s.ServeConn(nc)
	}
}

// tlsMode is the server-wide TLS mode: TLSOff, TLSAllowed or TLSRequired.
func (s *Server) tlsMode() TLSPolicy {
	switch {
	case !s.tlsConfigured() || s.TLSPolicy == TLSOff:
		return TLSOff
	case s.TLSPolicy == TLSRequired:
		return TLSRequired
	}
	return TLSAllowed
}

// tlsConfigured reports whether the server has certificates or
// pre-shared keys to offer TLS with.
func (s *Server) tlsConfigured() bool { return s.TLSConfig != nil || len(s.pskKeys()) > 0 }

func (s *Server) checkTLS() error {
	if !s.tlsConfigured() && (s.TLSPolicy == TLSAllowed || s.TLSPolicy == TLSRequired) {
		return fmt.Errorf("nbd: TLS policy %s needs a TLS configuration (a certificate or pre-shared keys)", s.TLSPolicy)
	}
	return nil
}

// ServeConn serves one client connection in the background. A connection
// beyond the limits on connections in negotiation (see Limits) is closed at
// once.
func (s *Server) ServeConn(nc net.Conn) {
	if err := s.checkTLS(); err != nil {
		s.Logger.Error("nbd connection refused", "remote", nc.RemoteAddr().String(), "err", err)
		nc.Close()
		return
	}
	ip := connlimit.SourceIP(nc)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		nc.Close()
		return
	}
	ok, why := s.admitNegotiation(ip)
	if !ok {
		s.mu.Unlock()
		connlimit.Refuse(nc)
		s.refused.Warn(s.Logger, "nbd connection refused: too many connections in negotiation", "remote", nc.RemoteAddr().String(), "reason", why)
		return
	}
	c := &serverConn{srv: s, nc: nc, rw: nc, ip: ip, negotiating: true, done: make(chan struct{}), superseded: make(chan struct{}), log: s.Logger.With("remote", nc.RemoteAddr().String())}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		defer close(c.done)
		c.serve()
		s.endNegotiation(c)
		s.mu.Lock()
		delete(s.conns, c)
		s.leaveSessionLocked(c)
		if c.counted != "" {
			if s.perExport[c.counted]--; s.perExport[c.counted] <= 0 {
				delete(s.perExport, c.counted)
			}
		}
		s.mu.Unlock()
	}()
}

// Close stops all listeners, disconnects every client and waits until their
// requests have finished.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
	for c := range s.conns {
		c.nc.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// Shutdown stops accepting and waits for clients to disconnect by
// themselves until ctx ends, then closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.Close()
		return ctx.Err()
	}
}

// serverConn is one client connection.
type serverConn struct {
	srv *Server
	nc  net.Conn // the client's connection (closed to end it)
	ip  string   // its source IP address ("": not IP)
	// negotiating: the connection holds a negotiation slot; counted: the
	// export name it is counted for in perExport (guarded by the
	// server's mu)
	negotiating bool
	counted     string
	rw          net.Conn // what the protocol runs on: nc, or TLS over it
	tls         bool     // STARTTLS done
	log         *slog.Logger
	// peer is the client's verified TLS certificate (nil: none yet), psk
	// the pre-shared key identity it used (""); guarded by the server's mu
	peer   *x509.Certificate
	psk    string
	pskKey []byte // the key psk authenticated with
	done   chan struct{}

	// session reinstatement: the session the client named (nil: none);
	// sessKey and inSession its place in the server's sessions, cut and
	// superseded (closed) once a newer generation replaced it (guarded
	// by the server's mu); stopped: start no request any more (the
	// connection was cut)
	session    *Session
	sessKey    sessionKey
	inSession  bool
	cut        bool
	superseded chan struct{}
	stopped    atomic.Bool

	// negotiated state
	export     *Export
	structured bool
	noZeroes   bool
	metaExport string // export name the meta context was set for
	metaSet    bool   // base:allocation selected (context id 1)
	flags      uint16 // transmission flags

	br   *bufio.Reader
	send sender

	// the read side, taken by one worker at a time
	readMu   sync.Mutex
	readDone bool

	// in-flight accounting
	inflightMu   sync.Mutex
	inflightCond *sync.Cond
	inflight     int64
}

func (c *serverConn) serve() {
	defer c.nc.Close()
	if tc, ok := c.nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	// A small buffer until the client negotiated: an idle connection
	// costs little.
	c.br = bufio.NewReaderSize(c.nc, negotiationBufSize)
	// One deadline for the whole negotiation, TLS handshake included: a
	// client dribbling bytes does not extend it.
	c.nc.SetDeadline(time.Now().Add(c.srv.handshakeTimeout()))
	ok, err := c.handshake()
	c.srv.endNegotiation(c)
	if !ok && c.export != nil {
		c.export.release()
	}
	if err != nil {
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			c.srv.cut.Warn(c.log, "nbd connection cut: negotiation not done within the handshake timeout", "timeout", c.srv.handshakeTimeout().String(), "err", err, "tls", c.tls)
		case !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && err != errTLSHandshakeLogged && err != errTLSRequiredHangup:
			c.log.Warn("nbd handshake ended", "err", err, "tls", c.tls)
		}
		return
	}
	if !ok {
		return
	}
	c.nc.SetDeadline(time.Time{})
	c.growReader()
	c.send.w = c.rw
	if c.tls {
		// Gather each batch into few TLS records (one Write is one record
		// or more).
		c.send.bw = bufio.NewWriterSize(c.rw, 64<<10)
	}
	c.log.Debug("nbd transmission started", "export", c.export.Name, "structured", c.structured, "tls", c.tls)
	err = c.transmit()
	c.export.release()
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		c.log.Warn("nbd connection ended", "export", c.export.Name, "err", err)
	}
}

// ---- handshake ----

type optError struct {
	rep uint32
	msg string
}

func (e *optError) Error() string { return e.msg }

func optErr(rep uint32, format string, args ...any) *optError {
	return &optError{rep: rep, msg: fmt.Sprintf(format, args...)}
}

// handshake runs fixed-newstyle negotiation. It returns true when the
// transmission phase should start.
func (c *serverConn) handshake() (bool, error) {
	var hello [18]byte
	binary.BigEndian.PutUint64(hello[0:], magicNBD)
	binary.BigEndian.PutUint64(hello[8:], magicOpt)
	binary.BigEndian.PutUint16(hello[16:], flagFixedNewstyle|flagNoZeroes)
	if _, err := c.rw.Write(hello[:]); err != nil {
		return false, err
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.br, cf[:]); err != nil {
		return false, fmt.Errorf("reading client flags: %w", err)
	}
	clientFlags := binary.BigEndian.Uint32(cf[:])
	if clientFlags&^(clientFixedNewstyle|clientNoZeroes) != 0 {
		return false, fmt.Errorf("client sent unknown flags %#x", clientFlags)
	}
	c.noZeroes = clientFlags&clientNoZeroes != 0
	var hdr [16]byte
	for {
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			return false, err
		}
		if m := binary.BigEndian.Uint64(hdr[0:]); m != magicOpt {
			return false, fmt.Errorf("bad option magic %#x", m)
		}
		opt := binary.BigEndian.Uint32(hdr[8:])
		length := binary.BigEndian.Uint32(hdr[12:])
		if length > maxOptionLen {
			if opt == optExportName || length > 16<<20 {
				return false, fmt.Errorf("%s: option data of %d bytes is too large", optName(opt), length)
			}
			if _, err := io.CopyN(io.Discard, c.br, int64(length)); err != nil {
				return false, err
			}
			if err := c.optReply(opt, repErrTooBig, []byte(fmt.Sprintf("option data too large (%d bytes)", length))); err != nil {
				return false, err
			}
			continue
		}
		data := make([]byte, length)
		if _, err := io.ReadFull(c.br, data); err != nil {
			return false, fmt.Errorf("reading %s data: %w", optName(opt), err)
		}
		done, err := c.option(opt, data)
		var oe *optError
		if errors.As(err, &oe) {
			c.log.Debug("nbd option refused", "option", optName(opt), "reason", oe.msg)
			if err := c.optReply(opt, oe.rep, []byte(oe.msg)); err != nil {
				return false, err
			}
			continue
		}
		if err != nil || done {
			return done, err
		}
	}
}

// option handles one option. done means the transmission phase starts (or,
// with a nil export, that the client aborted).
func (c *serverConn) option(opt uint32, data []byte) (done bool, err error) {
	if !c.tls && c.srv.tlsMode() == TLSRequired && opt != optStartTLS && opt != optAbort {
		if opt == optExportName {
			// This option cannot be refused with an error: hang up.
			c.log.Warn("nbd client disconnected: it asked for an export without TLS, which this server requires", "export", string(data))
			return false, errTLSRequiredHangup
		}
		c.log.Info("nbd option refused: TLS required", "option", optName(opt))
		return false, optErr(repErrTLSReqd, "TLS is required by this server: negotiate NBD_OPT_STARTTLS first")
	}
	switch opt {
	case optExportName:
		e, err := c.srv.open(string(data))
		if err != nil {
			return false, fmt.Errorf("EXPORT_NAME: %w", err)
		}
		if err := c.exportTLSCheck(e); err != nil {
			e.release()
			c.log.Warn("nbd client disconnected: it asked with NBD_OPT_EXPORT_NAME for an export it may not open", "export", e.Name, "reason", err.Error())
			return false, errTLSRequiredHangup
		}
		if err := c.reinstate(e.Name); err != nil {
			e.release()
			return false, errors.New("EXPORT_NAME: " + err.Error()) // a hang-up: no *optError
		}
		if err := c.selectExport(e); err != nil {
			e.release()
			return false, err
		}
		out := make([]byte, 10, 134)
		binary.BigEndian.PutUint64(out[0:], uint64(e.Device.Size()))
		binary.BigEndian.PutUint16(out[8:], c.flags)
		if !c.noZeroes {
			out = out[:134]
		}
		_, err = c.rw.Write(out)
		return err == nil, err
	case optAbort:
		c.optReply(opt, repAck, nil)
		return false, io.EOF
	case optList:
		if len(data) != 0 {
			return false, optErr(repErrInvalid, "LIST takes no data")
		}
		for _, e := range c.srv.exportList() {
			if c.exportTLSCheck(e) != nil {
				continue // TLS-only exports are listed only over TLS
			}
			b := make([]byte, 4, 4+len(e.Name)+len(e.Description))
			binary.BigEndian.PutUint32(b, uint32(len(e.Name)))
			b = append(append(b, e.Name...), e.Description...)
			if err := c.optReply(opt, repServer, b); err != nil {
				return false, err
			}
		}
		return false, c.optReply(opt, repAck, nil)
	case optStartTLS:
		if len(data) != 0 {
			return false, optErr(repErrInvalid, "STARTTLS takes no data")
		}
		if c.tls {
			return false, optErr(repErrInvalid, "TLS is already negotiated")
		}
		if c.srv.tlsMode() == TLSOff {
			return false, optErr(repErrPolicy, "TLS is not enabled on this server")
		}
		return false, c.startTLS()
	case optInfo, optGo:
		return c.optInfoGo(opt, data)
	case optStructuredReply:
		if len(data) != 0 {
			return false, optErr(repErrInvalid, "STRUCTURED_REPLY takes no data")
		}
		if c.structured {
			return false, optErr(repErrInvalid, "structured replies already negotiated")
		}
		c.structured = true
		return false, c.optReply(opt, repAck, nil)
	case optListMetaContext, optSetMetaContext:
		return false, c.optMetaContext(opt, data)
	case optSession:
		sess, err := parseSession(data)
		if err != nil {
			return false, err
		}
		c.session = &sess
		return false, c.optReply(opt, repAck, nil)
	}
	return false, optErr(repErrUnsup, "%s is not supported", optName(opt))
}

func (c *serverConn) optReply(opt, typ uint32, data []byte) error {
	b := make([]byte, 20+len(data))
	binary.BigEndian.PutUint64(b[0:], magicOptReply)
	binary.BigEndian.PutUint32(b[8:], opt)
	binary.BigEndian.PutUint32(b[12:], typ)
	binary.BigEndian.PutUint32(b[16:], uint32(len(data)))
	copy(b[20:], data)
	_, err := c.rw.Write(b)
	return err
}

// parseName reads a 32-bit length-prefixed string from data.
func parseName(data []byte) (string, []byte, error) {
	if len(data) < 4 {
		return "", nil, optErr(repErrInvalid, "option data truncated before name length")
	}
	n := binary.BigEndian.Uint32(data)
	data = data[4:]
	if uint64(n) > uint64(len(data)) {
		return "", nil, optErr(repErrInvalid, "name length %d exceeds option data", n)
	}
	if n > maxNameLen {
		return "", nil, optErr(repErrTooBig, "name longer than %d bytes", maxNameLen)
	}
	return string(data[:n]), data[n:], nil
}

func (c *serverConn) optInfoGo(opt uint32, data []byte) (bool, error) {
	name, rest, err := parseName(data)
	if err != nil {
		return false, err
	}
	if len(rest) < 2 {
		return false, optErr(repErrInvalid, "%s: truncated information request count", optName(opt))
	}
	nreq := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*nreq {
		return false, optErr(repErrInvalid, "%s: %d information requests need %d bytes, got %d", optName(opt), nreq, 2*nreq, len(rest))
	}
	e, err := c.srv.open(name)
	if err != nil {
		return false, optErr(repErrUnknown, "%v", err)
	}
	if err := c.exportTLSCheck(e); err != nil {
		e.release()
		c.log.Warn("nbd option refused", "option", optName(opt), "export", e.Name, "tls", c.tls, "reason", err.Error())
		return false, err
	}
	if opt == optInfo {
		defer e.release()
	} else {
		// GO: the session's older connections end first (session
		// reinstatement), then the connection takes its place among the
		// export's, before the answers that let the client start
		if err := c.reinstate(e.Name); err != nil {
			e.release()
			return false, err
		}
		c.srv.mu.Lock()
		full := c.reserveExportLocked(e.Name)
		c.srv.mu.Unlock()
		if full != nil {
			e.release()
			c.srv.refused.Warn(c.log, "nbd option refused: "+full.msg, "option", optName(opt), "export", e.Name)
			return false, full
		}
	}
	wantName, wantDesc := false, false
	for i := 0; i < nreq; i++ {
		switch binary.BigEndian.Uint16(rest[2*i:]) {
		case infoName:
			wantName = true
		case infoDescription:
			wantDesc = true
		}
	}
	flags := c.transmissionFlags(e)
	info := make([]byte, 12)
	binary.BigEndian.PutUint16(info[0:], infoExport)
	binary.BigEndian.PutUint64(info[2:], uint64(e.Device.Size()))
	binary.BigEndian.PutUint16(info[10:], flags)
	if err := c.optReply(opt, repInfo, info); err != nil {
		return false, err
	}
	if wantName {
		b := binary.BigEndian.AppendUint16(nil, infoName)
		if err := c.optReply(opt, repInfo, append(b, e.Name...)); err != nil {
			return false, err
		}
	}
	if wantDesc && e.Description != "" {
		b := binary.BigEndian.AppendUint16(nil, infoDescription)
		if err := c.optReply(opt, repInfo, append(b, e.Description...)); err != nil {
			return false, err
		}
	}
	bs := make([]byte, 14)
	binary.BigEndian.PutUint16(bs[0:], infoBlockSize)
	binary.BigEndian.PutUint32(bs[2:], 1)
	binary.BigEndian.PutUint32(bs[6:], device.BlockSize)
	binary.BigEndian.PutUint32(bs[10:], MaxPayload)
	if err := c.optReply(opt, repInfo, bs); err != nil {
		return false, err
	}
	if err := c.optReply(opt, repAck, nil); err != nil {
		return false, err
	}
	if opt == optInfo {
		return false, nil
	}
	if c.metaSet && c.metaExport != name {
		c.metaSet = false // contexts were chosen for another export
	}
	if err := c.selectExport(e); err != nil {
		e.release()
		return false, err
	}
	return true, nil
}

// selectExport starts serving e on this connection, unless RemoveExport
// removed it since the client looked it up, or its Authorize no longer
// admits the client (the connection then ends): a connection either is
// among those RemoveExport (SetExportAuthorize) cuts off or never serves
// the export.
func (c *serverConn) selectExport(e *Export) error {
	p := c.identity()
	c.srv.mu.Lock() // RemoveExport and SetExportAuthorize read c.export
	if e.removed {
		c.srv.mu.Unlock()
		return fmt.Errorf("export %q was removed while the client negotiated", e.Name)
	}
	if e.Authorize != nil {
		// SetExportAuthorize may have changed it since the check: with
		// the lock held, the connection either is among those it cuts
		// or passes the new check
		if err := e.Authorize(p); err != nil {
			c.srv.mu.Unlock()
			return fmt.Errorf("export %q: %w (changed while the client negotiated)", e.Name, err)
		}
	}
	if err := c.reserveExportLocked(e.Name); err != nil {
		c.srv.mu.Unlock()
		c.srv.refused.Warn(c.log, "nbd connection refused: "+err.msg, "export", e.Name)
		return errors.New(err.msg) // EXPORT_NAME: a hang-up
	}
	c.export = e
	c.srv.mu.Unlock()
	c.flags = c.transmissionFlags(e)
	return nil
}

// transmissionFlags advertises exactly what the export's device supports.
func (c *serverConn) transmissionFlags(e *Export) uint16 {
	caps := e.Device.Capabilities()
	f := FlagHasFlags | FlagSendCache
	if caps.ReadOnly || e.ReadOnly {
		f |= FlagReadOnly
	} else {
		f |= FlagSendTrim | FlagSendWriteZeroes | FlagSendFastZero
	}
	if caps.Flush {
		f |= FlagSendFlush
	}
	if caps.FUA {
		f |= FlagSendFUA
	}
	if c.structured {
		f |= FlagSendDF
	}
	if caps.MultiConn {
		f |= FlagCanMultiConn
	}
	return f
}

func (c *serverConn) optMetaContext(opt uint32, data []byte) error {
	if !c.structured {
		return optErr(repErrInvalid, "%s needs structured replies first", optName(opt))
	}
	name, rest, err := parseName(data)
	if err != nil {
		return err
	}
	if len(rest) < 4 {
		return optErr(repErrInvalid, "%s: truncated query count", optName(opt))
	}
	nq := binary.BigEndian.Uint32(rest)
	rest = rest[4:]
	var queries []string
	for i := uint32(0); i < nq; i++ {
		q, r, err := parseName(rest)
		if err != nil {
			return err
		}
		queries = append(queries, q)
		rest = r
	}
	if len(rest) != 0 {
		return optErr(repErrInvalid, "%s: %d bytes of trailing data", optName(opt), len(rest))
	}
	if opt == optSetMetaContext {
		c.metaSet = false // replaced even on failure
	}
	if e := c.srv.lookup(name); e == nil && c.srv.Resolve == nil {
		return optErr(repErrUnknown, "no export named %q", name)
	} else if err := c.exportTLSCheck(e); err != nil {
		return err
	}
	match := false
	if len(queries) == 0 {
		match = opt == optListMetaContext
	}
	for _, q := range queries {
		if q == MetaBaseAllocation || (opt == optListMetaContext && q == "base:") {
			match = true
		}
	}
	if match {
		var id uint32
		if opt == optSetMetaContext {
			id = 1
			c.metaSet, c.metaExport = true, name
		}
		b := binary.BigEndian.AppendUint32(nil, id)
		if err := c.optReply(opt, repMetaContext, append(b, MetaBaseAllocation...)); err != nil {
			return err
		}
	}
	return c.optReply(opt, repAck, nil)
}

// errTLSRequiredHangup ends a connection that asked for a TLS-only export
// with NBD_OPT_EXPORT_NAME, which cannot be answered with an error.
var errTLSRequiredHangup = errors.New("TLS required: client disconnected")

// exportTLSCheck refuses a plaintext connection to an export that requires
// TLS, and an unauthenticated one to an export that needs ClientAuth. e may
// be nil.
func (c *serverConn) exportTLSCheck(e *Export) error {
	if e == nil {
		return nil
	}
	policy, clientAuth, authorize := c.srv.access(e)
	if c.tls {
		if clientAuth && !c.authenticated() {
			return optErr(repErrPolicy, "export %q admits only authenticated clients: this TLS connection presented no client certificate (nor a pre-shared key)", e.Name)
		}
		return c.authorize(e.Name, authorize)
	}
	if policy != TLSRequired && !clientAuth {
		return c.authorize(e.Name, authorize)
	}
	if c.srv.tlsMode() == TLSOff {
		// NOTLS mode must not answer NBD_REP_ERR_TLS_REQD.
		return optErr(repErrPolicy, "export %q requires TLS, which this server does not offer", e.Name)
	}
	return optErr(repErrTLSReqd, "export %q requires TLS: negotiate NBD_OPT_STARTTLS first", e.Name)
}

// authorize asks an export's Authorize (if any) about this client.
func (c *serverConn) authorize(export string, authorize func(Peer) error) error {
	if authorize == nil {
		return nil
	}
	p := c.identity()
	if err := authorize(p); err != nil {
		return optErr(repErrPolicy, "%v", err)
	}
	return nil
}

// identity is who the client proved to be (the zero Peer if it did not).
func (c *serverConn) identity() Peer {
	if !c.authenticated() {
		return Peer{}
	}
	c.srv.mu.Lock()
	defer c.srv.mu.Unlock()
	return Peer{Cert: c.peer, PSKIdentity: c.psk}
}

// authenticated reports whether the client proved who it is in the TLS
// handshake: a client certificate that the server's TLSConfig verified, or
// a pre-shared key (a connection that names its PSK identity).
func (c *serverConn) authenticated() bool {
	switch tc := c.rw.(type) {
	case *tls.Conn:
		cfg := c.srv.TLSConfig
		verifies := cfg != nil && (cfg.ClientAuth >= tls.VerifyClientCertIfGiven || cfg.VerifyPeerCertificate != nil || cfg.VerifyConnection != nil)
		return verifies && len(tc.ConnectionState().PeerCertificates) > 0
	case interface{ Identity() string }: // TLS-PSK
		return tc.Identity() != ""
	}
	return false
}

// startTLS acknowledges NBD_OPT_STARTTLS and runs the TLS handshake. Option
// haggling then starts afresh inside TLS: what was negotiated in plaintext
// is forgotten.
//
// The client's first flight decides the kind of TLS: a ClientHello that
// offers a pre-shared key gets a TLS-PSK handshake (internal/tlspsk) when
// the server has PSKKeys; any other gets crypto/tls with the certificate of
// TLSConfig, the bytes already read replayed to it.
func (c *serverConn) startTLS() error {
	if c.br.Buffered() > 0 {
		// The client must wait for our answer before its TLS hello.
		return fmt.Errorf("client sent %d bytes after STARTTLS before its answer", c.br.Buffered())
	}
	if err := c.optReply(optStartTLS, repAck, nil); err != nil {
		return err
	}
	srv := c.srv
	keys := srv.pskKeys() // this handshake's (SetPSKKeys may replace them)
	if len(keys) == 0 {
		return c.startX509(c.nc)
	}
	raw, hello, err := tlspsk.Sniff(c.nc)
	if err != nil {
		if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, os.ErrDeadlineExceeded) {
			c.nc.Write(tlsAlertRecord(alertDecodeError))
		}
		return c.tlsFailed(fmt.Errorf("reading the client's TLS hello: %w", err))
	}
	if !usePSK(hello, keys, srv.TLSConfig != nil) {
		if srv.TLSConfig == nil {
			reason, alert := "the client offers no pre-shared key, and this server has only pre-shared keys (no certificate)", byte(alertHandshakeFailure)
			if !hello.TLS13 {
				reason, alert = "the client does not offer TLS 1.3, which pre-shared keys need (this server has no certificate)", alertProtocolVersion
			}
			c.log.Warn("nbd TLS handshake failed", "err", reason)
			c.nc.Write(tlsAlertRecord(alert))
			c.lingeringClose()
			return errTLSHandshakeLogged
		}
		return c.startX509(&replayConn{Conn: c.nc, pre: raw})
	}
	pc := tlspsk.Server(c.nc, raw, &tlspsk.Config{Keys: keys})
	if err := pc.Handshake(); err != nil {
		return c.tlsFailed(err, "psk_identity", strings.Join(hello.Identities, ","))
	}
	c.log = c.log.With("peer", "psk:"+pc.Identity())
	key, _ := keys.Lookup(pc.Identity())
	c.srv.mu.Lock()
	if !c.srv.pskCurrentLocked(pc.Identity(), key) {
		// the key file was re-read during the handshake
		c.srv.mu.Unlock()
		c.log.Warn("nbd connection cut: its pre-shared key was removed or changed during the handshake")
		return errTLSHandshakeLogged
	}
	c.psk, c.pskKey = pc.Identity(), key
	c.srv.mu.Unlock()
	c.log.Info("nbd TLS established", "version", "TLS 1.3", "cipher", pc.CipherSuite(), "psk_identity", pc.Identity())
	c.upgraded(pc)
	return nil
}

// tlsFailed ends a failed TLS handshake: logged, then closed lingering so
// that the client reads the alert. One cut by the negotiation deadline
// ends at once (serve logs it).
func (c *serverConn) tlsFailed(err error, args ...any) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	c.log.Warn("nbd TLS handshake failed", append([]any{"err", err}, args...)...)
	c.lingeringClose()
	return errTLSHandshakeLogged
}

// startX509 runs a crypto/tls server handshake on nc.
func (c *serverConn) startX509(nc net.Conn) error {
	tc := tls.Server(nc, c.srv.TLSConfig)
	if err := tc.Handshake(); err != nil {
		return c.tlsFailed(err)
	}
	st := tc.ConnectionState()
	peer := ""
	if len(st.PeerCertificates) > 0 {
		peer = st.PeerCertificates[0].Subject.String()
		c.srv.mu.Lock()
		c.peer = st.PeerCertificates[0]
		c.srv.mu.Unlock()
	}
	c.log.Debug("nbd TLS established", "version", tls.VersionName(st.Version), "cipher", tls.CipherSuiteName(st.CipherSuite), "peer", peer)
	c.upgraded(tc)
	return nil
}

// upgraded makes the protocol run over tc from now on.
func (c *serverConn) upgraded(tc net.Conn) {
	c.rw, c.tls = tc, true
	c.br = bufio.NewReaderSize(tc, negotiationBufSize)
	c.structured, c.metaSet, c.metaExport = false, false, ""
	c.session = nil
}

// usePSK decides whether a ClientHello gets a TLS-PSK handshake. A client
// that offers a pre-shared key does, unless the server has certificates too
// and every identity offered looks like a session ticket (a resuming x509
// client) rather than a user name.
func usePSK(hello tlspsk.ClientHelloInfo, keys tlspsk.Keys, haveX509 bool) bool {
	if !hello.OffersPSK || len(keys) == 0 {
		return false
	}
	if !haveX509 {
		return true
	}
	for _, id := range hello.Identities {
		if _, ok := keys.Lookup(id); ok || !looksLikeTicket(id) {
			return true
		}
	}
	return false
}

// looksLikeTicket: identities longer than psktool's user names, or with
// bytes that are not printable, are resumption tickets.
func looksLikeTicket(id string) bool {
	if len(id) > 128 {
		return true
	}
	for i := 0; i < len(id); i++ {
		if id[i] < 0x20 || id[i] > 0x7e {
			return true
		}
	}
	return false
}

// TLS alerts the server sends itself (when no TLS stack is run).
const (
	alertHandshakeFailure = 40
	alertDecodeError      = 50
	alertProtocolVersion  = 70
)

// tlsAlertRecord is a fatal plaintext alert record.
func tlsAlertRecord(desc byte) []byte {
	return []byte{21, 3, 3, 0, 2, 2, desc}
}

// replayConn returns pre before reading from Conn: the ClientHello that
// tlspsk.Sniff consumed, replayed to crypto/tls.
type replayConn struct {
	net.Conn
	pre []byte
}

func (r *replayConn) Read(p []byte) (int, error) {
	if len(r.pre) > 0 {
		n := copy(p, r.pre)
		r.pre = r.pre[n:]
		return n, nil
	}
	return r.Conn.Read(p)
}

// errTLSHandshakeLogged ends a connection whose TLS handshake failed (the
// failure is already logged).
var errTLSHandshakeLogged = errors.New("TLS handshake failed")

// lingeringClose lets the client read the TLS alert that explains a refusal:
// closing a socket with unread input resets the connection, and the client
// would see only that. It stops sending, then discards what the client
// still sends for a moment.
func (c *serverConn) lingeringClose() {
	cw, ok := c.nc.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		return
	}
	c.nc.SetReadDeadline(time.Now().Add(time.Second))
	io.Copy(io.Discard, io.LimitReader(c.nc, 1<<20))
}
