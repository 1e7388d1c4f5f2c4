// Package attach is the vhost side of a volume: a device that follows the
// volume's primary through failover. Each request goes to the current
// primary over NBD; when the primary dies, is fenced, or stalls, the request
// is sent again to whichever node the cluster names next, so a client sees a
// pause, never an I/O error, and never a lost write (an acknowledged write is
// on every in-sync replica, so on the new primary too). The follower is then
// exported locally (NBD on a Unix socket or TCP) and, optionally, as a plain
// file through FUSE for hosts without the nbd kernel module.
package attach

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hacs/hacs/internal/device"
	"github.com/hacs/hacs/internal/nbd"
	"github.com/hacs/hacs/internal/tlspsk"
)

// Target is where the volume is served now.
type Target struct {
	Network string // "tcp" or "unix"
	Addr    string
	Export  string
	// TLS, if set, connects with NBD STARTTLS.
	TLS *tls.Config
	// PSK, if set, connects with NBD STARTTLS and this pre-shared key
	// instead (not with TLS).
	PSK   *tlspsk.Config
	Epoch uint64 // for logs: which primary this is
}

// same tells whether t and o name the same primary tenure: the same
// server, export and epoch. (Target values are not compared with ==: each
// resolve may carry a new TLS or PSK configuration.)
func (t Target) same(o Target) bool {
	return t.Network == o.Network && t.Addr == o.Addr && t.Export == o.Export && t.Epoch == o.Epoch
}

// Resolver names the volume's current primary. It may block until one is
// known, or fail (the follower retries until its pause limit).
type Resolver func(ctx context.Context) (Target, error)

// Follower is a device.Device that follows a volume's primary.
type Follower struct {
	resolve Resolver
	log     *slog.Logger
	// MaxPause bounds how long a request waits for a primary before it
	// fails with EIO (default 2 minutes).
	MaxPause time.Duration

	size int64
	caps device.Capabilities

	mu     sync.Mutex
	cur    *nbd.Client
	target Target
	gen    uint64 // bumped on every reconnect
	closed bool
	ctx    context.Context
	cancel context.CancelFunc

	// Failovers counts reconnections after the first.
	failovers int

	// session reinstatement: every connection names the follower's
	// session and a new generation (nbd.Session), so that a server it
	// reconnects to cuts the connection it left, and waits for the
	// requests still inside the server on it, before serving the new one
	session  [16]byte
	sessGen  atomic.Uint64
	noReinst atomic.Bool // a server without it was met (warned once)

	// in flight, for the watchdog that leaves a silent primary
	inflight     atomic.Int64
	lastProgress atomic.Int64 // unix nanoseconds of the last completion
}

// deadPeerTimeout fails a connection to a primary that no longer
// acknowledges anything (nbd.ClientOptions.DeadPeerTimeout): a primary
// that closed the connection while a partition dropped the reset, which
// the cluster still names (so the watchdog keeps it), would otherwise hold
// the requests for TCP's retransmission back-off after the partition
// heals (13 s seen in a chaos run).
const deadPeerTimeout = 5 * time.Second

// stallCheck is how long requests may wait without any completing before
// the follower asks the cluster whether the primary moved.
const stallCheck = time.Second

// NewFollower connects to the current primary and returns the follower.
func NewFollower(ctx context.Context, resolve Resolver, logger *slog.Logger) (*Follower, error) {
	if logger == nil {
		logger = slog.Default()
	}
	f := &Follower{resolve: resolve, log: logger, MaxPause: 2 * time.Minute}
	if _, err := rand.Read(f.session[:]); err != nil {
		return nil, fmt.Errorf("attach: session id: %w", err)
	}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	c, t, err := f.connect(ctx)
	if err != nil {
		f.cancel()
		return nil, err
	}
	f.cur, f.target = c, t
	f.size = c.Size()
	f.caps = c.Capabilities()
	f.caps.MultiConn = true // every request goes through this one follower
	f.log.Info("attached", "primary", t.Addr, "export", t.Export, "epoch", t.Epoch, "size", f.size)
	go f.watch()
	return f, nil
}

