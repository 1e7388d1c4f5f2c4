package fence

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/hacs/hacs/internal/cluster"
)

// Event kinds of the fencing layer.
const (
	EventStarted   = "fence-started"
	EventSucceeded = "fence-succeeded"
	EventFailed    = "fence-failed"
	// EventLevelFailed reports one level that failed (the next is tried).
	EventLevelFailed = "fence-level-failed"
	EventCancelled   = "fence-cancelled"
)

// Config configures a Controller.
type Config struct {
	Node   *cluster.Node
	Runner *Runner
	// Grace is the self-fence grace added to the lease's end before
	// fencing by lease is confirmed (default: the lease TTL).
	Grace time.Duration
	// Backoff is the first retry delay after every level failed (default
	// 2s); it doubles up to MaxBackoff (default 1m).
	Backoff    time.Duration
	MaxBackoff time.Duration
	Logger     *slog.Logger
}

// Controller fences lost nodes while its node is the DC. It runs on every
// node (so that whichever becomes DC takes over at once) and serves the
// fencing view to the API and the planner.
type Controller struct {
	cfg   Config
	node  *cluster.Node
	log   *slog.Logger
	cache *cluster.Cache

	mu      sync.Mutex
	needs   []Need
	running map[string]bool
	// leases remembers each node's last seen lease (to name a loss the
	// planner named by node only).
	leases map[string]int64
	// gone remembers when this controller saw a node's lease go.
	gone map[string]goneAt
	poke chan struct{}
	// minRev is the revision of this controller's last write: rounds wait
	// until the cache has it, so that no decision is taken on a record
	// older than its own write.
	minRev int64
	// required is set once Require has been called; requiredTerm is the DC
	// term of the last call, term the current one.
	required           bool
	requiredTerm, term int64
	wg                 sync.WaitGroup
	timers             map[string]time.Time
}

type goneAt struct {
	lease int64
	at    time.Time
}

// NewController returns a controller; Run starts it.
func NewController(cfg Config) *Controller {
	if cfg.Runner == nil {
		cfg.Runner = NewRunner()
	}
	if cfg.Grace <= 0 && cfg.Node != nil {
		cfg.Grace = cfg.Node.Config().LeaseTTL
	}
	if cfg.Backoff <= 0 {
		cfg.Backoff = 2 * time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Controller{cfg: cfg, node: cfg.Node, log: cfg.Logger.With("component", "fence"), running: map[string]bool{},
		leases: map[string]int64{}, gone: map[string]goneAt{}, poke: make(chan struct{}, 1)}
}

// Runner returns the controller's agent runner.
func (c *Controller) Runner() *Runner { return c.cfg.Runner }

// Require sets the list of losses that must be fenced (the full list, each
// planning round; level-triggered). It does not block.
func (c *Controller) Require(needs []Need) {
	c.mu.Lock()
	c.needs = slices.Clone(needs)
	c.required = true
	c.requiredTerm = c.term
	c.mu.Unlock()
	c.wake()
}

func (c *Controller) wake() {
	select {
	case c.poke <- struct{}{}:
	default:
	}
}

// View returns the fencing view from the controller's cache (empty before
// Run has synced it).
func (c *Controller) View() (View, bool) {
	c.mu.Lock()
	cache := c.cache
	c.mu.Unlock()
	if cache == nil {
		v, _ := Decode(cluster.Snapshot{})
		return v, false
	}
	snap, _ := cache.Snapshot()
	v, _ := Decode(snap)
	return v, snap.Synced && !snap.Stale
}

// Changed is closed at the next change of the fencing keys.
func (c *Controller) Changed() <-chan struct{} {
	c.mu.Lock()
	cache := c.cache
	c.mu.Unlock()
	if cache == nil {
		ch := make(chan struct{})
		return ch
	}
	return cache.Changed()
}

// Run watches the fencing keys and, while this node is the DC, fences.
func (c *Controller) Run(ctx context.Context) {
	cache := cluster.NewCache(ctx, c.node.Client(), Prefix, c.log)
	c.mu.Lock()
	c.cache = cache
	c.mu.Unlock()
	defer c.wg.Wait()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		snap, changed := cache.Snapshot()
		nodeChanged := c.node.Changes()
		members := c.node.Members()
		c.observe(members)
		c.mu.Lock()
		caughtUp := snap.Rev >= c.minRev
		c.mu.Unlock()
		if l := c.node.Leadership(); l.IsDC && snap.Synced && !snap.Stale && !members.Stale && caughtUp {
			view, errs := Decode(snap)
			for _, err := range errs {
				c.log.Warn("fencing state", "err", err)
			}
			c.round(l, view)
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-nodeChanged:
		case <-c.poke:
		case <-tick.C:
		}
	}
}

