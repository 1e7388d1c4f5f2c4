package nbd

import (
	"bytes"
	"context"
	"crypto/rand"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/device"
)

// gateDev is a memory device that holds the first write whose data starts
// with gate inside the server until release is closed: the request is in
// the device (executing), the way a request of a paused or slow server
// is. It records the first byte of every write it executed, in order.
type gateDev struct {
	*device.Memory
	gate    byte
	once    sync.Once
	entered chan struct{} // closed when the held write reaches the device
	release chan struct{} // closed by the test to let it go on
	exited  chan struct{} // closed once the held write is done

	mu     sync.Mutex
	writes []byte
}

func newGateDev(size int64, gate byte) *gateDev {
	return &gateDev{Memory: device.NewMemory(size), gate: gate,
		entered: make(chan struct{}), release: make(chan struct{}), exited: make(chan struct{})}
}

func (g *gateDev) WriteAt(p []byte, off int64, fua bool) error {
	held := false
	if len(p) > 0 && p[0] == g.gate {
		g.once.Do(func() { held = true })
	}
	if held {
		close(g.entered)
		<-g.release
		defer close(g.exited)
	}
	err := g.Memory.WriteAt(p, off, fua)
	g.mu.Lock()
	g.writes = append(g.writes, p[0])
	g.mu.Unlock()
	return err
}

func (g *gateDev) executed() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return string(g.writes)
}

func newSessionID(t testing.TB) [16]byte {
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		t.Fatal(err)
	}
	return id
}

type dialResult struct {
	c   *Client
	err error
}

func dialAsync(sock string, opts ClientOptions) chan dialResult {
	ch := make(chan dialResult, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		c, err := Dial(ctx, "unix", sock, opts)
		ch <- dialResult{c, err}
	}()
	return ch
}

func fill(b byte) []byte { return bytes.Repeat([]byte{b}, device.BlockSize) }

// TestSessionReinstatementLostWrite is the lost write of the chaos run
// (docs/GUARANTEES.md), made deterministic inside one server: a client
// writes W_old to block B on connection 1, the server has read it and it
// is executing (held in the device); the client leaves the connection and
// connects again to the same server, writes W_new to B and gets it
// acknowledged. Without session reinstatement W_old then lands after W_new
// and B holds W_old: the acknowledged W_new is lost. With it, the GO of
// connection 2 does not complete until W_old has ended, so B holds W_new.
func TestSessionReinstatementLostWrite(t *testing.T) {
	const blockB = 8 * device.BlockSize
	for _, tc := range []struct {
		name    string
		session bool
		want    byte // what B holds at the end
	}{
		{"with reinstatement", true, 'N'},
		{"without (the lost write)", false, 'O'},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev := newGateDev(1<<20, 'O')
			srv, sock := startServer(t, Export{Name: "vol", Device: dev})
			id := newSessionID(t)
			opts := func(gen uint64) ClientOptions {
				o := ClientOptions{Export: "vol"}
				if tc.session {
					o.Session = &Session{ID: id, Generation: gen}
				}
				return o
			}
			c1 := dialT(t, sock, opts(1))
			if c1.Info().Session != tc.session {
				t.Fatalf("Info().Session = %v, want %v", c1.Info().Session, tc.session)
			}
			go c1.WriteAt(fill('O'), blockB, false) // W_old; fails once aborted
			<-dev.entered
			c1.Abort() // the client leaves the connection (a timeout, a cut)

			res := dialAsync(sock, opts(2))
			var c2 *Client
			if tc.session {
				select {
				case r := <-res:
					t.Fatalf("GO completed while W_old was still executing on the older connection (err %v)", r.err)
				case <-time.After(300 * time.Millisecond):
				}
				close(dev.release)
				r := <-res
				mustOK(t, r.err)
				c2 = r.c
				select {
				case <-dev.exited:
				default:
					t.Fatal("GO completed before W_old ended")
				}
			} else {
				r := <-res
				mustOK(t, r.err)
				c2 = r.c
			}
			defer c2.Close()
			mustOK(t, c2.WriteAt(fill('N'), blockB, false)) // W_new, acknowledged
			if !tc.session {
				close(dev.release) // the old request goes on after W_new
				<-dev.exited
			}
			got := make([]byte, device.BlockSize)
			mustOK(t, c2.ReadAt(got, blockB))
			if got[0] != tc.want || !bytes.Equal(got, fill(got[0])) {
				t.Fatalf("block B holds %q..., want %q (writes executed in order: %q)", got[:4], tc.want, dev.executed())
			}
			c2.Close()
			waitFor(t, "session bookkeeping freed", func() bool { return srv.sessionCount() == 0 })
		})
	}
}

