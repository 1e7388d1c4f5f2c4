package nbd

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"time"
)

// Session reinstatement (a hacs extension of the NBD handshake, the way an
// iSCSI target reinstates a session): a client that reconnects after
// leaving a connection (it broke, or stopped answering) names itself with
// a session id and a generation it increases on every connection. Before
// the server starts transmission for a connection of generation G, it cuts
// every other connection of the same session and export with a lower
// generation and waits until their requests have ended: those already in
// the device finish (their effect lands before the new connection's
// requests), those read but not started are dropped, and no reply is sent
// on the cut connections. So nothing the client sent on a connection it
// left can land after what it sends on the new one.
//
// Wire format: the option NBD_OPT_HACS_SESSION (optSession), sent during
// option haggling before NBD_OPT_GO (or NBD_OPT_EXPORT_NAME), after
// NBD_OPT_STARTTLS if any (STARTTLS forgets it, like all negotiated
// state). Data: 16 bytes of session id (not all zero), then the 64-bit
// generation (big endian). The server answers NBD_REP_ACK; the
// reinstatement itself happens at NBD_OPT_GO. A server that does not know
// the option answers NBD_REP_ERR_UNSUP (fixed newstyle requires it): the
// client then has no reinstatement and goes on. NBD_OPT_GO of a connection
// whose generation is older than the newest one the server knows for the
// session on that export (or equal to that of another open connection)
// gets NBD_REP_ERR_POLICY; one whose older connections do not end within
// ReinstateTimeout gets NBD_REP_ERR_POLICY too (the client retries with a
// new generation). The server knows a session while any connection that
// named it on the export is open.

// optSession is NBD_OPT_HACS_SESSION: "HC" like the hacs command
// NBD_CMD_HACS_CHECKSUM, far from the options the NBD spec assigns.
const optSession uint32 = 0x48430001

// sessionOptLen is the option's data length: id and generation.
const sessionOptLen = 16 + 8

// DefaultReinstateTimeout is the default of Server.ReinstateTimeout.
const DefaultReinstateTimeout = 30 * time.Second

// Session names a client's connection for session reinstatement: ID is
// the client's (random, fixed for its life), Generation grows with every
// connection it opens (see ClientOptions.Session).
type Session struct {
	ID         [16]byte
	Generation uint64
}

func (s Session) String() string {
	return fmt.Sprintf("%s/%d", hex.EncodeToString(s.ID[:]), s.Generation)
}

func (s Session) encode() []byte {
	b := append([]byte(nil), s.ID[:]...)
	return binary.BigEndian.AppendUint64(b, s.Generation)
}

func parseSession(data []byte) (Session, error) {
	var s Session
	if len(data) != sessionOptLen {
		return s, optErr(repErrInvalid, "HACS_SESSION takes %d bytes (session id, generation), got %d", sessionOptLen, len(data))
	}
	copy(s.ID[:], data)
	if s.ID == ([16]byte{}) {
		return s, optErr(repErrInvalid, "HACS_SESSION: the session id is all zero")
	}
	s.Generation = binary.BigEndian.Uint64(data[16:])
	return s, nil
}

// sessionKey is one session on one export.
type sessionKey struct {
	export string
	id     [16]byte
}

// sessionState is what the server knows of a session on an export: the
// newest generation presented and the open connections that named it (with
// their generation). Guarded by the server's mu; dropped with its last
// connection.
type sessionState struct {
	gen   uint64
	conns map[*serverConn]uint64
}

func (s *Server) reinstateTimeout() time.Duration {
	if s.ReinstateTimeout <= 0 {
		return DefaultReinstateTimeout
	}
	return s.ReinstateTimeout
}

