package cluster

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/testlog"
)

// startLimitedNode starts a secure one-node cluster whose API has limits
// l, logging to the returned buffer.
func startLimitedNode(t *testing.T, l APILimits) (*Node, string, *tls.Config, *testlog.Buffer) {
	t.Helper()
	skipWithoutTLS(t)
	cfg := testConfig(t, "lim")
	cfg.Voters = 1
	cfg.APILimits = l
	logs := &testlog.Buffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	n := startNode(t, cfg)
	ca, err := os.ReadFile(TLSFiles(cfg.DataDir).CACert)
	if err != nil {
		t.Fatal(err)
	}
	tc, err := CATLSConfig(ca)
	if err != nil {
		t.Fatal(err)
	}
	return n, adminToken(t, cfg.DataDir), tc, logs
}

// apiClient is an HTTPS client of the API connecting from the local
// address from, counting the connections it opens.
type apiClient struct {
	hc    *http.Client
	dials atomic.Int32
}

func newAPIClient(tc *tls.Config, from string) *apiClient {
	c := &apiClient{}
	d := &net.Dialer{Timeout: 3 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c.hc = &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		TLSClientConfig: tc.Clone(),
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c.dials.Add(1)
			return d.DialContext(ctx, network, addr)
		},
	}}
	return c
}

// get asks for the node list with token; the status code, or the error.
func (c *apiClient) get(api, token string) (int, error) {
	req, _ := http.NewRequest("GET", "https://"+api+"/v1/nodes", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// flood opens n idle TCP connections from the local address from, and
// returns them with how many the server closed at once (within wait).
func flood(t *testing.T, api, from string, n int, wait time.Duration) (conns []net.Conn, closed int) {
	t.Helper()
	d := net.Dialer{Timeout: 3 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	reset := 0
	for range n {
		nc, err := d.Dial("tcp", api)
		if errors.Is(err, syscall.ECONNRESET) {
			reset++ // closed by the server before the dial returned
			continue
		}
		if err != nil {
			t.Fatalf("flood from %s: %v", from, err)
		}
		conns = append(conns, nc)
	}
	closed = reset
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	var mu sync.Mutex
	var wg sync.WaitGroup
	var open []net.Conn
	for _, nc := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nc.SetReadDeadline(time.Now().Add(wait))
			_, err := nc.Read(make([]byte, 1))
			mu.Lock()
			if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				closed++
			} else {
				open = append(open, nc)
			}
			mu.Unlock()
			nc.SetReadDeadline(time.Time{})
		}()
	}
	wg.Wait()
	return open, closed
}