// watch leaves a primary that stopped answering without closing its
// connection (a machine that lost power, a partition): when requests make
// no progress and the cluster names another primary, the old connection is
// closed, which sends its requests to the new one. Otherwise they would wait
// for TCP to give up, many minutes.
func (f *Follower) watch() {
	t := time.NewTicker(stallCheck / 2)
	defer t.Stop()
	for {
		select {
		case <-f.ctx.Done():
			return
		case <-t.C:
		}
		if f.inflight.Load() == 0 || time.Since(time.Unix(0, f.lastProgress.Load())) < stallCheck {
			continue
		}
		ctx, cancel := context.WithTimeout(f.ctx, 2*time.Second)
		nt, err := f.resolve(ctx)
		cancel()
		if err != nil {
			continue
		}
		f.mu.Lock()
		cur, c := f.target, f.cur
		f.mu.Unlock()
		if c == nil || nt.same(cur) {
			// Still the primary the cluster names: it is slow (a replica
			// or the cluster store holds its I/O), or the connection is
			// dead, which deadPeerTimeout finds. Leaving it would only
			// send the same requests to the same server again.
			continue
		}
		f.log.Warn("primary silent while the cluster names another: leaving it", "silent", cur.Addr, "epoch", cur.Epoch, "new", nt.Addr, "new_epoch", nt.Epoch)
		go c.Abort() // pending requests fail over to the new primary
	}
}

func (f *Follower) connect(ctx context.Context) (*nbd.Client, Target, error) {
	t, err := f.resolve(ctx)
	if err != nil {
		return nil, t, err
	}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	sess := &nbd.Session{ID: f.session, Generation: f.sessGen.Add(1)}
	c, err := nbd.Dial(dctx, t.Network, t.Addr, nbd.ClientOptions{Export: t.Export, TLS: t.TLS, PSK: t.PSK, Session: sess, DeadPeerTimeout: deadPeerTimeout})
	if err != nil {
		return nil, t, err
	}
	if !c.Info().Session && !f.noReinst.Swap(true) {
		f.log.Warn("the primary does not support session reinstatement (NBD_OPT_HACS_SESSION): a request it still holds on a connection this client left could land after newer writes",
			"primary", t.Addr, "export", t.Export)
	}
	if f.size != 0 && c.Size() > f.size {
		// Grown (hacs volume resize): the device keeps the size it was
		// attached with; the rest is reached by attaching again.
		f.log.Warn("the volume grew: this attachment keeps its size; detach and attach again to use the new size",
			"attached_size", f.size, "new_size", c.Size())
	} else if f.size != 0 && c.Size() != f.size {
		c.Close()
		return nil, t, fmt.Errorf("primary at %s serves %d bytes, volume had %d", t.Addr, c.Size(), f.size)
	}
	return c, t, nil
}

// client returns the current connection and its generation.
func (f *Follower) client() (*nbd.Client, uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, 0, device.ErrClosed
	}
	return f.cur, f.gen, nil
}

// maxFollowBackoff bounds the wait between two attempts to find and reach
// the primary. A failover takes about the lease TTL (2 s by default); with
// a doubling backoff capped at 500 ms the client found the new primary up
// to 500 ms after it served (scripts/bench-failover.sh measured 2.18 s
// from the kill to the first good write, 2.07 s to the new primary). One
// attempt is one API request and, once a primary is named, one dial.
const maxFollowBackoff = 100 * time.Millisecond

// followLogEvery spaces the follower's "no primary reachable yet" lines.
const followLogEvery = 5 * time.Second

// reconnect replaces the connection of generation gen (if nobody did yet)
// with one to the current primary, waiting until deadline.
func (f *Follower) reconnect(gen uint64, cause error, deadline time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return device.ErrClosed
	}
	if f.gen != gen {
		return nil // another request already moved on
	}
	if f.cur != nil {
		f.cur.Abort() // its unsent requests must never arrive later
		f.cur = nil
	}
	f.log.Warn("primary unavailable, following the volume", "primary", f.target.Addr, "epoch", f.target.Epoch, "cause", cause)
	start := time.Now()
	backoff := 20 * time.Millisecond
	attempts, lastLog := 0, time.Time{}
	for {
		ctx, cancel := context.WithDeadline(f.ctx, deadline)
		c, t, err := f.connect(ctx)
		cancel()
		if err == nil {
			f.cur, f.target = c, t
			f.gen++
			f.failovers++
			f.log.Info("reattached", "primary", t.Addr, "epoch", t.Epoch, "paused", time.Since(start).Round(time.Millisecond))
			return nil
		}
		if time.Now().Add(backoff).After(deadline) || f.ctx.Err() != nil {
			return fmt.Errorf("no primary reachable after %v: %v: %w", time.Since(start).Round(time.Millisecond), err, syscall.EIO)
		}
		if attempts++; attempts == 1 || time.Since(lastLog) >= followLogEvery {
			// what the pause waits on (the cluster's answer, a dial, a
			// handshake, a session reinstatement), now and then
			lastLog = time.Now()
			f.log.Info("no primary reachable yet", "attempts", attempts, "waited", time.Since(start).Round(time.Millisecond), "target", t.Addr, "epoch", t.Epoch, "err", err)
		}
		f.mu.Unlock()
		time.Sleep(backoff)
		f.mu.Lock()
		if f.closed {
			return device.ErrClosed
		}
		if f.gen != gen {
			return nil
		}
		backoff = min(2*backoff, maxFollowBackoff)
	}
}

