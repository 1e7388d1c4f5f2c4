package test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	rm "github.com/hacs/hacs/internal/agent"
	"github.com/hacs/hacs/internal/nbd"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// certTLS is a client configuration presenting the node certificate of
// dataDir (a copy of it: the test plays whoever holds that node's key),
// verifying servers against the cluster CA.
func certTLS(t testing.TB, dataDir string) *tls.Config {
	cfg := nodeTLS(t, dataDir)
	cfg.InsecureSkipVerify = true // a test client: the server is ours
	return cfg
}

// watchConn reports when a long-lived connection ends (closed by now).
type watchConn struct {
	name  string
	ended chan time.Time
	err   atomic.Value
}

func newWatch(name string) *watchConn { return &watchConn{name: name, ended: make(chan time.Time, 1)} }

func (w *watchConn) end(err error) {
	w.err.Store(fmt.Sprint(err))
	select {
	case w.ended <- time.Now():
	default:
	}
}

// nbdTLSIdle opens an NBD connection, negotiates STARTTLS with cfg and
// then stays in option negotiation, reading until the server closes it.
func nbdTLSIdle(t *testing.T, addr string, cfg *tls.Config, w *watchConn) {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	var hello [18]byte
	if _, err := io.ReadFull(nc, hello[:]); err != nil {
		t.Fatal(err)
	}
	binary.Write(nc, binary.BigEndian, uint32(3)) // fixed newstyle, no zeroes
	var opt [16]byte
	binary.BigEndian.PutUint64(opt[0:], 0x49484156454F5054) // IHAVEOPT
	binary.BigEndian.PutUint32(opt[8:], 5)                  // NBD_OPT_STARTTLS
	nc.Write(opt[:])
	var rep [20]byte
	if _, err := io.ReadFull(nc, rep[:]); err != nil {
		t.Fatal(err)
	}
	if typ := binary.BigEndian.Uint32(rep[12:]); typ != 1 {
		t.Fatalf("STARTTLS refused by %s: reply %#x", addr, typ)
	}
	tc := tls.Client(nc, cfg)
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS with %s: %v", addr, err)
	}
	go func() {
		_, err := io.Copy(io.Discard, tc)
		w.end(err)
	}()
}