// observe remembers leases and when they went.
func (c *Controller) observe(m cluster.Membership) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	for _, n := range m.Nodes {
		if n.Online && n.Alive != nil {
			c.leases[n.Name] = n.Alive.LeaseID
			continue
		}
		if l, ok := c.leases[n.Name]; ok && c.gone[n.Name].lease != l {
			at := n.Since
			if at.IsZero() || at.After(now) {
				at = now
			}
			c.gone[n.Name] = goneAt{lease: l, at: at}
		}
	}
}

// want is one node to fence this round.
type want struct {
	Need
	req *Request
}

func (c *Controller) wanted(view View) map[string]want {
	c.mu.Lock()
	needs := slices.Clone(c.needs)
	leases := maps.Clone(c.leases)
	c.mu.Unlock()
	out := map[string]want{}
	add := func(w want) {
		if w.Lease == 0 {
			w.Lease = leases[w.Node]
		}
		if old, ok := out[w.Node]; ok {
			if old.req != nil || old.Lease != w.Lease {
				return // one loss per node at a time: the next round sees the rest
			}
			old.Resources = slices.Concat(old.Resources, w.Resources)
			if !strings.Contains(old.Reason, w.Reason) {
				old.Reason += "; " + w.Reason
			}
			out[w.Node] = old
			return
		}
		out[w.Node] = w
	}
	// manual requests first: they name their action
	for node, r := range view.Requests {
		r := r
		add(want{Need: Need{Node: node, Lease: r.Lease, Reason: "manual request: " + orDefault(r.Reason, "hacs fence"), Manual: true, Action: r.Action, By: r.By}, req: &r})
	}
	for _, n := range needs {
		add(want{Need: n})
	}
	return out
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func (c *Controller) round(l cluster.Leadership, view View) {
	c.mu.Lock()
	c.term = l.Term
	c.mu.Unlock()
	ws := c.wanted(view)
	now := time.Now()
	for node, w := range ws {
		rec, has := view.Records[node]
		// a loss is the same when the lease is; a manual request is its own
		same := has && rec.Lease == w.Lease && (w.req == nil || (rec.Manual && rec.Requested.Equal(w.req.Time)))
		if w.req == nil && view.Fenced(node, w.Lease) && !same {
			continue // fenced before, by an earlier record
		}
		if same && rec.State == StateFenced {
			if len(release(w, view)) > 0 {
				c.start(l, w, rec, true, view) // only releases what the fencing covered
			}
			continue
		}
		if c.isRunning(node) {
			continue
		}
		if same && rec.State == StateFailed && now.Before(rec.NextTry) && rec.Term == l.Term {
			continue // the tick comes back after NextTry
		}
		c.start(l, w, rec, has && same, view)
	}
	// records of losses nobody needs any more — once the planner has
	// given its list since this node became DC (a new DC must not cancel
	// what the previous one was doing before its planner has spoken)
	c.mu.Lock()
	listed := !c.required || c.requiredTerm == l.Term
	c.mu.Unlock()
	for node, rec := range view.Records {
		if !listed {
			break
		}
		if _, ok := ws[node]; ok || !rec.Active() {
			continue
		}
		if c.isRunning(node) {
			continue
		}
		rec.State = StateCancelled
		rec.NextTry = time.Time{}
		rec.LastError = strings.TrimSpace(rec.LastError + " (cancelled: no longer needed — the node came back and released what it held, or the request was withdrawn)")
		if _, err := c.put(l, view.Revs[RecordKey(node)], rec); err == nil {
			c.node.Emit(EventCancelled, "", fmt.Sprintf("fencing of node %s no longer needed", node), map[string]string{"subject": node, "node": node})
		}
	}
}

// put writes rec if this node is still the DC and the record is unchanged
// since rev.
func (c *Controller) put(l cluster.Leadership, rev int64, rec Record, extra ...clientv3.Op) (int64, error) {
	ctx, cancel := context.WithTimeout(l.Ctx, 5*time.Second)
	defer cancel()
	b, _ := json.Marshal(rec)
	key := RecordKey(rec.Node)
	tr, err := c.node.Client().Txn(ctx).If(l.Guard(), clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
		Then(append([]clientv3.Op{clientv3.OpPut(key, string(b))}, extra...)...).Commit()
	if err != nil {
		return 0, fmt.Errorf("recording fencing of %s: %w", rec.Node, err)
	}
	if !tr.Succeeded {
		return 0, fmt.Errorf("recording fencing of %s: the record changed meanwhile or this node is no longer the DC", rec.Node)
	}
	c.mu.Lock()
	c.minRev = max(c.minRev, tr.Header.Revision)
	c.mu.Unlock()
	return tr.Header.Revision, nil
}

// isRunning tells whether a fencing of node is under way.
func (c *Controller) isRunning(node string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.running[node]
}

func (c *Controller) start(l cluster.Leadership, w want, prev Record, continues bool, view View) {
	c.mu.Lock()
	if c.running[w.Node] {
		c.mu.Unlock()
		return
	}
	c.running[w.Node] = true
	c.mu.Unlock()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer func() {
			c.mu.Lock()
			delete(c.running, w.Node)
			c.mu.Unlock()
			c.wake()
		}()
		c.attempt(l, w, prev, continues, view)
	}()
}

func fields(node string, lease int64, extra ...string) map[string]string {
	f := map[string]string{"subject": node, "node": node, "lease": strconv.FormatInt(lease, 16)}
	for i := 0; i+1 < len(extra); i += 2 {
		f[extra[i]] = extra[i+1]
	}
	return f
}

// release returns the ops that end what a confirmed fencing covers: the
// manual request.
func release(w want, view View) []clientv3.Op {
	if w.req != nil {
		return []clientv3.Op{clientv3.OpDelete(RequestKey(w.Node))}
	}
	return nil
}

// attempt runs one fencing attempt of w.Node.
func (c *Controller) attempt(l cluster.Leadership, w want, prev Record, continues bool, view View) {
	ctx := l.Ctx
	key := RecordKey(w.Node)
	rev := view.Revs[key]
	if continues && prev.State == StateFenced {
		// confirmed already: only release what it covered
		if ops := release(w, view); len(ops) > 0 {
			if _, err := c.put(l, rev, prev, ops...); err != nil {
				c.log.Warn("releasing after fencing", "node", w.Node, "err", err)
			}
		}
		return
	}
	// the configuration as it is now, not as the cache had it
	fresh, err := c.read(ctx)
	if err != nil {
		c.log.Warn("fencing not started", "node", w.Node, "err", err)
		return
	}
	if fresh.Revs[key] != rev {
		return // the record changed meanwhile: the next round decides again
	}
	view.Devices, view.Levels = fresh.Devices, fresh.Levels
	action := w.Action
	if action == "" {
		action = ActionReboot
	}
	rec := Record{Node: w.Node, Lease: w.Lease, Action: action, Reason: w.Reason, Resources: w.Resources, Manual: w.Manual,
		By: w.By, Requested: time.Now().UTC(), DC: c.node.Name(), Term: l.Term}
	if w.req != nil {
		rec.Requested = w.req.Time
	}
	rec.Earlier = prev.earlierWith()
	if continues {
		rec.Requested, rec.Attempts, rec.LastError, rec.LeaseGone = prev.Requested, prev.Attempts, prev.LastError, prev.LeaseGone
		rec.Earlier = prev.Earlier
	}
	sort.Strings(rec.Resources)
	rec.Resources = slices.Compact(rec.Resources)
	rec.State = StateFencing
	rec.Attempts++
	rec.Started = time.Now().UTC()
	rec.NextTry = time.Time{}
	levels := view.LevelsOf(w.Node)
	ttl := c.node.Config().LeaseTTL

	// Level 0: the lease. A node still holding the lease being fenced is
	// made to give it up (on-fail=fence, manual request).
	members := c.node.Members()
	ni, known := members.Node(w.Node)
	online := known && ni.Online && ni.Alive != nil && (w.Lease == 0 || ni.Alive.LeaseID == w.Lease)
	if online {
		// the lease is revoked right after this record is written, within
		// revokeBound: the node notices at the latest TTL after that
		rec.Lease = ni.Alive.LeaseID
		rec.LeaseGone = time.Now().Add(ttl + revokeBound).UTC()
	}
	if !online && rec.LeaseGone.IsZero() {
		c.mu.Lock()
		g := c.gone[w.Node]
		c.mu.Unlock()
		rec.LeaseGone = time.Now().UTC()
		if g.lease == rec.Lease && !g.at.IsZero() {
			rec.LeaseGone = g.at.UTC()
		}
	}
	rev, err = c.put(l, rev, rec)
	if err != nil {
		c.log.Warn("fencing not started", "node", w.Node, "err", err)
		return
	}
	how := "its lease (self-fence)"
	if len(levels) > 0 {
		how = fmt.Sprintf("%d fence level(s)", len(levels))
	}
	c.node.Emit(EventStarted, "", fmt.Sprintf("fencing node %s (%s) by %s, attempt %d: %s", w.Node, action, how, rec.Attempts, rec.Reason),
		fields(w.Node, rec.Lease, "reason", rec.Reason, "action", action, "attempt", strconv.Itoa(rec.Attempts)))

	if online {
		if w.Node == c.node.Name() {
			// The DC does not power itself off: it gives up its lease
			// (and so the DC role); the next DC fences the lost lease,
			// by lease not before the LeaseGone recorded above.
			c.log.Warn("fencing this node: revoking its own lease; the next DC completes the fencing", "node", w.Node)
			if err := c.revoke(rec.Lease); err != nil {
				c.log.Warn("revoking this node's own lease", "err", err)
			}
			return
		}
		if err := c.revoke(rec.Lease); err != nil {
			// fencing by lease fails below (the node still holds it);
			// devices may still succeed
			c.log.Warn("revoking the lease of the node to fence", "node", w.Node, "err", err)
		}
	}
	fail := func(msg string) {
		rec.State = StateFailed
		rec.LastError = msg
		back := c.cfg.Backoff << min(rec.Attempts-1, 10)
		rec.NextTry = time.Now().Add(min(back, c.cfg.MaxBackoff)).UTC()
		var ops []clientv3.Op
		if w.req != nil {
			ops = release(w, view) // a manual request is tried once
			rec.NextTry = time.Time{}
		}
		if _, err := c.put(l, rev, rec, ops...); err != nil {
			c.log.Warn("recording a failed fencing", "node", w.Node, "err", err)
		}
		c.node.Emit(EventFailed, "", fmt.Sprintf("fencing node %s failed (attempt %d): %s; its resources stay down", w.Node, rec.Attempts, msg),
			fields(w.Node, rec.Lease, "reason", msg, "level", strconv.Itoa(rec.Level), "device", strings.Join(rec.Devices, ","), "attempt", strconv.Itoa(rec.Attempts)))
		c.log.Warn("fencing failed", "node", w.Node, "attempt", rec.Attempts, "err", msg, "next_try", rec.NextTry)
	}

	if len(levels) == 0 {
		rec.Method, rec.Level, rec.Devices = MethodLease, 0, nil
		rec.ConfirmAt = rec.LeaseGone.Add(c.cfg.Grace).UTC()
		if r, err := c.put(l, rev, rec); err == nil {
			rev = r
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(rec.ConfirmAt)):
		}
		// the lease must really be gone
		if ni, ok := c.node.Members().Node(w.Node); ok && ni.Online && ni.Alive != nil && ni.Alive.LeaseID == rec.Lease {
			fail(fmt.Sprintf("node %s still holds lease %x", w.Node, rec.Lease))
			return
		}
	} else {
		rec.Method = MethodDevice
		lvl, _, err := c.cfg.Runner.FenceLevels(ctx, w.Node, action, levels, view.Devices, func(lr LevelResult) {
			rec.Level, rec.Devices = lr.Level, lr.Devices
			if lr.Err != nil && ctx.Err() == nil {
				c.node.Emit(EventLevelFailed, "", fmt.Sprintf("fence level %d of node %s failed: %v", lr.Level, w.Node, lr.Err),
					fields(w.Node, rec.Lease, "level", strconv.Itoa(lr.Level), "device", strings.Join(lr.Devices, ","), "reason", lr.Error()))
			}
		})
		if ctx.Err() != nil {
			return // no longer DC: the next DC starts over
		}
		if err != nil {
			fail(err.Error())
			return
		}
		rec.Level = lvl
	}
	rec.State = StateFenced
	rec.Confirmed = time.Now().UTC()
	rec.LastError = ""
	if _, err := c.put(l, rev, rec, release(w, view)...); err != nil {
		c.log.Warn("recording a confirmed fencing", "node", w.Node, "err", err)
		return
	}
	by := "its lease expired + self-fence grace"
	if rec.Method == MethodDevice {
		by = fmt.Sprintf("level %d (%s)", rec.Level, strings.Join(rec.Devices, ", "))
	}
	c.node.Emit(EventSucceeded, "", fmt.Sprintf("node %s fenced by %s", w.Node, by),
		fields(w.Node, rec.Lease, "method", rec.Method, "level", strconv.Itoa(rec.Level), "device", strings.Join(rec.Devices, ","), "reason", rec.Reason))
	c.log.Info("node fenced", "node", w.Node, "method", rec.Method, "level", rec.Level, "devices", rec.Devices)
}

