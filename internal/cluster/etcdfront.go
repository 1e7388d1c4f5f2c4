package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// etcdFront is the TLS front of the embedded etcd's client port in a secure
// cluster. etcd itself listens on a loopback port (still mutual TLS with
// node certificates); the front listens on --client-listen, checks every
// client with the node's own TLS verification (the trusted CAs of the
// moment, the revocation list, node certificates only) and relays the
// bytes. What it adds to etcd's own listener: its connections are tracked
// with their certificate, so that a revocation cuts the open etcd client
// connections of the revoked certificate at once (etcd checks its CRL only
// when a connection is accepted and cannot close connections), and a CA
// rotation's trust applies at once, not at etcd's next start.
type etcdFront struct {
	n     *Node
	ln    net.Listener
	gate  *connGate // limits on connections in the TLS handshake
	inner string    // etcd's loopback client address
	wg    sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

// listenEtcdFront listens on addr; relaying starts with serve.
func (n *Node) listenEtcdFront(addr string) (*etcdFront, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, listenError("--client-listen", addr, err)
	}
	return &etcdFront{n: n, ln: ln, gate: newConnGate(n, "etcd client", n.cfg.APILimits), conns: map[net.Conn]struct{}{}}, nil
}

// serve relays the connections to etcd's client listener at inner.
func (f *etcdFront) serve(inner string) {
	f.inner = inner
	cfg := f.n.creds.ServerConfig(true)
	cfg.NextProtos = []string{"h2", "http/1.1"}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		var backoff time.Duration
		for {
			c, err := f.ln.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				time.Sleep(backoff)
				continue
			}
			backoff = 0
			key, ok := f.gate.take(c)
			if !ok {
				continue // closed at once
			}
			if !f.track(c) {
				f.gate.give(key)
				c.Close()
				return
			}
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				defer f.untrack(c)
				f.relay(tls.Server(c, cfg), key)
			}()
		}
	}()
}

func (f *etcdFront) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

func (f *etcdFront) untrack(c net.Conn) {
	f.mu.Lock()
	delete(f.conns, c)
	f.mu.Unlock()
}

// relay serves one client connection, counted by the gate under key
// until its handshake ends.
func (f *etcdFront) relay(tc *tls.Conn, key string) {
	defer tc.Close()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), f.gate.timeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	f.gate.give(key) // a node certificate, or the end
	if err != nil {
		// refused certificates are logged by the verification
		if errors.Is(err, context.DeadlineExceeded) {
			f.gate.cutLg.Warn(f.n.log, "etcd client connection cut: not authenticated within the handshake timeout", "remote", tc.RemoteAddr().String(), "timeout", f.gate.timeout.String(), "after", time.Since(start).Round(time.Millisecond).String())
		}
		return
	}
	st := tc.ConnectionState()
	if len(st.PeerCertificates) == 0 {
		return
	}
	leaf := st.PeerCertificates[0]
	t := f.n.tracker.add(tc, "etcd client")
	defer f.n.tracker.remove(tc)
	t.setPeer(leaf)
	if f.n.CertRevoked(leaf) { // revoked during the handshake
		return
	}
	ccfg := f.n.creds.ClientConfig()
	if st.NegotiatedProtocol != "" {
		ccfg.NextProtos = []string{st.NegotiatedProtocol}
	}
	d := &net.Dialer{Timeout: 5 * time.Second}
	up, err := tls.DialWithDialer(d, "tcp", f.inner, ccfg)
	if err != nil {
		f.n.log.Warn("etcd client front: cannot reach the embedded etcd", "addr", f.inner, "err", err)
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	go func() {
		io.Copy(up, tc)
		up.CloseWrite()
		done <- struct{}{}
	}()
	go func() {
		io.Copy(tc, up)
		tc.CloseWrite()
		done <- struct{}{}
	}()
	<-done // one direction ended (or the connection was cut): close both
}

// close stops accepting and closes every relayed connection.
func (f *etcdFront) close() {
	if f == nil {
		return
	}
	f.mu.Lock()
	f.closed = true
	f.ln.Close()
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}