// TestRevocationCutsOpenConnections: removing a node revokes its
// certificate, and the connections already open with it are cut at once
// (the agent API's HTTPS, the NBD replica and export ports), with the
// reason in the log; connections of the other nodes keep working. It also
// records what happens to an etcd client connection made with the revoked
// certificate (docs/SECURITY.md).
func TestRevocationCutsOpenConnections(t *testing.T) {
	c := newRMCluster(t, 3)
	if code, err := c.call("POST", "/v1/volumes", rm.VolumeRequest{Name: "rv", Size: 8 << 20, Replicas: 2}, nil); err != nil || code != 201 {
		t.Fatalf("create: %d %v", code, err)
	}
	v := c.waitServed("rv", 0)
	// the victim: a node that does not serve the export (the export's
	// clients are the test's); the keeper: the third one
	server := v.Export.Node
	var victim, keeper string
	for _, n := range []string{"n2", "n3", "n1"} {
		if n == server {
			continue
		}
		if victim == "" {
			victim = n
		} else if keeper == "" {
			keeper = n
		}
	}
	t.Logf("export on %s, removing %s, %s keeps its connections", server, victim, keeper)
	vcfg := certTLS(t, filepath.Join(c.dir, victim))
	kcfg := certTLS(t, filepath.Join(c.dir, keeper))

	// 1. API: an event stream (a response that never ends) with the
	// victim's certificate, and one with the keeper's
	stream := func(cfg *tls.Config, w *watchConn) {
		tr := &http.Transport{TLSClientConfig: cfg}
		req, _ := http.NewRequest("GET", c.api(server)+"/v1/events/stream", nil)
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			t.Fatalf("event stream with %s's certificate: %v", w.name, err)
		}
		if resp.StatusCode != 200 {
			t.Fatalf("event stream with %s's certificate: %s", w.name, resp.Status)
		}
		t.Cleanup(func() { resp.Body.Close() })
		go func() {
			_, err := io.Copy(io.Discard, bufio.NewReader(resp.Body))
			w.end(err)
		}()
	}
	apiV, apiK := newWatch("API stream ("+victim+")"), newWatch("API stream ("+keeper+")")
	stream(vcfg, apiV)
	stream(kcfg, apiK)

	// 2. replica port of the export's node: a TLS session in negotiation
	repV, repK := newWatch("replica port ("+victim+")"), newWatch("replica port ("+keeper+")")
	nbdTLSIdle(t, c.ports[server][3], vcfg, repV)
	nbdTLSIdle(t, c.ports[server][3], kcfg, repK)

	// 3. export port: a client doing I/O with the victim's certificate,
	// another with the keeper's
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dialExport := func(cfg *tls.Config) *nbd.Client {
		cl, err := nbd.Dial(ctx, "tcp", v.Export.Addr, nbd.ClientOptions{Export: v.Export.Name, TLS: cfg})
		if err != nil {
			t.Fatalf("export over TLS: %v", err)
		}
		t.Cleanup(func() { cl.Close() })
		return cl
	}
	expV, expK := newWatch("export I/O ("+victim+")"), newWatch("export I/O ("+keeper+")")
	var keeperIOs atomic.Int64
	doIO := func(cl *nbd.Client, w *watchConn, count *atomic.Int64) {
		buf := make([]byte, 4096)
		for ctx.Err() == nil {
			if err := cl.ReadAt(buf, 0); err != nil {
				w.end(err)
				return
			}
			if count != nil {
				count.Add(1)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	go doIO(dialExport(vcfg), expV, nil)
	go doIO(dialExport(kcfg), expK, &keeperIOs)

	// 4. etcd: a client of the export node's member with the victim's
	// certificate (not through the agent: what a thief of the key could do)
	ecli, err := clientv3.New(clientv3.Config{Endpoints: []string{"https://" + c.ports[server][2]}, TLS: vcfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer ecli.Close()
	gctx, gcancel := context.WithTimeout(ctx, 5*time.Second)
	if _, err := ecli.Get(gctx, "/hacs/cluster"); err != nil {
		t.Fatalf("etcd with the victim's certificate before its removal: %v", err)
	}
	gcancel()

	time.Sleep(300 * time.Millisecond)
	for _, w := range []*watchConn{apiV, apiK, repV, repK, expV, expK} {
		select {
		case <-w.ended:
			t.Fatalf("%s ended before the removal: %v", w.name, w.err.Load())
		default:
		}
	}

	removed := time.Now()
	if r := runEnv(t, []string{"HACS_CA_FILE=" + caFileOf(filepath.Join(c.dir, "n1")), "HACS_TOKEN_FILE=" + filepath.Join(c.dir, "n1", "admin-token")}, "node", "remove", victim, "--force", "--cluster", c.ports[server][0]); r.code != 0 {
		t.Fatalf("remove %s: %v", victim, r)
	}
	// the removal is recorded (the revocation takes effect) just before
	// the request is answered; removing a voter's etcd member first takes
	// a few seconds
	acked := time.Now()
	t.Logf("removal of %s acknowledged after %v", victim, acked.Sub(removed).Round(time.Millisecond))
	for _, w := range []*watchConn{apiV, repV, expV} {
		select {
		case at := <-w.ended:
			d := at.Sub(acked)
			t.Logf("%s cut %v after the removal was acknowledged: %v", w.name, d.Round(time.Millisecond), w.err.Load())
			if d > time.Second {
				t.Errorf("%s cut only %v after the removal", w.name, d)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("%s still open 5 s after the removal", w.name)
		}
	}
	// the keeper's connections go on
	before := keeperIOs.Load()
	time.Sleep(time.Second)
	for _, w := range []*watchConn{apiK, repK, expK} {
		select {
		case <-w.ended:
			t.Errorf("%s ended: %v", w.name, w.err.Load())
		default:
		}
	}
	if keeperIOs.Load() <= before {
		t.Errorf("the keeper's export I/O stalled")
	}
	// the reason is logged by the node that cut them
	out := c.procs[server].out.String()
	for _, want := range []string{"connection cut: certificate revoked: node " + victim, "nbd connection cut: certificate revoked"} {
		if !strings.Contains(out, want) {
			t.Errorf("log of %s lacks %q", server, want)
		}
	}
	// a new connection with the victim's certificate is refused
	if _, err := nbd.Dial(ctx, "tcp", v.Export.Addr, nbd.ClientOptions{Export: v.Export.Name, TLS: vcfg}); err == nil {
		t.Error("a new export connection with the revoked certificate was admitted")
	}
	// etcd: the node's TLS front of its etcd client port refuses new
	// connections with the revoked certificate and has cut the open one
	ecli2, err := clientv3.New(clientv3.Config{Endpoints: []string{"https://" + c.ports[server][2]}, TLS: vcfg, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err == nil {
		gctx, gcancel = context.WithTimeout(ctx, 3*time.Second)
		_, err = ecli2.Get(gctx, "/hacs/cluster")
		gcancel()
		ecli2.Close()
	}
	if err == nil {
		t.Error("a new etcd client connection with the revoked certificate was admitted")
	} else {
		t.Logf("new etcd client connection with the revoked certificate: %v", err)
	}
	gctx, gcancel = context.WithTimeout(ctx, 3*time.Second)
	_, err = ecli.Get(gctx, "/hacs/cluster")
	gcancel()
	if err == nil {
		t.Error("the etcd client opened with the revoked certificate before the removal still reads the store")
	} else {
		t.Logf("etcd client opened before the removal: %v", err)
	}
	if !strings.Contains(out, `conn="etcd client"`) {
		t.Errorf("log of %s: no cut etcd client connection", server)
	}
}