// TestAPIUnauthenticatedLimits: a flood of idle connections to the API is
// held to the limits (per IP address, then server-wide) and closed at
// once beyond them, with one log line; an authenticated client keeps its
// answers throughout, new clients of other addresses get in while the
// server-wide limit has room, and the flood is cut at the deadline.
func TestAPIUnauthenticatedLimits(t *testing.T) {
	const perIP, total, timeout = 8, 24, 3 * time.Second
	n, tok, tc, logs := startLimitedNode(t, APILimits{HandshakeTimeout: timeout, MaxUnauthenticated: total, MaxUnauthenticatedPerIP: perIP, PerIPLoopback: true})
	api := n.APIAddr()

	// a client that authenticated before the flood
	est := newAPIClient(tc, "127.0.0.1")
	if code, err := est.get(api, tok); code != 200 {
		t.Fatalf("before the flood: %d %v", code, err)
	}
	// node-to-node traffic: the node's own client (node certificate)
	nodeGet := func() (int, error) {
		resp, err := n.HTTPClient().Get(n.Scheme() + "://" + api + "/v1/nodes")
		if err != nil {
			return 0, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	if code, err := nodeGet(); code != 200 {
		t.Fatalf("node client before the flood: %d %v", code, err)
	}
	waitCond(t, 2*time.Second, func() bool { return n.Unauthenticated() == 0 })

	// one address floods: it gets perIP slots, the rest is closed at once
	start := time.Now()
	held, closed := flood(t, api, "127.0.0.2", 100, 700*time.Millisecond)
	if closed != 100-perIP || n.Unauthenticated() != perIP {
		t.Fatalf("flood of 100 from one address: %d closed at once, %d held by the server; want %d and %d", closed, n.Unauthenticated(), 100-perIP, perIP)
	}
	t.Logf("flood of 100 from 127.0.0.2: %d held, %d closed at once, checked %v after its start", perIP, closed, time.Since(start).Round(time.Millisecond))
	if got := strings.Count(logs.String(), "API connection refused"); got != 1 {
		t.Errorf("%d log lines for the refusals, want 1 (rate-limited)", got)
	}
	if !strings.Contains(logs.String(), "the limit per IP address") {
		t.Errorf("the refusal does not say which limit: %s", logs.String())
	}
	// the others are served: the established client, new clients
	for _, from := range []string{"127.0.0.1", "127.0.0.3"} {
		c := newAPIClient(tc, from)
		if code, err := c.get(api, tok); code != 200 {
			t.Fatalf("a new client from %s during the flood: %d %v", from, code, err)
		}
	}
	if code, err := est.get(api, tok); code != 200 || est.dials.Load() != 1 {
		t.Fatalf("the established client during the flood: %d %v, %d connections", code, err, est.dials.Load())
	}
	if code, err := nodeGet(); code != 200 {
		t.Fatalf("node client during the flood: %d %v", code, err)
	}

	// more addresses fill the server-wide limit
	for i := 4; i <= 6; i++ {
		flood(t, api, fmt.Sprintf("127.0.0.%d", i), perIP, 300*time.Millisecond)
	}
	if got := n.Unauthenticated(); got != total {
		t.Fatalf("%d connections not authenticated, want the server-wide limit %d", got, total)
	}
	_, closed = flood(t, api, "127.0.0.7", 3, 500*time.Millisecond)
	if closed != 3 {
		t.Fatalf("with the server-wide limit reached, %d of 3 new connections were closed at once", closed)
	}
	if code, err := est.get(api, tok); code != 200 || est.dials.Load() != 1 {
		t.Fatalf("the established client with the server-wide limit reached: %d %v, %d connections", code, err, est.dials.Load())
	}
	if code, err := nodeGet(); code != 200 {
		t.Fatalf("node client (its open connection) with the server-wide limit reached: %d %v", code, err)
	}

	// the etcd client port (the agent's TLS front) has the same limits,
	// counted apart; a node's etcd client still gets in
	u, err := url.Parse(n.ident.ClientURL)
	if err != nil {
		t.Fatal(err)
	}
	etcdHeld, closed := flood(t, u.Host, "127.0.0.8", 20, 500*time.Millisecond)
	if closed != 20-perIP {
		t.Fatalf("flood of 20 on the etcd client port: %d closed at once, want %d", closed, 20-perIP)
	}
	nodeCert, err := n.creds.certificate()
	if err != nil {
		t.Fatal(err)
	}
	if err := etcdReachable(t, n.ident.ClientURL, n.cfg.DataDir, *nodeCert); err != nil {
		t.Fatalf("etcd client with a node certificate during the flood: %v", err)
	}
	held = append(held, etcdHeld...)

	// the deadline cuts the flood; the slots are free again
	for i, nc := range held {
		nc.SetReadDeadline(time.Now().Add(timeout + 2*time.Second))
		if _, err := nc.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("held connection %d not cut at the %v deadline: %v", i, timeout, err)
		}
	}
	t.Logf("held connections cut %v after the flood began (deadline %v)", time.Since(start).Round(time.Millisecond), timeout)
	waitCond(t, 2*time.Second, func() bool { return n.Unauthenticated() == 0 })
	for _, want := range []string{"API connection cut: not authenticated within the handshake timeout", "etcd client connection refused: too many connections not authenticated yet", "etcd client connection cut: not authenticated within the handshake timeout"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("no log line %q", want)
		}
	}
	if code, err := newAPIClient(tc, "127.0.0.2").get(api, tok); code != 200 {
		t.Fatalf("the flooding address after the flood: %d %v", code, err)
	}
	if code, err := est.get(api, tok); code != 200 || est.dials.Load() != 1 {
		t.Fatalf("the established client after the flood: %d %v, %d connections", code, err, est.dials.Load())
	}
}