// reinstate runs session reinstatement for a connection that is about to
// start transmission on export: it registers the connection under its
// session, cuts the session's connections of older generations on the
// export and waits until they have ended. Without a session it does
// nothing. The error is an *optError for NBD_OPT_GO.
func (c *serverConn) reinstate(export string) error {
	if c.session == nil {
		return nil
	}
	srv := c.srv
	sess := *c.session
	key := sessionKey{export: export, id: sess.ID}
	srv.mu.Lock()
	srv.leaveSessionLocked(c) // a GO tried again, maybe for another export
	st := srv.sessions[key]
	if st != nil {
		if sess.Generation < st.gen {
			srv.mu.Unlock()
			c.log.Warn("nbd connection refused: older generation of a session", "session", sess.String(), "newest", st.gen, "export", export)
			return optErr(repErrPolicy, "session %x generation %d is older than generation %d already seen on export %q: this connection is superseded", sess.ID, sess.Generation, st.gen, export)
		}
		for o, g := range st.conns {
			if g == sess.Generation && o != c {
				srv.mu.Unlock()
				c.log.Warn("nbd connection refused: generation of a session already in use", "session", sess.String(), "export", export)
				return optErr(repErrPolicy, "session %x generation %d is already used by another connection on export %q", sess.ID, sess.Generation, export)
			}
		}
	} else {
		st = &sessionState{conns: make(map[*serverConn]uint64)}
		srv.sessions[key] = st
	}
	st.gen = sess.Generation
	st.conns[c] = sess.Generation
	c.sessKey = key
	c.inSession = true
	var victims []*serverConn
	for o, g := range st.conns {
		if g < sess.Generation {
			o.supersede()
			victims = append(victims, o)
		}
	}
	superseded := c.superseded
	srv.mu.Unlock()
	if len(victims) == 0 {
		return nil
	}
	start := time.Now()
	// Close them all first, then wait for each: their requests still in
	// the device end on their own.
	for _, o := range victims {
		o.nc.Close()
	}
	timer := time.NewTimer(srv.reinstateTimeout())
	defer timer.Stop()
	for _, o := range victims {
		select {
		case <-o.done:
		case <-superseded:
			return fmt.Errorf("session %s superseded while waiting for its older connections", sess)
		case <-timer.C:
			c.log.Error("nbd session reinstatement failed: an older connection's requests did not end in time", "session", sess.String(), "export", export, "timeout", srv.reinstateTimeout().String(), "older", o.nc.RemoteAddr().String())
			return optErr(repErrPolicy, "session %x: an older connection of this session still has requests in the device after %s; try again", sess.ID, srv.reinstateTimeout())
		}
	}
	srv.mu.Lock()
	cut := c.cut
	srv.mu.Unlock()
	if cut {
		return fmt.Errorf("session %s superseded while waiting for its older connections", sess)
	}
	c.log.Info("nbd session reinstated: older connections ended", "session", sess.String(), "export", export, "cut", len(victims), "waited", time.Since(start).Round(time.Microsecond).String())
	// The wait may have used up the negotiation's deadline: leave time for
	// the answers.
	c.nc.SetDeadline(time.Now().Add(srv.handshakeTimeout()))
	return nil
}

// supersede marks a connection replaced by a newer one of its session: it
// starts no request from now on (one read but not started is dropped) and
// a connection still negotiating does not start transmission. The caller
// holds the server's mu, then closes the connection.
func (c *serverConn) supersede() {
	c.stopped.Store(true)
	if !c.cut {
		c.cut = true
		close(c.superseded)
	}
}

// leaveSessionLocked drops c from its session's bookkeeping, and the
// session with its last connection. The caller holds the server's mu.
func (s *Server) leaveSessionLocked(c *serverConn) {
	if !c.inSession {
		return
	}
	c.inSession = false
	st := s.sessions[c.sessKey]
	if st == nil {
		return
	}
	delete(st.conns, c)
	if len(st.conns) == 0 {
		delete(s.sessions, c.sessKey)
	}
}

// sessionCount is how many sessions the server keeps (tests).
func (s *Server) sessionCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}
