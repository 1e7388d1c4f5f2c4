// Package mirror is the replicated volume on its primary: a device.Device
// built from one device per replica (the local one, and remote ones reached
// over NBD), in the role DRBD plays in the classic stack.
//
// Writes go to every in-sync replica in parallel and are acknowledged when
// all have them; flush and FUA are durable on every one. A replica that fails
// or times out is dropped from the in-sync set by a fenced, epoch-conditioned
// update of the volume's State; until that update succeeds the write is not
// acknowledged, and if the epoch moved on the mirror fences itself. While a
// replica is out the mirror tracks the chunks it misses and copies only those
// when it returns (quick resync, with rate control and progress), sending new
// writes to it meanwhile. An activity log of hot regions, persisted on every
// replica before the first write into a region, lets a new primary reconcile
// the writes a crashed primary had in flight (see meta.go).
//
// Locking: every I/O holds mu for reading for its whole duration, so a state
// change (which takes mu for writing) happens between I/Os, never during
// one. Failures are handled after the read lock is released.
package mirror

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hacs/hacs/internal/device"
)

// ChunkSize is the resync and verify granularity.
const ChunkSize = device.ChecksumChunk

// Errors.
var (
	ErrFenced  = fmt.Errorf("volume is fenced: a newer primary has taken over: %w", syscall.ESHUTDOWN)
	ErrTimeout = fmt.Errorf("replica did not answer in time: %w", syscall.EIO)
	ErrNoQuorm = fmt.Errorf("no in-sync replica left: %w", syscall.EIO)
	// ErrClosed fails I/O that reaches a mirror after Close (this node
	// stopped serving the volume); ESHUTDOWN makes clients look for the
	// volume's new primary.
	ErrClosed = fmt.Errorf("volume is no longer served here: %w", device.ErrClosed)
)

// Replica describes one replica of the volume.
type Replica struct {
	ID string
	// Local marks the primary's own replica (reads prefer it; no timeout).
	Local bool
	// Dial opens the replica device at the mirror's epoch (for a remote
	// replica, an NBD client to its replica server). It is called again
	// to reconnect after a failure.
	Dial func(ctx context.Context, epoch uint64) (device.Device, error)
}

// Config configures a Mirror.
type Config struct {
	Volume   string
	Self     string // this node: must be the volume's primary in the store
	Size     int64  // data size; replica devices are ReplicaSize(Size)
	Replicas []Replica
	Store    StateStore
	// Timeout fails a replica that does not answer a request in time
	// (default 5s).
	Timeout time.Duration
	// StoreTimeout bounds the wait for a fenced state update (default 10s).
	StoreTimeout time.Duration
	// RetryInterval paces reconnection attempts (default 1s).
	RetryInterval time.Duration
	// ResyncRate limits resync traffic in bytes per second (0: unlimited).
	ResyncRate int64
	Logger     *slog.Logger
	OnEvent    func(Event)
	// Stats, when set, receives the I/O statistics (see Mirror.Stats);
	// otherwise the mirror keeps its own.
	Stats *Stats
}

// Event is something that happened to the volume, for logs and operators.
type Event struct {
	Time    time.Time
	Volume  string
	Replica string
	Kind    string
	Message string
}

// LegState is a replica's replication state.
type LegState int

// Replica states.
const (
	InSync    LegState = iota // holds every acknowledged write
	Outdated                  // misses writes; not receiving new ones
	Resyncing                 // receiving new writes and being caught up
)

func (s LegState) String() string {
	return [...]string{"in-sync", "outdated", "resyncing"}[s]
}

type leg struct {
	Replica
	dev   device.Device
	state LegState
	// dirty: chunks it certainly misses (written while it was out);
	// suspect: chunks that may differ (hot when it failed, recorded in
	// metadata, or all of them when its history is unknown), compared by
	// checksum before copying.
	dirty   *bitmap
	suspect *bitmap
	lastErr string
	// listed: the store may list it in the in-sync set (it is in sync, or
	// its promotion is under way), so taking it out of service must go
	// through a fenced store update. Every in-sync leg is listed.
	listed bool
	// gen counts the times it was taken out of service: a promotion that
	// finds it changed after its store update gives up.
	gen       uint64
	resyncing atomic.Bool // a resync goroutine owns it
	removed   atomic.Bool // taken out of the volume: its resync ends
	// progress
	resyncTotal atomic.Int64
	resyncDone  atomic.Int64
	resyncSent  atomic.Int64
	resyncStart time.Time
}

