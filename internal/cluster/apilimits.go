package cluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/hacs/hacs/internal/connlimit"
)

// Defaults of APILimits.
const (
	// DefaultAPIHandshakeTimeout is the time a new API connection has to
	// authenticate: its TLS handshake and its first authenticated request.
	DefaultAPIHandshakeTimeout = 10 * time.Second
	// DefaultAPIMaxUnauthenticated is the server-wide default of
	// APILimits.MaxUnauthenticated.
	DefaultAPIMaxUnauthenticated = 512
	// DefaultAPIMaxUnauthenticatedPerIP is the default of
	// APILimits.MaxUnauthenticatedPerIP.
	DefaultAPIMaxUnauthenticatedPerIP = 64
	// apiIdleTimeout closes keep-alive API connections idle this long
	// (the agents' clients drop theirs after 90 s).
	apiIdleTimeout = 2 * time.Minute
	// apiMaxHeaderBytes bounds a request's header (a token is < 100 bytes).
	apiMaxHeaderBytes = 64 << 10
)

// APILimits bound the connections of the TCP API that have not
// authenticated yet, from accept to their first authenticated request (a
// request with a valid API token or from a node certificate; in an
// --insecure cluster any first request): a flood of idle or slow
// connections is refused or cut, the clients already authenticated are
// not affected. The zero value means the defaults.
type APILimits struct {
	// HandshakeTimeout is one deadline from accept for the TLS handshake
	// and the first authenticated request (default
	// DefaultAPIHandshakeTimeout): a connection still without one then is
	// closed (after the request it is serving, if any: the join
	// handshake and the dashboard's files need no token; at the latest
	// one more HandshakeTimeout later).
	HandshakeTimeout time.Duration
	// MaxUnauthenticated bounds how many such connections the API holds
	// at once (default DefaultAPIMaxUnauthenticated; negative: no limit).
	// A connection beyond it is closed at once.
	MaxUnauthenticated int
	// MaxUnauthenticatedPerIP bounds how many of them may come from one IP
	// address (default DefaultAPIMaxUnauthenticatedPerIP; negative: no
	// limit). Loopback addresses are exempt, unless PerIPLoopback: every
	// agent of a cluster on one host and the CLI come from 127.0.0.1.
	MaxUnauthenticatedPerIP int
	// PerIPLoopback applies MaxUnauthenticatedPerIP to loopback addresses
	// too (tests).
	PerIPLoopback bool
}

func (l APILimits) handshakeTimeout() time.Duration {
	if l.HandshakeTimeout <= 0 {
		return DefaultAPIHandshakeTimeout
	}
	return l.HandshakeTimeout
}

func (l APILimits) validate() error {
	if l.HandshakeTimeout < 0 {
		return fmt.Errorf("--api-handshake-timeout %s: must be positive", l.HandshakeTimeout)
	}
	return nil
}

// connGate counts the connections of a listener that have not
// authenticated yet (what: "API", "etcd client") and cuts those that do not
// in time.
type connGate struct {
	n              *Node
	what           string
	timeout        time.Duration
	max, maxPerIP  int
	perIPLoopback  bool
	count          connlimit.Counter
	refused, cutLg connlimit.RateLog
}

func newConnGate(n *Node, what string, l APILimits) *connGate {
	return &connGate{
		n: n, what: what, timeout: l.handshakeTimeout(), perIPLoopback: l.PerIPLoopback,
		max:      connlimit.Bound(l.MaxUnauthenticated, DefaultAPIMaxUnauthenticated),
		maxPerIP: connlimit.Bound(l.MaxUnauthenticatedPerIP, DefaultAPIMaxUnauthenticatedPerIP),
	}
}

// take counts c, or closes it at once when a limit refuses it; key is
// what to give back.
func (g *connGate) take(c net.Conn) (key string, ok bool) {
	ip := connlimit.SourceIP(c)
	key = ip
	if !g.perIPLoopback {
		if a := net.ParseIP(ip); a != nil && a.IsLoopback() {
			key = "" // the server-wide limit only
		}
	}
	if r := g.count.Take(key, g.max, g.maxPerIP); r != nil {
		connlimit.Refuse(c)
		why := fmt.Sprintf("%d %s connections have not authenticated yet, the limit (--api-max-unauthenticated)", r.Count, g.what)
		if r.PerIP {
			why = fmt.Sprintf("%d %s connections from %s have not authenticated yet, the limit per IP address (--api-max-unauthenticated-per-ip)", r.Count, g.what, ip)
		}
		g.refused.Warn(g.n.log, g.what+" connection refused: too many connections not authenticated yet", "remote", c.RemoteAddr().String(), "reason", why)
		return "", false
	}
	return key, true
}

