// Package connlimit bounds what clients that have not authenticated yet can
// hold on a server: a count of such connections in total and per source IP
// address, the closing of a connection refused by it, and a rate-limited
// log of the refusals so that a flood does not flood the log. The NBD
// servers (negotiation) and the agent's API (TLS handshake and first
// request) share it.
package connlimit

import (
	"log/slog"
	"net"
	"sync"
	"time"
)

// Bound turns a configured limit into a bound: 0 means def, a negative
// value no limit (a bound of 0).
func Bound(v, def int) int {
	switch {
	case v == 0:
		return def
	case v < 0:
		return 0
	}
	return v
}

// SourceIP is the IP address a connection comes from ("" for Unix sockets
// and other transports without one).
func SourceIP(nc net.Conn) string {
	switch a := nc.RemoteAddr().(type) {
	case *net.TCPAddr:
		return a.IP.String()
	case *net.UDPAddr:
		return a.IP.String()
	}
	return ""
}

// Refusal says which limit refused a connection.
type Refusal struct {
	// PerIP: the limit per IP address (else the server-wide one).
	PerIP bool
	// Count is how many connections the limit already counts.
	Count int
}

// Counter counts connections in total and per source IP address. The
// zero value is ready; it is safe for concurrent use.
type Counter struct {
	mu    sync.Mutex
	total int
	perIP map[string]int
}

// Take counts one more connection from ip, unless max connections (0: no
// limit) are counted already, or maxPerIP (0: no limit) from ip. An empty
// ip is counted in the total only.
func (c *Counter) Take(ip string, max, maxPerIP int) *Refusal {
	c.mu.Lock()
	defer c.mu.Unlock()
	if max > 0 && c.total >= max {
		return &Refusal{Count: c.total}
	}
	if ip != "" {
		if maxPerIP > 0 && c.perIP[ip] >= maxPerIP {
			return &Refusal{PerIP: true, Count: c.perIP[ip]}
		}
		if c.perIP == nil {
			c.perIP = make(map[string]int)
		}
		c.perIP[ip]++
	}
	c.total++
	return nil
}

// Give gives back a connection from ip that Take counted.
func (c *Counter) Give(ip string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.total--
	if ip != "" {
		if c.perIP[ip]--; c.perIP[ip] <= 0 {
			delete(c.perIP, ip)
		}
	}
}

// Total is how many connections are counted now.
func (c *Counter) Total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.total
}

// Refuse closes a connection a limit refused, without leaving a TIME_WAIT
// socket behind for each one of a flood.
func Refuse(nc net.Conn) {
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	nc.Close()
}

// LogEvery is the usual interval of a RateLog.
const LogEvery = 5 * time.Second

// RateLog logs one line per Interval at most; the lines it held back are
// counted in the next one (more_refused_not_logged), so that a flood does
// not flood the log. The zero value logs every LogEvery.
type RateLog struct {
	Interval time.Duration

	mu   sync.Mutex
	last time.Time
	held int
}

// Warn logs msg at the warning level unless a line was logged less than
// Interval ago.
func (r *RateLog) Warn(log *slog.Logger, msg string, args ...any) {
	iv := r.Interval
	if iv <= 0 {
		iv = LogEvery
	}
	r.mu.Lock()
	now := time.Now()
	if !r.last.IsZero() && now.Sub(r.last) < iv {
		r.held++
		r.mu.Unlock()
		return
	}
	held := r.held
	r.last, r.held = now, 0
	r.mu.Unlock()
	if held > 0 {
		args = append(args, "more_refused_not_logged", held, "since", iv.String())
	}
	log.Warn(msg, args...)
}