// revokeBound bounds the revocation of a lease being fenced.
const revokeBound = 2 * time.Second

func (c *Controller) revoke(lease int64) error {
	ctx, cancel := context.WithTimeout(context.Background(), revokeBound)
	defer cancel()
	_, err := c.node.Client().Revoke(ctx, clientv3.LeaseID(lease))
	return err
}

// Fenced reports whether the loss of node's incarnation lease is confirmed
// fenced (false while the view is not synced).
func (c *Controller) Fenced(node string, lease int64) bool {
	v, ok := c.View()
	return ok && v.Fenced(node, lease)
}

// Info says in a few words how far fencing of node is (for the reasons
// resources wait).
func (c *Controller) Info(node string) string {
	v, ok := c.View()
	if !ok {
		return "fencing state unknown (the cluster store is not reachable)"
	}
	r, found := v.Record(node)
	if !found {
		return "fencing not started yet"
	}
	switch r.State {
	case StateFenced:
		return fmt.Sprintf("fenced at %s (lease %x)", r.Confirmed.Format(time.RFC3339), r.Lease)
	case StateFailed:
		return fmt.Sprintf("fencing failed %d time(s), retried at %s: %s", r.Attempts, r.NextTry.Format(time.RFC3339), r.LastError)
	case StateFencing:
		if r.Method == MethodLease && !r.ConfirmAt.IsZero() {
			return fmt.Sprintf("fencing by lease, confirmed at %s", r.ConfirmAt.Format(time.RFC3339))
		}
		return fmt.Sprintf("fencing in progress (attempt %d)", r.Attempts)
	}
	return "fencing " + r.State
}
