package nbd

import (
	"crypto/x509"
	"fmt"
	"strconv"
)

// SetExportAccess changes who may open a served export: its TLS policy and
// ClientAuth (see Export). Options naming the export from now on see the
// new access; connections that opened it already keep it until they end.
// changed is false when the export already had this access.
func (s *Server) SetExportAccess(name string, tls TLSPolicy, clientAuth bool) (changed bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.exports[name]
	if e == nil {
		return false, fmt.Errorf("nbd: no export named %q", name)
	}
	if e.TLS == tls && e.ClientAuth == clientAuth {
		return false, nil
	}
	e.TLS, e.ClientAuth = tls, clientAuth
	return true, nil
}

// access is an export's TLS policy, ClientAuth and Authorize
// (SetExportAccess and SetExportAuthorize may change them while
// connections negotiate).
func (s *Server) access(e *Export) (TLSPolicy, bool, func(Peer) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return e.TLS, e.ClientAuth, e.Authorize
}

// Peer is who a client proved to be in the TLS handshake: the certificate
// the server verified, or the pre-shared key identity it used. The zero
// Peer is a client that did not authenticate (plaintext, or TLS without a
// verified certificate).
type Peer struct {
	Cert        *x509.Certificate
	PSKIdentity string
}

// Authenticated reports whether the client proved who it is.
func (p Peer) Authenticated() bool { return p.Cert != nil || p.PSKIdentity != "" }

// String names the peer for logs: "psk:NAME", the certificate's subject
// common name, or "unauthenticated".
func (p Peer) String() string {
	switch {
	case p.PSKIdentity != "":
		return "psk:" + p.PSKIdentity
	case p.Cert != nil:
		return "cert " + strconv.Quote(p.Cert.Subject.CommonName)
	}
	return "unauthenticated"
}

// SetExportAuthorize replaces the Authorize of a served export (see
// Export) and cuts at once the connections serving it whose client the
// new one refuses (each logged with reason and the refusal); it returns
// how many it cut. Connections still negotiating see the new Authorize
// when they select the export. Requests in flight on a cut connection end
// on their own; no reply reaches the client.
func (s *Server) SetExportAuthorize(name string, authorize func(Peer) error, reason string) (cut int, err error) {
	type victim struct {
		c    *serverConn
		peer Peer
		why  error
	}
	var victims []victim
	s.mu.Lock()
	e := s.exports[name]
	if e == nil {
		s.mu.Unlock()
		return 0, fmt.Errorf("nbd: no export named %q", name)
	}
	e.Authorize = authorize
	if authorize != nil {
		for c := range s.conns {
			if c.export != e {
				continue
			}
			p := Peer{PSKIdentity: c.psk}
			if c.peer != nil && c.authenticated() {
				p.Cert = c.peer
			}
			if err := authorize(p); err != nil {
				victims = append(victims, victim{c, p, err})
			}
		}
	}
	s.mu.Unlock()
	for _, v := range victims {
		v.c.stopped.Store(true) // a request read but not started is dropped
		v.c.nc.Close()
		v.c.log.Warn("nbd connection cut: "+reason, "peer", v.peer.String(), "export", name, "why", v.why.Error())
	}
	return len(victims), nil
}