// Mirror is a replicated volume served by its primary.
type Mirror struct {
	cfg    Config
	log    *slog.Logger
	epoch  uint64
	size   int64
	chunks int

	mu     sync.RWMutex
	legs   []*leg
	fenced atomic.Bool
	closed atomic.Bool // checked under mu: Close closes the devices under it
	// want is the in-sync set the store must hold: the listed legs. It
	// changes under mu (held for writing) and is read, without mu, inside
	// store updates, so that of concurrent updates the store keeps the
	// latest set (see storeInSync).
	want atomic.Pointer[[]string]
	// ids are the legs' replica ids (Replicas), kept beside legs so that
	// listing them never waits for mu (held across store updates).
	ids atomic.Pointer[[]string]

	// stripes order writes, reads, resync copies and verify per chunk.
	stripes [stripeCount]sync.RWMutex
	// pendingDrops are listed legs that failed I/O whose drop could not be
	// committed, with the failure and the leg's gen then, retried by one
	// goroutine while dropRetrying (both under mu).
	pendingDrops map[*leg]pendingDrop
	dropRetrying bool
	// unsettled are the chunks of writes that failed on some replicas
	// whose drop from the in-sync set is not committed yet: not readable.
	unsettled unsettledSet

	al activityLog

	stats *Stats

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Open starts serving a volume as its primary. The store must already name
// cfg.Self the primary (see Init and TakeOver). Open reconciles the writes a
// previous primary may have left in flight before it returns.
func Open(ctx context.Context, cfg Config) (*Mirror, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.StoreTimeout <= 0 {
		cfg.StoreTimeout = 10 * time.Second
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if len(cfg.Replicas) == 0 || len(cfg.Replicas) > MaxReplicas {
		return nil, fmt.Errorf("volume %s: %d replicas: must be 1 to %d", cfg.Volume, len(cfg.Replicas), MaxReplicas)
	}
	if cfg.Size <= 0 {
		return nil, fmt.Errorf("volume %s: size must be positive", cfg.Volume)
	}
	st, err := cfg.Store.Load(ctx, cfg.Volume)
	if err != nil {
		return nil, fmt.Errorf("volume %s: load state: %w", cfg.Volume, err)
	}
	if st.Primary != cfg.Self || st.Epoch == 0 {
		return nil, fmt.Errorf("volume %s: this node (%s) is not the primary (store says %q, epoch %d)", cfg.Volume, cfg.Self, st.Primary, st.Epoch)
	}
	// Commit the record before serving from it. An update of an earlier
	// mirror whose outcome was unknown (its context ended while the store
	// had it) either committed before this one, and is read here, or can
	// never commit after it: otherwise a late drop would leave the store
	// listing fewer replicas than this mirror counts in sync, and nothing
	// would bring them back.
	st, err = cfg.Store.Update(ctx, cfg.Volume, st.Epoch, func(s *State) error {
		if s.Primary != cfg.Self {
			return fmt.Errorf("volume %s: the store names %q primary: %w", cfg.Volume, s.Primary, ErrEpochChanged)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("volume %s: committing its state before serving: %w", cfg.Volume, err)
	}
	m := &Mirror{
		cfg:    cfg,
		log:    cfg.Logger.With("volume", cfg.Volume, "epoch", st.Epoch),
		epoch:  st.Epoch,
		size:   cfg.Size,
		chunks: int((cfg.Size + ChunkSize - 1) / ChunkSize),
		stats:  cfg.Stats,
	}
	if m.stats == nil {
		m.stats = NewStats()
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	m.al.init(Regions(cfg.Size))
	for _, r := range cfg.Replicas {
		m.legs = append(m.legs, &leg{Replica: r, state: Outdated, dirty: newBitmap(m.chunks), suspect: newBitmap(m.chunks)})
	}
	m.setIDsLocked()
	if err := m.start(ctx, st); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

// start connects the replicas, reconciles and launches resyncs.
func (m *Mirror) start(ctx context.Context, st State) error {
	// Connect every replica in parallel.
	var wg sync.WaitGroup
	for _, l := range m.legs {
		wg.Add(1)
		go func(l *leg) {
			defer wg.Done()
			dctx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
			defer cancel()
			dev, err := m.dial(dctx, l)
			if err != nil {
				l.lastErr = err.Error()
				m.event(l.ID, "replica-unreachable", err.Error())
				return
			}
			l.dev = dev
		}(l)
	}
	wg.Wait()
	var src *leg
	var failed []*leg
	for _, l := range m.legs {
		if st.Has(l.ID) {
			l.state = InSync
			l.listed = true
			if l.dev == nil {
				failed = append(failed, l)
			} else if src == nil || l.Local && !src.Local {
				src = l
			}
		}
	}
	if src == nil {
		return fmt.Errorf("volume %s: none of the in-sync replicas %v is reachable: %w", m.cfg.Volume, st.InSync, ErrNoQuorm)
	}
	old, err := readMeta(src.dev, m.size)
	if errors.Is(err, errNoMeta) {
		old = &meta{Dirty: map[string][]uint32{}}
	} else if err != nil {
		return fmt.Errorf("volume %s: replica %s: %w", m.cfg.Volume, src.ID, err)
	}
	m.al.seq = old.Seq
	// Reconcile: the regions of the old activity log may differ between
	// in-sync replicas; make them equal to the source.
	for _, l := range m.legs {
		if l == src || l.state != InSync || l.dev == nil {
			continue
		}
		n, err := m.reconcile(src, l, old.AL)
		if err != nil {
			failed = append(failed, l)
			l.lastErr = err.Error()
			continue
		}
		if len(old.AL) > 0 {
			m.event(l.ID, "reconciled", fmt.Sprintf("compared %d hot regions with %s, copied %d bytes", len(old.AL), src.ID, n))
		}
	}
	// Replicas out of sync: what they miss is their recorded dirty regions
	// plus the old activity log; with no record their history is unknown.
	for _, l := range m.legs {
		if l.state == InSync {
			continue
		}
		regs, known := old.Dirty[l.ID]
		if known {
			for _, r := range append(slices.Clone(regs), old.AL...) {
				m.markRegion(l.suspect, r)
			}
		} else {
			l.suspect.setAll(m.chunks)
		}
		m.al.dirty[l.ID] = map[uint32]bool{}
		for _, r := range regs {
			m.al.dirty[l.ID][r] = true
		}
		for _, r := range old.AL {
			m.al.dirty[l.ID][r] = true
		}
	}
	for _, r := range old.AL {
		m.al.setHot(r)
	}
	m.mu.Lock()
	m.setWant(m.inSyncIDs())
	if len(failed) > 0 {
		if err := m.dropLocked(failed, errors.New("unreachable at start")); err != nil {
			m.mu.Unlock()
			return err
		}
	}
	// A fresh record at our epoch on every in-sync replica.
	if f := m.commitLocked(m.targetsLocked()); len(f) > 0 {
		if err := m.dropLocked(legsOf(f), errors.New("metadata write failed")); err != nil {
			m.mu.Unlock()
			return err
		}
	}
	inSync := m.inSyncIDs()
	var behind []*leg
	for _, l := range m.legs {
		if l.state != InSync {
			behind = append(behind, l)
		}
	}
	m.mu.Unlock()
	// Resync goroutines change leg states under mu: read them before.
	for _, l := range behind {
		m.startResync(l)
	}
	m.event("", "primary-started", fmt.Sprintf("serving at epoch %d with in-sync replicas %v", m.epoch, inSync))
	return nil
}

func (m *Mirror) dial(ctx context.Context, l *leg) (device.Device, error) {
	dev, err := l.Dial(ctx, m.epoch)
	if err != nil {
		return nil, err
	}
	if want := ReplicaSize(m.size); dev.Size() != want {
		dev.Close()
		return nil, fmt.Errorf("replica %s has size %d, want %d", l.ID, dev.Size(), want)
	}
	return dev, nil
}

func (m *Mirror) markRegion(b *bitmap, r uint32) {
	lo := int(int64(r) * RegionSize / ChunkSize)
	hi := min(int(int64(r+1)*RegionSize/ChunkSize), m.chunks)
	if lo < hi {
		b.setRange(lo, hi)
	}
}

func (m *Mirror) event(replica, kind, msg string) {
	lvl := slog.LevelInfo
	switch kind {
	case "replica-failed", "replica-dropped", "fenced", "replica-unreachable", "stalled":
		lvl = slog.LevelWarn
	}
	m.log.Log(context.Background(), lvl, msg, "event", kind, "replica", replica)
	if m.cfg.OnEvent != nil {
		m.cfg.OnEvent(Event{Time: time.Now(), Volume: m.cfg.Volume, Replica: replica, Kind: kind, Message: msg})
	}
}

// Epoch is the epoch this primary serves at.
func (m *Mirror) Epoch() uint64 { return m.epoch }

// Size implements device.Device.
func (m *Mirror) Size() int64 { return m.size }

// Capabilities implements device.Device.
func (m *Mirror) Capabilities() device.Capabilities {
	return device.Capabilities{Flush: true, FUA: true, Trim: true, Zero: true, Extents: true, MultiConn: true}
}

// targetsLocked lists the replicas writes go to. Callers hold mu.
func (m *Mirror) targetsLocked() []*leg {
	out := make([]*leg, 0, len(m.legs))
	for _, l := range m.legs {
		if l.dev != nil && (l.state == InSync || l.state == Resyncing) {
			out = append(out, l)
		}
	}
	return out
}

// sourceLocked picks the replica reads come from: the local one when in
// sync, else a remote in-sync one.
func (m *Mirror) sourceLocked() *leg {
	var src *leg
	for _, l := range m.legs {
		if l.state == InSync && l.dev != nil && (src == nil || l.Local && !src.Local) {
			src = l
		}
	}
	return src
}

func (m *Mirror) inSyncIDs() []string {
	var ids []string
	for _, l := range m.legs {
		if l.state == InSync {
			ids = append(ids, l.ID)
		}
	}
	return ids
}

type legResult struct {
	l   *leg
	err error
}

// fanout runs op on every leg in parallel (the local one inline) and returns
// the legs that failed or did not answer within the timeout.
func (m *Mirror) fanout(legs []*leg, op func(device.Device) error) []legResult {
	if len(legs) == 1 && legs[0].Local {
		if err := op(legs[0].dev); err != nil {
			return []legResult{{legs[0], err}}
		}
		return nil
	}
	results := make(chan legResult, len(legs))
	remote := 0
	var local *leg
	for _, l := range legs {
		if l.Local {
			local = l
			continue
		}
		remote++
		go func(l *leg, dev device.Device) {
			results <- legResult{l, op(dev)}
		}(l, l.dev)
	}
	var failed []legResult
	if local != nil {
		if err := op(local.dev); err != nil {
			failed = append(failed, legResult{local, err})
		}
	}
	if remote == 0 {
		return failed
	}
	timer := time.NewTimer(m.cfg.Timeout)
	defer timer.Stop()
	answered := make(map[*leg]bool, remote)
	for len(answered) < remote {
		select {
		case r := <-results:
			answered[r.l] = true
			if r.err != nil {
				failed = append(failed, r)
			}
		case <-timer.C:
			for _, l := range legs {
				if !l.Local && !answered[l] {
					failed = append(failed, legResult{l, ErrTimeout})
				}
			}
			return failed
		}
	}
	return failed
}

func legsOf(rs []legResult) []*leg {
	out := make([]*leg, 0, len(rs))
	for _, r := range rs {
		out = append(out, r.l)
	}
	return out
}

func isStale(err error) bool { return errors.Is(err, syscall.ESHUTDOWN) }

// stripeCount is the number of chunk locks: chunk c is guarded by stripe
// c % stripeCount.
const stripeCount = 4096

// stripeSpans lists the stripes of chunks [lo, hi) as at most two ascending
// index ranges, so that every locker takes them in the same order.
func stripeSpans(lo, hi int) [2][2]int {
	if hi-lo >= stripeCount {
		return [2][2]int{{0, stripeCount}, {0, 0}}
	}
	a, b := lo%stripeCount, hi%stripeCount
	if hi-lo == 0 {
		return [2][2]int{}
	}
	if a < b {
		return [2][2]int{{a, b}, {0, 0}}
	}
	return [2][2]int{{0, b}, {a, stripeCount}} // wraps around
}

// lockStripes locks the chunks [lo, hi): exclusively for a write, a resync
// copy or a verify, shared for a read. Writes holding them while they reach
// every replica is what keeps reads from seeing a write in flight (a value a
// surviving replica may lack) and overlapping writes in one order on every
// replica.
func (m *Mirror) lockStripes(lo, hi int, shared bool) {
	for _, sp := range stripeSpans(lo, hi) {
		for i := sp[0]; i < sp[1]; i++ {
			if shared {
				m.stripes[i].RLock()
			} else {
				m.stripes[i].Lock()
			}
		}
	}
}

func (m *Mirror) unlockStripes(lo, hi int, shared bool) {
	for _, sp := range stripeSpans(lo, hi) {
		for i := sp[0]; i < sp[1]; i++ {
			if shared {
				m.stripes[i].RUnlock()
			} else {
				m.stripes[i].Unlock()
			}
		}
	}
}

func (m *Mirror) chunkRange(off, n int64) (int, int) {
	if n == 0 {
		return int(off / ChunkSize), int(off / ChunkSize)
	}
	return int(off / ChunkSize), int((off+n-1)/ChunkSize) + 1
}

// write runs a modifying op on every target replica.
func (m *Mirror) write(off, n int64, op func(device.Device) error) error {
	if m.fenced.Load() {
		return ErrFenced
	}
	r0, r1 := uint32(off/RegionSize), uint32((off+max(n, 1)-1)/RegionSize)
	m.al.begin(r0, r1)
	defer m.al.end(r0, r1)
	c0, c1 := m.chunkRange(off, n)

	m.mu.RLock()
	if err := m.stoppedLocked(); err != nil {
		m.mu.RUnlock()
		return err
	}
	targets := m.targetsLocked()
	var failed []legResult
	if !m.al.allHot(r0, r1) {
		failed = m.ensureHot(r0, r1, targets)
	}
	m.lockStripes(c0, c1, false)
	for _, l := range m.legs {
		if l.state == Outdated {
			l.dirty.setRange(c0, c1)
		}
	}
	failed = append(failed, m.fanout(targets, op)...)
	var unsettled *unsettledRange
	if len(failed) > 0 {
		var ids []string
		for _, f := range failed {
			f.l.dirty.setRange(c0, c1)
			ids = append(ids, f.l.ID)
		}
		// recorded before the stripes are released: no read may return
		// this data until the failed replicas are out of the in-sync set
		unsettled = m.unsettled.add(c0, c1, ids)
	}
	m.unlockStripes(c0, c1, false)
	m.mu.RUnlock()
	err := m.handleFailures(failed)
	if unsettled != nil && err == nil {
		m.unsettled.remove(unsettled)
	}
	return err
}

// handleFailures drops failed replicas; the I/O succeeded only if that
// works (or nothing failed).
func (m *Mirror) handleFailures(failed []legResult) error {
	if len(failed) == 0 {
		return nil
	}
	var legs []*leg
	for _, f := range failed {
		if isStale(f.err) {
			m.fence(fmt.Sprintf("replica %s refused our epoch: %v", f.l.ID, f.err))
			return ErrFenced
		}
		if !slices.Contains(legs, f.l) {
			legs = append(legs, f.l)
			m.event(f.l.ID, "replica-failed", f.err.Error())
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.dropLocked(legs, failed[0].err)
}

// dropLocked takes failed replicas out of service. In-sync ones leave the
// in-sync set through a fenced store update first; if that fails the caller
// must not acknowledge its I/O. Callers hold mu for writing.
func (m *Mirror) dropLocked(legs []*leg, cause error) error {
	if m.fenced.Load() {
		return ErrFenced
	}
	// Every listed leg (in sync, or being promoted: the store may list it)
	// leaves the store's in-sync set before the I/O that failed on it can be
	// acknowledged.
	var drop []string
	for _, l := range legs {
		if l.listed && !slices.Contains(drop, l.ID) {
			drop = append(drop, l.ID)
		}
	}
	if len(drop) > 0 {
		var keep []string
		for _, l := range m.legs {
			if l.state == InSync && !slices.Contains(drop, l.ID) {
				keep = append(keep, l.ID)
			}
		}
		if len(keep) == 0 {
			m.event("", "stalled", fmt.Sprintf("every in-sync replica failed (%v); I/O fails until one returns", cause))
			return fmt.Errorf("volume %s: %v: %w", m.cfg.Volume, cause, ErrNoQuorm)
		}
		if err := m.storeWithout(drop); err != nil {
			// The legs stay listed (the store may still hold them); the
			// I/O is not acknowledged, and the drop is tried again until
			// it is recorded: they missed that I/O.
			if !errors.Is(err, ErrFenced) {
				m.event("", "stalled", fmt.Sprintf("cannot drop replicas %v from the in-sync set: %v; I/O is not acknowledged", drop, err))
				m.retryDropLocked(legs, cause)
			}
			return err
		}
		m.event("", "replica-dropped", fmt.Sprintf("replicas %v dropped from the in-sync set after %v; in sync now: %v", drop, cause, keep))
		// what they lack is no longer expected of them
		m.unsettled.dropped(func(id string) bool { return !slices.Contains(drop, id) && m.isListedLocked(id) })
	}
	for _, l := range legs {
		l.listed = false
		l.gen++
		if l.state != Outdated {
			l.state = Outdated
			// Writes it acknowledged but had not flushed may be lost if it
			// crashed: they lie in hot regions, which it must compare.
			m.al.mu.Lock()
			for r := range m.al.hot {
				m.markRegion(l.suspect, r)
			}
			m.al.mu.Unlock()
		}
		if l.dev != nil {
			l.dev.Close()
			l.dev = nil
		}
		l.lastErr = cause.Error()
		if m.al.dirty[l.ID] == nil {
			m.al.dirty[l.ID] = map[uint32]bool{}
		}
	}
	// Record the drop in the metadata of the remaining replicas, so a
	// future primary knows these replicas' history (best effort: without
	// it they get a full compare).
	if f := m.commitLocked(m.targetsLocked()); len(f) > 0 {
		return m.dropLocked(legsOf(f), errors.New("metadata write failed"))
	}
	for _, l := range legs {
		m.startResync(l)
	}
	return nil
}

// retryDropLocked records legs whose drop from the in-sync set could not
// be committed, and starts the goroutine that tries again until it is
// (unless one runs). Without it, a replica that failed a write and then
// answered again would go on counting in sync, lacking that write, and the
// write's chunks would stay unsettled. Callers hold mu for writing.
func (m *Mirror) retryDropLocked(legs []*leg, cause error) {
	if m.pendingDrops == nil {
		m.pendingDrops = map[*leg]pendingDrop{}
	}
	for _, l := range legs {
		if l.listed {
			m.pendingDrops[l] = pendingDrop{cause: cause, gen: l.gen}
		}
	}
	if len(m.pendingDrops) == 0 || m.ctx.Err() != nil || m.dropRetrying {
		return
	}
	m.dropRetrying = true
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		for {
			ok := m.sleep(m.cfg.RetryInterval)
			m.mu.Lock()
			var legs []*leg
			var cause error
			for l, p := range m.pendingDrops {
				// a later drop (even if the leg is in sync again since:
				// its gen moved), a removal or a new in-sync set settled it
				if !l.listed || l.removed.Load() || l.gen != p.gen {
					delete(m.pendingDrops, l)
					continue
				}
				legs, cause = append(legs, l), p.cause
			}
			if !ok || len(legs) == 0 || m.stoppedLocked() != nil {
				m.dropRetrying = false
				m.mu.Unlock()
				return
			}
			if err := m.dropLocked(legs, cause); err == nil {
				for _, l := range legs {
					delete(m.pendingDrops, l)
				}
			}
			m.mu.Unlock()
		}
	}()
}

// pendingDrop is a drop to retry: the failure, and the leg's gen when it
// failed (a drop since then settled it).
type pendingDrop struct {
	cause error
	gen   uint64
}

// storeWithout takes ids out of the wanted in-sync set and commits it to
// the store (storeInSync); if that fails, the wanted set is restored (the
// store may still list them). Callers hold mu for writing.
func (m *Mirror) storeWithout(ids []string) error {
	old := m.wantIDs()
	m.setWant(slices.DeleteFunc(slices.Clone(old), func(id string) bool { return slices.Contains(ids, id) }))
	if err := m.storeInSync(); err != nil {
		m.setWant(old)
		return err
	}
	return nil
}

// setWant sets the in-sync set the store must hold. Callers hold mu for
// writing.
func (m *Mirror) setWant(ids []string) {
	c := slices.Clone(ids)
	m.want.Store(&c)
}

func (m *Mirror) wantIDs() []string {
	if p := m.want.Load(); p != nil {
		return slices.Clone(*p)
	}
	return nil
}

// storeInSync commits the wanted in-sync set (setWant) to the store,
// conditioned on our epoch. It retries until StoreTimeout; ErrEpochChanged
// fences the mirror. The set is read inside the update function, which the
// store runs again when another update got in between: so when two updates
// race (a promotion waiting for the store without mu, a drop holding it),
// the store ends with the later set, and an update that returns nil has
// committed a set at least as new as the one wanted when it was called.
// It may be called without mu.
func (m *Mirror) storeInSync() error {
	ctx, cancel := context.WithTimeout(m.ctx, m.cfg.StoreTimeout)
	defer cancel()
	for {
		_, err := m.cfg.Store.Update(ctx, m.cfg.Volume, m.epoch, func(s *State) error {
			if s.Primary != m.cfg.Self {
				return ErrEpochChanged
			}
			s.InSync = m.wantIDs()
			return nil
		})
		if err == nil {
			return nil
		}
		if errors.Is(err, ErrEpochChanged) {
			m.fence(err.Error())
			return ErrFenced
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("volume %s: in-sync update failed: %v: %w", m.cfg.Volume, err, syscall.EIO)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// fence stops the mirror for good: a newer primary exists.
func (m *Mirror) fence(why string) {
	if m.fenced.Swap(true) {
		return
	}
	m.event("", "fenced", why)
	m.cancel()
}

// stoppedLocked fails I/O on a fenced or closed mirror. Callers hold mu
// (for reading at least), so that no I/O finds the devices closed under it:
// with none left to write to, a write would otherwise be acknowledged.
func (m *Mirror) stoppedLocked() error {
	if m.fenced.Load() {
		return ErrFenced
	}
	if m.closed.Load() {
		return ErrClosed
	}
	return nil
}

// Fenced reports whether the mirror stopped because of a newer primary.
func (m *Mirror) Fenced() bool { return m.fenced.Load() }

// WriteAt implements device.Device.
func (m *Mirror) WriteAt(p []byte, off int64, fua bool) error {
	if err := device.CheckRange(off, int64(len(p)), m.size); err != nil {
		return device.ErrNoSpace
	}
	t := m.stats.begin()
	err := m.write(off, int64(len(p)), func(d device.Device) error { return d.WriteAt(p, off, fua) })
	m.stats.end(OpWrite, t, int64(len(p)), err)
	return err
}

// Trim implements device.Device.
func (m *Mirror) Trim(off, n int64) error {
	if err := device.CheckRange(off, n, m.size); err != nil {
		return err
	}
	t := m.stats.begin()
	err := m.write(off, n, func(d device.Device) error { return d.Trim(off, n) })
	m.stats.end(OpTrim, t, n, err)
	return err
}

// WriteZeroes implements device.Device.
func (m *Mirror) WriteZeroes(off, n int64, f device.ZeroFlags) error {
	if err := device.CheckRange(off, n, m.size); err != nil {
		return device.ErrNoSpace
	}
	f &^= device.ZeroFast // replicas may differ in how fast they zero
	t := m.stats.begin()
	err := m.write(off, n, func(d device.Device) error { return d.WriteZeroes(off, n, f) })
	m.stats.end(OpZero, t, n, err)
	return err
}

// Flush implements device.Device: durable on every in-sync replica.
func (m *Mirror) Flush() error {
	t := m.stats.begin()
	err := m.flush()
	m.stats.end(OpFlush, t, 0, err)
	return err
}

func (m *Mirror) flush() error {
	if m.fenced.Load() {
		return ErrFenced
	}
	m.mu.RLock()
	if err := m.stoppedLocked(); err != nil {
		m.mu.RUnlock()
		return err
	}
	failed := m.fanout(m.targetsLocked(), func(d device.Device) error { return d.Flush() })
	m.mu.RUnlock()
	return m.handleFailures(failed)
}

// ReadAt implements device.Device.
func (m *Mirror) ReadAt(p []byte, off int64) error {
	if err := device.CheckRange(off, int64(len(p)), m.size); err != nil {
		return err
	}
	// Wait for writes in flight on the same chunks, so a read never returns
	// data that a surviving in-sync replica might lack (a dirty read would
	// not be linearizable across a failover).
	c0, c1 := m.chunkRange(off, int64(len(p)))
	t := m.stats.begin()
	err := m.readOp(c0, c1, func(d device.Device) error { return d.ReadAt(p, off) })
	m.stats.end(OpRead, t, int64(len(p)), err)
	return err
}

// Extents implements device.Device.
func (m *Mirror) Extents(off, n int64) ([]device.Extent, error) {
	if err := device.CheckRange(off, n, m.size); err != nil {
		return nil, err
	}
	var exts []device.Extent
	err := m.readOp(0, 0, func(d device.Device) error {
		var err error
		exts, err = d.Extents(off, n)
		return err
	})
	return exts, err
}

// readOp runs op on the read source, failing over to another in-sync
// replica when it fails.
// It holds chunks [c0, c1) shared while it reads.
func (m *Mirror) readOp(c0, c1 int, op func(device.Device) error) error {
	for {
		if m.fenced.Load() {
			return ErrFenced
		}
		m.mu.RLock()
		if err := m.stoppedLocked(); err != nil {
			m.mu.RUnlock()
			return err
		}
		src := m.sourceLocked()
		if src == nil {
			m.mu.RUnlock()
			return ErrNoQuorm
		}
		m.lockStripes(c0, c1, true)
		if c1 > c0 && m.unsettled.overlaps(c0, c1) {
			m.unlockStripes(c0, c1, true)
			m.mu.RUnlock()
			return fmt.Errorf("volume %s: reading chunks %d-%d: %w", m.cfg.Volume, c0, c1-1, ErrUnsettled)
		}
		failed := m.fanout([]*leg{src}, op)
		m.unlockStripes(c0, c1, true)
		m.mu.RUnlock()
		if len(failed) == 0 {
			return nil
		}
		if err := m.handleFailures(failed); err != nil {
			return err
		}
	}
}

// AddReplica adds a replica to the volume (re-replication). Its history
// is unknown, so it is brought in sync by a full checksum compare (holes are
// never sent), in the background; it joins the in-sync set when done.
func (m *Mirror) AddReplica(r Replica) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fenced.Load() {
		return ErrFenced
	}
	for _, l := range m.legs {
		if l.ID == r.ID {
			return fmt.Errorf("volume %s already has a replica on %s", m.cfg.Volume, r.ID)
		}
	}
	if len(m.legs) >= MaxReplicas {
		return fmt.Errorf("volume %s already has %d replicas, the most there may be", m.cfg.Volume, MaxReplicas)
	}
	l := &leg{Replica: r, state: Outdated, dirty: newBitmap(m.chunks), suspect: newBitmap(m.chunks)}
	l.suspect.setAll(m.chunks)
	m.legs = append(m.legs, l)
	m.setIDsLocked()
	m.event(r.ID, "replica-added", "new replica: full checksum resync before it joins the in-sync set")
	m.startResync(l)
	return nil
}

// RemoveReplica takes a replica out of the volume. An in-sync replica leaves
// the in-sync set through the store first; the last in-sync replica cannot
// be removed.
func (m *Mirror) RemoveReplica(id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fenced.Load() {
		return ErrFenced
	}
	i := slices.IndexFunc(m.legs, func(l *leg) bool { return l.ID == id })
	if i < 0 {
		return nil // already gone: idempotent
	}
	l := m.legs[i]
	if l.listed {
		var keep []string
		for _, o := range m.legs {
			if o.state == InSync && o != l {
				keep = append(keep, o.ID)
			}
		}
		if len(keep) == 0 {
			return fmt.Errorf("volume %s: %s is its last in-sync replica and cannot be removed", m.cfg.Volume, id)
		}
		if err := m.storeWithout([]string{id}); err != nil {
			return err
		}
	}
	l.listed = false
	l.gen++
	l.removed.Store(true)
	if l.dev != nil {
		l.dev.Close()
		l.dev = nil
	}
	m.legs = slices.Delete(m.legs, i, i+1)
	m.setIDsLocked()
	delete(m.al.dirty, id)
	if f := m.commitLocked(m.targetsLocked()); len(f) > 0 {
		return m.dropLocked(legsOf(f), errors.New("metadata write failed"))
	}
	m.event(id, "replica-removed", fmt.Sprintf("replica removed; in sync now: %v", m.inSyncIDs()))
	return nil
}

// Replicas lists the replica ids of the volume. It never waits for the
// mirror's lock (a failure handling may hold it while the cluster store is
// out of reach).
func (m *Mirror) Replicas() []string {
	if p := m.ids.Load(); p != nil {
		return slices.Clone(*p)
	}
	return nil
}

// setIDsLocked refreshes what Replicas returns. Callers hold mu for writing
// (or own the mirror alone, in New).
func (m *Mirror) setIDsLocked() {
	ids := make([]string, 0, len(m.legs))
	for _, l := range m.legs {
		ids = append(ids, l.ID)
	}
	m.ids.Store(&ids)
}

// Close stops the mirror: resyncs end and replica devices are closed. It
// does not flush; callers flush first.
func (m *Mirror) Close() error {
	m.closed.Store(true)
	m.cancel()
	m.wg.Wait()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, l := range m.legs {
		if l.dev != nil {
			l.dev.Close()
			l.dev = nil
		}
	}
	return nil
}

// ReplicaStatus reports one replica.
type ReplicaStatus struct {
	ID          string        `json:"id"`
	Local       bool          `json:"local"`
	State       string        `json:"state"`
	Connected   bool          `json:"connected"`
	OutOfSync   int64         `json:"out_of_sync_bytes"`
	ResyncDone  int64         `json:"resync_done_bytes"`
	ResyncTotal int64         `json:"resync_total_bytes"`
	ResyncSent  int64         `json:"resync_sent_bytes"`
	Rate        float64       `json:"resync_rate_bytes_per_second"`
	ETA         time.Duration `json:"resync_eta_ns"`
	LastError   string        `json:"last_error,omitempty"`
}

// Percent is the resync progress in percent.
func (r ReplicaStatus) Percent() float64 {
	if r.ResyncTotal == 0 {
		return 100
	}
	return 100 * float64(r.ResyncDone) / float64(r.ResyncTotal)
}

// Status reports the volume.
type Status struct {
	Volume   string          `json:"volume"`
	Primary  string          `json:"primary"`
	Epoch    uint64          `json:"epoch"`
	Size     int64           `json:"size"`
	Fenced   bool            `json:"fenced"`
	Replicas []ReplicaStatus `json:"replicas"`
}

// Status reports the volume and each replica.
func (m *Mirror) Status() Status {
	m.mu.RLock()
	defer m.mu.RUnlock()
	s := Status{Volume: m.cfg.Volume, Primary: m.cfg.Self, Epoch: m.epoch, Size: m.size, Fenced: m.fenced.Load()}
	for _, l := range m.legs {
		rs := ReplicaStatus{
			ID: l.ID, Local: l.Local, State: l.state.String(), Connected: l.dev != nil,
			OutOfSync:  int64(l.dirty.len()+l.suspect.len()) * ChunkSize,
			ResyncDone: l.resyncDone.Load(), ResyncTotal: l.resyncTotal.Load(), ResyncSent: l.resyncSent.Load(),
			LastError: l.lastErr,
		}
		if l.state == InSync {
			rs.OutOfSync = 0
		}
		if l.state == Resyncing && !l.resyncStart.IsZero() {
			if el := time.Since(l.resyncStart).Seconds(); el > 0 {
				rs.Rate = float64(rs.ResyncDone) / el
				if rs.Rate > 0 {
					rs.ETA = time.Duration(float64(rs.ResyncTotal-rs.ResyncDone) / rs.Rate * float64(time.Second))
				}
			}
		}
		s.Replicas = append(s.Replicas, rs)
	}
	return s
}
