package nbd

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"time"

	"github.com/hacs/hacs/internal/connlimit"
)

// Defaults of Limits.
const (
	// DefaultHandshakeTimeout bounds a connection's whole negotiation: the
	// TLS handshake and every option, from accept to transmission.
	DefaultHandshakeTimeout = 30 * time.Second
	// DefaultMaxNegotiating is the server-wide default of
	// Limits.MaxNegotiating.
	DefaultMaxNegotiating = 512
	// DefaultMaxNegotiatingPerIP is the default of
	// Limits.MaxNegotiatingPerIP.
	DefaultMaxNegotiatingPerIP = 64
	// negotiationBufSize is the read buffer of a connection that has not
	// negotiated yet; transmission gets transmitBufSize.
	negotiationBufSize = 4 << 10
	transmitBufSize    = 128 << 10
)

// Limits bound what clients that have not finished negotiating (and so
// have not authenticated yet) can hold on a server: a flood of idle or
// slow connections is refused or cut, and the clients already in
// transmission are not affected. The zero value means the defaults.
type Limits struct {
	// HandshakeTimeout bounds the whole negotiation of a connection,
	// from accept to the start of transmission: the TLS handshake and
	// every option read and answered, however slowly the client sends
	// them (default DefaultHandshakeTimeout).
	HandshakeTimeout time.Duration
	// MaxNegotiating bounds how many connections may be in negotiation at
	// once on the server (default DefaultMaxNegotiating; negative: no
	// limit). A connection beyond it is closed at once.
	MaxNegotiating int
	// MaxNegotiatingPerIP bounds how many of them may come from one IP
	// address (default DefaultMaxNegotiatingPerIP; negative: no limit).
	// It does not apply to Unix sockets.
	MaxNegotiatingPerIP int
	// MaxConnsPerExport bounds how many connections may serve one export
	// at once (0: no limit). A client beyond it is refused when it selects
	// the export (NBD_REP_ERR_POLICY to NBD_OPT_GO; a hang-up for
	// NBD_OPT_EXPORT_NAME).
	MaxConnsPerExport int
}

func (l Limits) handshakeTimeout() time.Duration {
	if l.HandshakeTimeout <= 0 {
		return DefaultHandshakeTimeout
	}
	return l.HandshakeTimeout
}

// Validate refuses limits that make no sense.
func (l Limits) Validate() error {
	if l.HandshakeTimeout < 0 {
		return fmt.Errorf("nbd: negative handshake timeout %s", l.HandshakeTimeout)
	}
	if l.MaxConnsPerExport < 0 {
		return fmt.Errorf("nbd: negative limit of connections per export %d", l.MaxConnsPerExport)
	}
	return nil
}

// admitNegotiation takes a negotiation slot for a new connection from ip,
// or says which limit refuses it.
func (s *Server) admitNegotiation(ip string) (ok bool, why string) {
	r := s.neg.Take(ip, connlimit.Bound(s.MaxNegotiating, DefaultMaxNegotiating), connlimit.Bound(s.MaxNegotiatingPerIP, DefaultMaxNegotiatingPerIP))
	switch {
	case r == nil:
		return true, ""
	case r.PerIP:
		return false, fmt.Sprintf("%d connections from %s are in negotiation, the limit per IP address (MaxNegotiatingPerIP)", r.Count, ip)
	}
	return false, fmt.Sprintf("%d connections are in negotiation on this server, the limit (MaxNegotiating)", r.Count)
}

// endNegotiation frees c's negotiation slot (once).
func (s *Server) endNegotiation(c *serverConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !c.negotiating {
		return
	}
	c.negotiating = false
	s.neg.Give(c.ip)
}

// Negotiating reports how many connections are in negotiation now.
func (s *Server) Negotiating() int { return s.neg.Total() }

func (s *Server) handshakeTimeout() time.Duration { return s.Limits.handshakeTimeout() }

// exportFull refuses one more connection to the export named name when it
// has MaxConnsPerExport already. Called with s.mu held.
func (s *Server) exportFull(name string) *optError {
	if s.MaxConnsPerExport > 0 && s.perExport[name] >= s.MaxConnsPerExport {
		return optErr(repErrPolicy, "export %q has %d connections, the limit per export (MaxConnsPerExport)", name, s.perExport[name])
	}
	return nil
}

// reserveExportLocked counts c among the connections of the export named
// name (once), unless MaxConnsPerExport of them are there already. Called
// with s.mu held.
func (c *serverConn) reserveExportLocked(name string) *optError {
	s := c.srv
	if c.counted == name {
		return nil
	}
	if err := s.exportFull(name); err != nil {
		return err
	}
	if s.perExport == nil {
		s.perExport = make(map[string]int)
	}
	if c.counted != "" {
		if s.perExport[c.counted]--; s.perExport[c.counted] <= 0 {
			delete(s.perExport, c.counted)
		}
	}
	s.perExport[name]++
	c.counted = name
	return nil
}

// growReader gives a connection that starts transmission its full read
// buffer, keeping what the client already sent.
func (c *serverConn) growReader() {
	var r io.Reader = c.rw
	if n := c.br.Buffered(); n > 0 {
		pre, _ := c.br.Peek(n)
		r = &replayConn{Conn: c.rw, pre: bytes.Clone(pre)}
	}
	c.br = bufio.NewReaderSize(r, transmitBufSize)
}