// TestSessionReinstatementDropsUnstarted: a request the server has read on
// the older connection but not started when a newer connection of the
// session arrives is dropped, never executed, and the older connection
// gets no reply at all.
func TestSessionReinstatementDropsUnstarted(t *testing.T) {
	dev := newGateDev(1<<20, 'X')
	srv, sock, _ := startLoggedServer(t, func(s *Server) { s.Workers = 1 }, Export{Name: "vol", Device: dev})
	id := newSessionID(t)

	r := dialRaw(t, sock)
	r.greet(clientFixedNewstyle | clientNoZeroes)
	r.opt(optSession, Session{ID: id, Generation: 1}.encode())
	if typ, _ := r.optReply(optSession); typ != repAck {
		t.Fatalf("HACS_SESSION answered %#x, want ACK", typ)
	}
	r.opt(optGo, goData("vol"))
	if typ := r.finalReply(optGo); typ != repAck {
		t.Fatalf("GO refused: %#x", typ)
	}
	// One write: the held request and W_old behind it, so the server's
	// buffered reader takes both; its only worker is held in the device
	// by the first.
	var out []byte
	for i, b := range []byte{'X', 'O'} {
		var h [requestHeaderLen]byte
		request{typ: cmdWrite, cookie: uint64(i + 1), offset: uint64(i) * device.BlockSize, length: device.BlockSize}.encode(h[:])
		out = append(append(out, h[:]...), fill(b)...)
	}
	r.write(out)
	<-dev.entered

	res := dialAsync(sock, ClientOptions{Export: "vol", Session: &Session{ID: id, Generation: 2}})
	// Generation 2 has cut 1 (and waits for it) before the held request
	// ends: W_old is then read but not started.
	waitFor(t, "generation 2 registered", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		st := srv.sessions[sessionKey{export: "vol", id: id}]
		return st != nil && st.gen == 2
	})
	close(dev.release)
	c2 := <-res
	mustOK(t, c2.err)
	defer c2.c.Close()
	if got := dev.executed(); got != "X" {
		t.Fatalf("writes executed: %q, want only the one already executing (X)", got)
	}
	got := make([]byte, device.BlockSize)
	mustOK(t, c2.c.ReadAt(got, device.BlockSize))
	if !device.IsZero(got) {
		t.Fatal("the dropped W_old reached the device")
	}
	mustOK(t, c2.c.Flush())
	if got := dev.executed(); got != "X" {
		t.Fatalf("writes executed later: %q", got)
	}
	// Not a byte of reply on the cut connection.
	r.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [1]byte
	if n, err := r.nc.Read(b[:]); n != 0 || err == nil || isTimeout(err) {
		t.Fatalf("the cut connection read %d bytes, err %v; want none and its end", n, err)
	}
}