// TestAPIHandshakeDeadline: one deadline from accept for the TLS handshake
// and the first authenticated request, however slowly the client sends:
// a dribbled TLS hello, a dribbled request header, and a connection idle
// after a request without a token are cut at it; a connection that
// authenticated stays past it.
func TestAPIHandshakeDeadline(t *testing.T) {
	const timeout = time.Second
	n, tok, tc, _ := startLimitedNode(t, APILimits{HandshakeTimeout: timeout})
	api := n.APIAddr()

	dial := func() net.Conn {
		nc, err := net.DialTimeout("tcp", api, 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
		return nc
	}
	// dribble writes b one byte every 50 ms until it fails or ends.
	dribble := func(w io.Writer, b []byte) {
		for _, c := range b {
			if _, err := w.Write([]byte{c}); err != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// cutAfter waits until nc's server closes it, how long after start.
	cutAfter := func(r io.Reader, nc net.Conn, start time.Time) (time.Duration, error) {
		nc.SetReadDeadline(start.Add(timeout + 3*time.Second))
		for {
			if _, err := r.Read(make([]byte, 512)); err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					return 0, fmt.Errorf("still open %v after the start", time.Since(start).Round(time.Millisecond))
				}
				return time.Since(start), nil
			}
		}
	}
	type result struct {
		what string
		d    time.Duration
		err  error
	}
	results := make(chan result, 4)
	var wg sync.WaitGroup
	run := func(what string, f func() (time.Duration, error)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := f()
			results <- result{what, d, err}
		}()
	}
	run("a TLS hello dribbled", func() (time.Duration, error) {
		nc := dial()
		start := time.Now()
		// a handshake record header announcing 512 bytes, then the bytes slowly
		go dribble(nc, append([]byte{0x16, 0x03, 0x01, 0x02, 0x00}, make([]byte, 512)...))
		return cutAfter(nc, nc, start)
	})
	run("a request header dribbled after the handshake", func() (time.Duration, error) {
		nc := dial()
		start := time.Now()
		c := tls.Client(nc, tc.Clone())
		if err := c.Handshake(); err != nil {
			return 0, err
		}
		go dribble(c, []byte("GET /v1/nodes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+tok+"\r\n\r\n"))
		return cutAfter(c, nc, start)
	})
	run("idle after a request without a token", func() (time.Duration, error) {
		nc := dial()
		start := time.Now()
		c := tls.Client(nc, tc.Clone())
		br := bufio.NewReader(c)
		fmt.Fprintf(c, "GET /v1/nodes HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return 0, err
		}
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != 401 {
			return 0, fmt.Errorf("answer %d without a token, want 401", resp.StatusCode)
		}
		return cutAfter(br, nc, start)
	})
	run("authenticated, then idle past the deadline", func() (time.Duration, error) {
		nc := dial()
		start := time.Now()
		c := tls.Client(nc, tc.Clone())
		br := bufio.NewReader(c)
		for i := range 2 {
			fmt.Fprintf(c, "GET /v1/nodes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", tok)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				return 0, fmt.Errorf("request %d: %w", i, err)
			}
			io.Copy(io.Discard, resp.Body)
			if resp.StatusCode != 200 {
				return 0, fmt.Errorf("request %d: answer %d", i, resp.StatusCode)
			}
			if i == 0 {
				time.Sleep(timeout + time.Second)
			}
		}
		return time.Since(start), nil
	})
	wg.Wait()
	close(results)
	for r := range results {
		switch {
		case r.err != nil:
			t.Errorf("%s: %v", r.what, r.err)
		case strings.HasPrefix(r.what, "authenticated"):
			t.Logf("%s: still served %v after connecting", r.what, r.d.Round(time.Millisecond))
		case r.d < timeout-100*time.Millisecond || r.d > timeout+700*time.Millisecond:
			t.Errorf("%s: cut %v after connecting, want about the %v deadline", r.what, r.d.Round(time.Millisecond), timeout)
		default:
			t.Logf("%s: cut %v after connecting (deadline %v)", r.what, r.d.Round(time.Millisecond), timeout)
		}
	}
	waitCond(t, 2*time.Second, func() bool { return n.Unauthenticated() == 0 })
}

// TestAPILimitsInsecure: in an --insecure cluster (no TLS, no tokens) the
// first request takes a connection out of the limits: a keep-alive client
// idle past the deadline keeps its connection; an idle connection that
// never sent a request is cut at the deadline.
func TestAPILimitsInsecure(t *testing.T) {
	const timeout = time.Second
	cfg := testConfig(t, "insec")
	cfg.Voters, cfg.Insecure = 1, true
	cfg.APILimits = APILimits{HandshakeTimeout: timeout}
	n := startNode(t, cfg)
	api := n.APIAddr()

	idle, err := net.DialTimeout("tcp", api, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	start := time.Now()
	c := newAPIClient(&tls.Config{}, "127.0.0.1")
	for i := range 2 {
		resp, err := c.hc.Get("http://" + api + "/v1/status")
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("request %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if i == 0 {
			time.Sleep(timeout + 500*time.Millisecond)
		}
	}
	if c.dials.Load() != 1 {
		t.Fatalf("the client needed %d connections: its first was cut", c.dials.Load())
	}
	idle.SetReadDeadline(start.Add(3 * timeout))
	if _, err := idle.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a connection without a request was not cut at the deadline: %v", err)
	}
	waitCond(t, 2*time.Second, func() bool { return n.Unauthenticated() == 0 })
}
