package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"
)

// Revocation of open connections (docs/SECURITY.md "Revocation").
//
// A revoked certificate is refused at every new handshake (tlsCreds.verify).
// The connections it already authenticated are cut here at once, when the
// revocation list changes: the agent API's HTTPS connections (tracked with
// the http.Server's ConnState), this node's own TLS client connections to
// other nodes (HTTPClient, DialNode), and whatever other layer registered
// with OnRevoke (the agent's NBD servers: replica and export ports).

// RevokeHook cuts the connections of one server whose peer certificate
// matches; it returns how many it cut (nbd.Server.CutPeers has this shape).
type RevokeHook func(match func(*x509.Certificate) bool, reason string) int

// trackedConn is an open TLS connection and, once its handshake is done,
// the certificate of its peer.
type trackedConn struct {
	conn net.Conn
	what string // "API client", "API server", "replica server"...
	mu   sync.Mutex
	peer *x509.Certificate
}

func (t *trackedConn) setPeer(c *x509.Certificate) {
	t.mu.Lock()
	t.peer = c
	t.mu.Unlock()
}

func (t *trackedConn) peerCert() *x509.Certificate {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.peer
}

// connTracker holds the open connections of this node that a revocation
// must cut, and the hooks of other layers.
type connTracker struct {
	mu    sync.Mutex
	conns map[net.Conn]*trackedConn
	hooks []RevokeHook
}

func (ct *connTracker) add(c net.Conn, what string) *trackedConn {
	t := &trackedConn{conn: c, what: what}
	ct.mu.Lock()
	if ct.conns == nil {
		ct.conns = map[net.Conn]*trackedConn{}
	}
	ct.conns[c] = t
	ct.mu.Unlock()
	return t
}

func (ct *connTracker) get(c net.Conn) *trackedConn {
	ct.mu.Lock()
	defer ct.mu.Unlock()
	return ct.conns[c]
}

func (ct *connTracker) remove(c net.Conn) {
	ct.mu.Lock()
	delete(ct.conns, c)
	ct.mu.Unlock()
}

// OnRevoke registers a hook that cuts a server's connections authenticated
// with a revoked certificate; it is called at every change of the
// revocation list (and once right away).
func (n *Node) OnRevoke(h RevokeHook) {
	n.tracker.mu.Lock()
	n.tracker.hooks = append(n.tracker.hooks, h)
	n.tracker.mu.Unlock()
	if n.creds != nil {
		h(n.CertRevoked, "certificate revoked")
	}
}

// CertRevoked reports whether cert is on the cluster's revocation list.
func (n *Node) CertRevoked(cert *x509.Certificate) bool {
	return cert != nil && n.isRevokedSerial(cert.SerialNumber)
}

// revokedReason explains why a connection of cert is cut.
func revokedReason(cert *x509.Certificate) string {
	if _, id := PeerNode(cert); id != "" {
		return fmt.Sprintf("certificate revoked: node %s (id %s) was removed from the cluster", cert.Subject.CommonName, id)
	}
	return fmt.Sprintf("certificate revoked (%s)", cert.Subject.CommonName)
}

// cutRevoked closes every open connection authenticated with a revoked
// certificate, and logs each with its reason.
func (n *Node) cutRevoked() int {
	start := time.Now()
	n.tracker.mu.Lock()
	var victims []*trackedConn
	for _, t := range n.tracker.conns {
		if n.CertRevoked(t.peerCert()) {
			victims = append(victims, t)
		}
	}
	hooks := append([]RevokeHook(nil), n.tracker.hooks...)
	n.tracker.mu.Unlock()
	for _, t := range victims {
		t.conn.Close()
		p := t.peerCert()
		n.log.Warn("TLS: connection cut: "+revokedReason(p), "conn", t.what, "remote", t.conn.RemoteAddr().String(), "serial", fmt.Sprintf("%x", p.SerialNumber))
	}
	cut := len(victims)
	for _, h := range hooks {
		cut += h(n.CertRevoked, "certificate revoked: the node or client it was issued to was removed from the cluster")
	}
	if cut > 0 {
		n.log.Warn("TLS: cut the open connections authenticated with revoked certificates", "connections", cut, "took", time.Since(start).Round(time.Microsecond))
	}
	return cut
}

// apiConnState tracks the API's TLS connections: their peer certificate
// once a request arrives (the handshake is done by then), and a
// connection whose certificate is already revoked is closed before its
// request is served.
func (n *Node) apiConnState(c net.Conn, st http.ConnState) {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return
	}
	switch st {
	case http.StateNew:
		n.tracker.add(c, "API server")
	case http.StateActive:
		t := n.tracker.get(c)
		if t == nil || t.peerCert() != nil {
			return
		}
		cs := tc.ConnectionState()
		if len(cs.PeerCertificates) == 0 {
			return
		}
		leaf := cs.PeerCertificates[0]
		t.setPeer(leaf)
		if n.CertRevoked(leaf) {
			c.Close()
			n.log.Warn("TLS: connection cut: "+revokedReason(leaf), "conn", t.what, "remote", c.RemoteAddr().String())
		}
	case http.StateClosed, http.StateHijacked:
		n.tracker.remove(c)
	}
}

// clientConn is a TLS client connection of this node to another node,
// untracked when closed.
type clientConn struct {
	*tls.Conn
	n    *Node
	once sync.Once
}

func (c *clientConn) Close() error {
	c.once.Do(func() { c.n.tracker.remove(c.Conn) })
	return c.Conn.Close()
}

// dialTLS dials addr with the node's client TLS configuration and tracks
// the connection, so that it is cut if the server's certificate is
// revoked.
func (n *Node) dialTLS(ctx context.Context, network, addr, what string) (net.Conn, error) {
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 15 * time.Second}
	raw, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(raw, n.creds.ClientConfig())
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	t := n.tracker.add(tc, what)
	if cs := tc.ConnectionState(); len(cs.PeerCertificates) > 0 {
		t.setPeer(cs.PeerCertificates[0])
	}
	return &clientConn{Conn: tc, n: n}, nil
}

// TrackConn registers a connection to another node that runs its own TLS
// (an NBD client's STARTTLS): use the returned connection, and the
// returned configuration, which verifies like TLSClientConfig and records
// the server's certificate, so that the connection is cut if that
// certificate is revoked; closing the connection forgets it. In an
// --insecure cluster it returns c and a nil configuration.
func (n *Node) TrackConn(c net.Conn, what string) (net.Conn, *tls.Config) {
	if n.creds == nil {
		return c, nil
	}
	w := &trackedNetConn{Conn: c, n: n}
	t := n.tracker.add(w, what)
	cfg := n.creds.ClientConfig()
	verify := cfg.VerifyPeerCertificate
	cfg.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
		if err := verify(raw, chains); err != nil {
			return err
		}
		if leaf, err := x509.ParseCertificate(raw[0]); err == nil {
			t.setPeer(leaf)
		}
		return nil
	}
	return w, cfg
}

// trackedNetConn is a connection of TrackConn, untracked when closed.
type trackedNetConn struct {
	net.Conn
	n    *Node
	once sync.Once
}

func (c *trackedNetConn) Close() error {
	c.once.Do(func() { c.n.tracker.remove(c) })
	return c.Conn.Close()
}

// addedSerials reports whether set has a serial old has not.
func addedSerials(old, set map[string]struct{}) bool {
	for k := range set {
		if _, ok := old[k]; !ok {
			return true
		}
	}
	return false
}