// TestSessionGenerations: a connection of an older generation than one the
// server knows for the session is refused, so is a generation another open
// connection uses; a newer one cuts the current; other sessions, other
// exports and clients without a session are not affected; an older
// connection whose request does not end in ReinstateTimeout makes the GO
// fail (the client tries again), never proceed.
func TestSessionGenerations(t *testing.T) {
	dev := newGateDev(1<<20, 'H')
	srv, sock := startServer(t, Export{Name: "vol", Device: dev}, memExport("other", 1<<20))
	srv.ReinstateTimeout = 300 * time.Millisecond
	id := newSessionID(t)
	dial := func(export string, gen uint64) (*Client, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return Dial(ctx, "unix", sock, ClientOptions{Export: export, Session: &Session{ID: id, Generation: gen}})
	}
	c5, err := dial("vol", 5)
	mustOK(t, err)
	defer c5.Close()
	plain := dialT(t, sock, ClientOptions{Export: "vol"})
	otherSession := dialT(t, sock, ClientOptions{Export: "vol", Session: &Session{ID: newSessionID(t), Generation: 1}})
	otherExport, err := dial("other", 1)
	mustOK(t, err)
	defer otherExport.Close()

	for _, tc := range []struct {
		gen  uint64
		want string
	}{
		{4, "older than generation 5"},
		{1, "older than generation 5"},
		{5, "already used by another connection"},
	} {
		c, err := dial("vol", tc.gen)
		if err == nil {
			c.Close()
			t.Fatalf("generation %d admitted while 5 is open", tc.gen)
		}
		if !strings.Contains(err.Error(), "refused by policy") || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("generation %d: %v, want a policy refusal %q", tc.gen, err, tc.want)
		}
	}
	mustOK(t, c5.Flush()) // the refusals did not disturb it

	// A request held in the device on generation 6; 7 waits for it in
	// vain, its GO fails after ReinstateTimeout; once the request ends,
	// 8 proceeds.
	c6, err := dial("vol", 6)
	mustOK(t, err)
	select {
	case <-c5.Done(): // cut by 6
	case <-time.After(5 * time.Second):
		t.Fatal("generation 5 not cut by 6")
	}
	go c6.WriteAt(fill('H'), 0, false)
	<-dev.entered
	c6.Abort()
	start := time.Now()
	if c, err := dial("vol", 7); err == nil {
		c.Close()
		t.Fatal("GO completed while an older connection's request was still in the device")
	} else if !strings.Contains(err.Error(), "still has requests in the device") {
		t.Fatalf("generation 7: %v", err)
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Fatalf("refused after %v, before ReinstateTimeout", d)
	}
	close(dev.release)
	c8, err := dial("vol", 8)
	mustOK(t, err)
	mustOK(t, c8.Flush())

	for name, c := range map[string]*Client{"no session": plain, "other session": otherSession, "other export": otherExport} {
		if c.Err() != nil {
			t.Fatalf("%s: connection broken: %v", name, c.Err())
		}
		mustOK(t, c.Flush())
	}
	c8.Close()
	otherSession.Close()
	otherExport.Close()
	waitFor(t, "session bookkeeping freed", func() bool { return srv.sessionCount() == 0 })
}

// TestSessionOptionBadInput: malformed HACS_SESSION data is refused with
// NBD_REP_ERR_INVALID and the negotiation goes on.
func TestSessionOptionBadInput(t *testing.T) {
	_, sock := startServer(t, memExport("vol", 1<<20))
	for _, data := range [][]byte{nil, make([]byte, 23), make([]byte, 25), make([]byte, 24)} {
		r := dialRaw(t, sock)
		r.greet(clientFixedNewstyle | clientNoZeroes)
		r.opt(optSession, data)
		if typ, msg := r.optReply(optSession); typ != repErrInvalid {
			t.Fatalf("%d bytes: answered %#x %q, want INVALID", len(data), typ, msg)
		}
		r.opt(optGo, goData("vol"))
		if typ := r.finalReply(optGo); typ != repAck {
			t.Fatalf("GO after a refused HACS_SESSION: %#x", typ)
		}
	}
}

// TestSessionOptionUnknownToServer: a server that does not know
// HACS_SESSION (nbdkit) answers NBD_REP_ERR_UNSUP; the client goes on
// without reinstatement. scripts/install-deps.sh installs nbdkit.
func TestSessionOptionUnknownToServer(t *testing.T) {
	if _, err := exec.LookPath("nbdkit"); err != nil {
		t.Fatal("nbdkit not installed (scripts/install-deps.sh installs it)")
	}
	sock := filepath.Join(t.TempDir(), "nbdkit.sock")
	cmd := exec.Command("nbdkit", "--foreground", "--exit-with-parent", "--unix", sock, "memory", "1M")
	mustOK(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var c *Client
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var err error
		c, err = Dial(ctx, "unix", sock, ClientOptions{Session: &Session{ID: newSessionID(t), Generation: 1}})
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dial nbdkit: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	defer c.Close()
	if c.Info().Session {
		t.Fatal("Info().Session set against a server without the option")
	}
	mustOK(t, c.WriteAt(fill('A'), 0, false))
	got := make([]byte, device.BlockSize)
	mustOK(t, c.ReadAt(got, 0))
	if got[0] != 'A' {
		t.Fatal("read back wrong data")
	}
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