// retryable tells failures that a new primary can cure from the client's
// own mistakes (EINVAL, ENOSPC, EPERM), which are returned as they are.
func retryable(c *nbd.Client, err error) bool {
	if c.Err() != nil {
		return true // the connection broke
	}
	var pe *nbd.ProtocolError
	if errors.As(err, &pe) {
		return pe.Errno == syscall.ESHUTDOWN || pe.Errno == syscall.EIO
	}
	return true
}

// do runs op against the current primary until it succeeds, fails with a
// client error, or no primary appears within MaxPause.
func (f *Follower) do(op func(c *nbd.Client) error) error {
	f.inflight.Add(1)
	defer func() {
		f.inflight.Add(-1)
		f.lastProgress.Store(time.Now().UnixNano())
	}()
	var deadline time.Time
	answered := 0 // errors the primary answered with (its connection intact)
	for {
		c, gen, err := f.client()
		if err != nil {
			return err
		}
		if c != nil {
			err = op(c)
			if err == nil || !retryable(c, err) {
				return err
			}
			if c.Err() == nil {
				// The primary answered EIO or ESHUTDOWN: it may answer the
				// same again at once (I/O stalled until a failed replica's
				// drop is recorded; a fenced primary whose successor the
				// cluster does not name yet). Try again at most every
				// maxFollowBackoff, not in a loop of connections (a chaos
				// run saw 1678 in 30 s from one client).
				if answered > 0 {
					time.Sleep(min(10*time.Millisecond<<min(answered, 4), maxFollowBackoff))
				}
				answered++
			}
		} else {
			err = errors.New("not connected")
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(f.MaxPause)
		}
		if rerr := f.reconnect(gen, err, deadline); rerr != nil {
			return rerr
		}
	}
}

// Target returns the primary the follower uses now.
func (f *Follower) Target() Target {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.target
}

// Failovers is how many times the follower moved to another primary.
func (f *Follower) Failovers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.failovers
}

// Size implements device.Device.
func (f *Follower) Size() int64 { return f.size }

// Capabilities implements device.Device.
func (f *Follower) Capabilities() device.Capabilities { return f.caps }

// ReadAt implements device.Device.
func (f *Follower) ReadAt(p []byte, off int64) error {
	return f.do(func(c *nbd.Client) error { return c.ReadAt(p, off) })
}

// WriteAt implements device.Device.
func (f *Follower) WriteAt(p []byte, off int64, fua bool) error {
	return f.do(func(c *nbd.Client) error { return c.WriteAt(p, off, fua) })
}

// Flush implements device.Device.
func (f *Follower) Flush() error { return f.do(func(c *nbd.Client) error { return c.Flush() }) }

// Trim implements device.Device.
func (f *Follower) Trim(off, n int64) error {
	return f.do(func(c *nbd.Client) error { return c.Trim(off, n) })
}

// WriteZeroes implements device.Device.
func (f *Follower) WriteZeroes(off, n int64, fl device.ZeroFlags) error {
	return f.do(func(c *nbd.Client) error { return c.WriteZeroes(off, n, fl) })
}

// Extents implements device.Device.
func (f *Follower) Extents(off, n int64) ([]device.Extent, error) {
	var exts []device.Extent
	err := f.do(func(c *nbd.Client) error {
		var err error
		exts, err = c.Extents(off, n)
		return err
	})
	return exts, err
}

// Close flushes and disconnects.
func (f *Follower) Close() error {
	ferr := f.Flush()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	f.closed = true
	f.cancel()
	if f.cur != nil {
		f.cur.Close()
	}
	return ferr
}