// give gives back the count of a connection take admitted.
func (g *connGate) give(key string) { g.count.Give(key) }

// listener admits the connections of ln within the limits; the others
// are closed at once.
func (g *connGate) listener(ln net.Listener) net.Listener { return gateListener{Listener: ln, g: g} }

type gateListener struct {
	net.Listener
	g *connGate
}

func (l gateListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if key, ok := l.g.take(c); ok {
			pc := &pendingConn{Conn: c, g: l.g, key: key, pending: true, start: time.Now()}
			pc.mu.Lock()
			pc.timer = time.AfterFunc(l.g.timeout, pc.expire)
			pc.mu.Unlock()
			return pc, nil
		}
	}
}

// Unauthenticated reports how many API connections have not authenticated
// yet.
func (n *Node) Unauthenticated() int {
	if n.apiGate == nil {
		return 0
	}
	return n.apiGate.count.Total()
}

// pendingConn is an API connection; it holds a slot of the gate until
// its first authenticated request, or until it ends.
type pendingConn struct {
	net.Conn
	g     *connGate
	key   string // its key in the gate's count ("": total only)
	start time.Time

	mu      sync.Mutex
	pending bool // holds a slot
	active  bool // a request is being served
	expired bool // the deadline passed during a request
	timer   *time.Timer
}

// release gives the slot back (once): the connection authenticated or
// ended.
func (c *pendingConn) release() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.pending {
		return
	}
	c.pending = false
	c.timer.Stop()
	c.g.give(c.key)
}

func (c *pendingConn) Close() error {
	c.release()
	return c.Conn.Close()
}

// expire ends a connection that has not authenticated by its deadline,
// or after the request it is serving (a public one: the join handshake,
// the dashboard's files; at the latest one more timeout later).
func (c *pendingConn) expire() {
	c.mu.Lock()
	if !c.pending {
		c.mu.Unlock()
		return
	}
	if c.active && !c.expired {
		c.expired = true
		c.timer = time.AfterFunc(c.g.timeout, c.expire)
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	c.cut()
}

func (c *pendingConn) cut() {
	c.g.cutLg.Warn(c.g.n.log, c.g.what+" connection cut: not authenticated within the handshake timeout", "remote", c.RemoteAddr().String(), "timeout", c.g.timeout.String(), "after", time.Since(c.start).Round(time.Millisecond).String())
	connlimit.Refuse(c.Conn)
	c.release()
}

// setActive records whether a request is being served; at the end of one
// past the deadline (still not authenticated) the connection is cut.
func (c *pendingConn) setActive(on bool) {
	c.mu.Lock()
	c.active = on
	cut := !on && c.pending && c.expired
	c.mu.Unlock()
	if cut {
		c.cut()
	}
}

// pendingOf finds the gate's connection under an API connection.
func pendingOf(c net.Conn) *pendingConn {
	for i := 0; i < 4; i++ {
		switch x := c.(type) {
		case *pendingConn:
			return x
		case *tls.Conn:
			c = x.NetConn()
		case *sniffConn:
			c = x.Conn
		default:
			return nil
		}
	}
	return nil
}

type pendingKey struct{}

// connContext gives the requests of an API connection its gate's record.
func (g *connGate) connContext(ctx context.Context, c net.Conn) context.Context {
	if pc := pendingOf(c); pc != nil {
		return context.WithValue(ctx, pendingKey{}, pc)
	}
	return ctx
}

// connState follows the requests of an API connection.
func (g *connGate) connState(c net.Conn, st http.ConnState) {
	pc := pendingOf(c)
	if pc == nil {
		return
	}
	switch st {
	case http.StateActive:
		pc.setActive(true)
	case http.StateIdle:
		pc.setActive(false)
	case http.StateHijacked, http.StateClosed:
		pc.release()
	}
}

// authenticatedConn frees the slot of the connection r came on: it made an
// authenticated request.
func authenticatedConn(r *http.Request) {
	if pc, ok := r.Context().Value(pendingKey{}).(*pendingConn); ok {
		pc.release()
	}
}
