package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/hacs/hacs/internal/cluster"
	"github.com/hacs/hacs/internal/device"
	"github.com/hacs/hacs/internal/fence"
	"github.com/hacs/hacs/internal/mirror"
	"github.com/hacs/hacs/internal/nbd"
	"github.com/hacs/hacs/internal/ocf"
	"github.com/hacs/hacs/internal/policy"
	"github.com/hacs/hacs/internal/replica"
	"github.com/hacs/hacs/internal/store"
	"github.com/hacs/hacs/internal/tlspsk"
)

// Config configures an Agent.
type Config struct {
	Node *cluster.Node
	// Pool holds this node's replicas (nil on nodes without the storage
	// role).
	Pool *store.Pool
	// StateDir keeps the replica epoch records.
	StateDir string
	// ReplicaListen and ExportListen are the replica server's and the NBD
	// export's addresses (HOST:PORT).
	ReplicaListen string
	ExportListen  string
	// ExportTLS, if set, lets clients of the volume exports use NBD
	// STARTTLS (a volume whose spec says tls: required then refuses
	// plaintext clients). Without it, such a volume refuses every client.
	ExportTLS *tls.Config
	// ExportPSK, if set, lets clients of the volume exports use STARTTLS
	// with one of these pre-shared keys (TLS 1.3), alone or beside
	// ExportTLS.
	ExportPSK tlspsk.Keys
	// ExportTLSPolicy is the export server's mode with ExportTLS:
	// nbd.TLSRequired refuses plaintext clients for every volume; anything
	// else leaves it to each volume's spec.
	ExportTLSPolicy nbd.TLSPolicy
	// ExportClientAuth (a secure cluster, ExportTLS the cluster's: it
	// verifies client certificates): a volume whose spec leaves TLS unset
	// or says required admits only clients that authenticated in the TLS
	// handshake (a node or export client certificate of the cluster, or a
	// pre-shared key); plaintext clients get the TLS-required error. A
	// volume with tls allowed or off opts out: it serves anyone who
	// reaches the port.
	ExportClientAuth bool
	// NBDLimits bound the connections that have not negotiated yet on the
	// export and replica ports (each), and the connections of one volume
	// export (MaxConnsPerExport, export port only). Zero: the defaults.
	NBDLimits nbd.Limits
	// ReplicaTimeout drops a replica that does not answer in time
	// (default 5s).
	ReplicaTimeout time.Duration
	// Tick is the period of the reconcile loops besides changes (default
	// 1s).
	Tick time.Duration
	// Settings are the planner's cluster-wide defaults, used while this
	// node is the DC.
	Settings policy.Settings
	// Alerts configures alert delivery (by the DC).
	Alerts AlertConfig
	// Fence fences lost nodes while this node is the DC and serves the
	// /v1/fence API (nil: no fencing layer).
	Fence *fence.Controller
	// OCFRoot is where OCF resource agents live (default /usr/lib/ocf);
	// OCFEnv is added to their environment (such as HA_RSCTMP=DIR).
	OCFRoot string
	OCFEnv  []string
	Logger  *slog.Logger
}

// Agent is the resource manager of one node.
type Agent struct {
	cfg  Config
	node *cluster.Node
	log  *slog.Logger
	host *replica.Host
	rsrv *nbd.Server
	esrv *nbd.Server
	// pskMu guards the export server's pre-shared keys in force (the
	// --export-tls-psk file, re-read by SetExportPSK) and pskSrv, the
	// export server once Run made it
	pskMu   sync.Mutex
	pskKeys tlspsk.Keys
	pskSrv  *nbd.Server

	replicaAddr string
	exportAddr  string
	vols        *cluster.Cache
	// primaryCount is how many volumes each node serves, as of the DC's
	// last plan (raftLeaderCost).
	primaryCount atomic.Pointer[map[string]int]
	// online dates each node's current lease for the planner's failback
	// settle time (onlinesince.go).
	online onlineTracker

	// mu guards the maps below. It is held only briefly: never across a
	// call into a mirror, a wait of the export server or a cluster store
	// request (each volume's worker makes those, worker.go).
	mu    sync.Mutex
	prims map[string]*primary
	// stopping is set when Run's ctx ended: no export is added after it
	// (stop).
	stopping bool
	// started is set once Run has its store views and API (tests wait
	// for it).
	started atomic.Bool
	// workers are the volumes' workers (worker.go), and starts bounds the
	// primaries they open at once.
	workers map[string]*volWorker
	starts  chan struct{}
	// failed remembers each volume's last start failure, so that a start
	// at the same epoch is tried again only after a backoff.
	failed map[string]startFailure
	// stats keeps each volume's I/O statistics across the mirrors this
	// node serves it with (for /metrics).
	stats  map[string]*mirror.Stats
	alerts *alertStats
	// verifies are the verifies running on this node's primaries.
	verifies map[string]*verifyRun
	// epochs is the last epoch seen per volume in the store, and
	// epochChanges how often it changed since this agent started (for
	// /metrics).
	epochs       map[string]uint64
	epochChanges map[string]uint64
	// clones are the clone copies and coordinations under way (progress).
	clones cloneRegistry
	// creating are local replicas being made for a volume the cluster
	// does not know yet (a clone): cleanup leaves them for a while.
	creating map[string]time.Time
	wg       sync.WaitGroup
	// resWG is the resources' node loop, which stops the local resources
	// when the agent stops (resShutdown): waited for apart (stop).
	resWG sync.WaitGroup

	// cuts are the exports cut off before their workers stopped them, with
	// when and why: by fenceLoop while this node did not hold its lease, or
	// by newerEpochOpened when another primary took the volume over
	// (guarded by cutMu, never by mu: fenceLoop must not wait for anything
	// a worker may hold while stuck in a mirror).
	cutMu sync.Mutex
	cuts  map[string]exportCut

	// Resources other than volumes (resnode.go, resdc.go).
	res         *cluster.Cache
	runner      *ocf.Runner
	rmu         sync.Mutex
	local       map[string]*localRes
	resWake     chan struct{}
	lastNoFence time.Time

	// mirrorHook, set by tests only, may change a mirror's configuration
	// before it opens (fault injection: a store that hangs, a failing
	// replica).
	mirrorHook func(*mirror.Config)
}

type primary struct {
	m     *mirror.Mirror
	epoch uint64
	size  int64
	from  time.Time // when its export began taking requests
	// grants is the grantsKey of the grants its export enforces (a.mu)
	grants string
	// stopEmitted: its volume-stopped event was emitted (emitStopped)
	stopEmitted atomic.Bool
}

// New prepares an agent on a started node.
func New(cfg Config) (*Agent, error) {
	if cfg.ReplicaTimeout <= 0 {
		cfg.ReplicaTimeout = 5 * time.Second
	}
	if cfg.Tick <= 0 {
		cfg.Tick = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	ac := &cfg.Alerts
	if ac.Kinds == nil {
		ac.Kinds = AlertKinds
	}
	if ac.Timeout <= 0 {
		ac.Timeout = 30 * time.Second
	}
	if ac.Attempts <= 0 {
		ac.Attempts = 6
	}
	if ac.Backoff <= 0 {
		ac.Backoff = time.Second
	}
	a := &Agent{cfg: cfg, node: cfg.Node, log: cfg.Logger, prims: map[string]*primary{}, failed: map[string]startFailure{},
		workers: map[string]*volWorker{}, starts: make(chan struct{}, parallelStarts),
		stats: map[string]*mirror.Stats{}, alerts: newAlertStats(), verifies: map[string]*verifyRun{},
		epochs: map[string]uint64{}, epochChanges: map[string]uint64{}, creating: map[string]time.Time{}, cuts: map[string]exportCut{},
		runner: &ocf.Runner{Root: cfg.OCFRoot, Env: cfg.OCFEnv}, local: map[string]*localRes{}, resWake: make(chan struct{}, 1),
		pskKeys: cfg.ExportPSK}
	if cfg.Pool != nil {
		h, err := replica.NewHost(cfg.StateDir, replica.PoolOpener{Pool: cfg.Pool})
		if err != nil {
			return nil, err
		}
		a.host = h
		h.SetOnNewEpoch(a.newerEpochOpened)
	}
	return a, nil
}

// Run serves until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	if a.host != nil {
		ln, err := net.Listen("tcp", a.cfg.ReplicaListen)
		if err != nil {
			return fmt.Errorf("replica server: listen on %s: %w (choose another with --replica-listen)", a.cfg.ReplicaListen, err)
		}
		a.replicaAddr = ln.Addr().String()
		a.rsrv = replica.NewServer(a.host, a.log)
		if tc := a.node.TLSServerConfig(true); tc != nil {
			// replication links: mutual TLS with node certificates only
			a.rsrv.TLSConfig, a.rsrv.TLSPolicy = tc, nbd.TLSRequired
		}
		a.rsrv.Limits = a.cfg.NBDLimits
		a.rsrv.MaxConnsPerExport = 0 // a primary's links are not clients
		// The replica port's peers are the few nodes of the cluster (mutual
		// TLS), each opening a link per volume: a node whose primaries all
		// reconnect at once (after a network blip) must not be refused for
		// coming from one address. The server-wide bound still holds.
		a.rsrv.MaxNegotiatingPerIP = -1
		go a.rsrv.Serve(ln)
		defer closeWithin(a.rsrv, serverCloseWait)
	}
	eln, err := net.Listen("tcp", a.cfg.ExportListen)
	if err != nil {
		return fmt.Errorf("NBD export: listen on %s: %w (choose another with --export-listen)", a.cfg.ExportListen, err)
	}
	a.exportAddr = eln.Addr().String()
	a.esrv = nbd.NewServer(a.log)
	a.esrv.Limits = a.cfg.NBDLimits
	if a.exportTLS() {
		a.pskMu.Lock()
		a.esrv.TLSConfig, a.esrv.PSKKeys, a.esrv.TLSPolicy = a.cfg.ExportTLS, a.pskKeys, nbd.TLSAllowed
		a.pskSrv = a.esrv
		a.pskMu.Unlock()
		if a.cfg.ExportTLSPolicy == nbd.TLSRequired {
			a.esrv.TLSPolicy = nbd.TLSRequired
		}
	}
	go a.esrv.Serve(eln)
	defer closeWithin(a.esrv, serverCloseWait)
	// a revoked certificate (a removed node's, a revoked client's) loses
	// its open NBD connections at once, not only new handshakes
	if a.rsrv != nil {
		a.node.OnRevoke(a.rsrv.CutPeers)
	}
	a.node.OnRevoke(a.esrv.CutPeers)

	// Publish the replica address once this node holds its lease.
	for {
		if _, err := a.node.WaitServing(ctx); err != nil {
			return err
		}
		err := a.node.UpdateSelf(ctx, func(c *cluster.NodeConfig) { c.ReplicaAddr = a.replicaAddr })
		if err == nil {
			break
		}
		a.log.Warn("publishing the replica address", "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	a.vols = cluster.NewCache(ctx, a.node.Client(), cluster.PrefixVolumes, a.log)
	a.res = cluster.NewCache(ctx, a.node.Client(), cluster.PrefixResources, a.log)
	a.registerAPI()
	a.started.Store(true)
	if a.cfg.Fence != nil {
		a.cfg.Fence.Register(a.node.Mux())
		a.wg.Add(1)
		go func() { defer a.wg.Done(); a.cfg.Fence.Run(ctx) }()
	}
	a.registerResourceAPI()
	a.node.SetRaftLeaderCost(a.raftLeaderCost)
	a.log.Info("resource manager running", "replica_addr", a.replicaAddr, "export_addr", a.exportAddr)

	a.wg.Add(6)
	go func() { defer a.wg.Done(); a.fenceLoop(ctx) }()
	go func() { defer a.wg.Done(); a.dcLoop(ctx) }()
	go func() { defer a.wg.Done(); a.resDCLoop(ctx) }()
	a.resWG.Add(1)
	go func() { defer a.resWG.Done(); a.resNodeLoop(ctx) }()
	go func() { defer a.wg.Done(); a.capacityLoop(ctx) }()
	go func() { defer a.wg.Done(); a.alertLoop(ctx) }()
	go func() { defer a.wg.Done(); a.takeoverLoop(ctx) }()
	a.nodeLoop(ctx)
	a.stop()
	return nil
}

// StopTimeout bounds the volumes' part of an agent's stop (Run's return
// once its ctx ended, but for serverCloseWait): the loops and the volumes'
// workers ending, then the primaries flushed and closed. The exports are
// cut off at once, whatever is still running. Local resources other than
// volumes may take up to ResourceStopTimeout to stop.
const StopTimeout = 1500 * time.Millisecond

// ResourceStopTimeout bounds the stop of the local resources (OCF and
// others) when the agent stops.
const ResourceStopTimeout = 90 * time.Second

// stop ends this node's serving when Run's ctx ended: it cuts every
// export's clients off at once (nothing is served after this; a start
// still under way cannot add an export any more), waits for the loops and
// the workers, then flushes and closes the primaries side by side, each
// emitting its volume-stopped event (stopped_at: the cut). All within
// StopTimeout: what is still running then (a mirror waiting for a silent
// replica) is left to the process's exit, and its event to the log. The
// caller stores the events and gives up the lease after this (the node's
// Stop), so a primary has stopped serving before its lease is revoked.
func (a *Agent) stop() {
	start := time.Now()
	dctx, cancel := context.WithTimeout(context.Background(), StopTimeout)
	defer cancel()
	a.mu.Lock()
	a.stopping = true
	a.mu.Unlock()
	a.cutExportsFor(agentStopping)
	a.cutMu.Lock()
	cuts := maps.Clone(a.cuts) // stopPrimary deletes its volume's
	a.cutMu.Unlock()
	resStopped := make(chan struct{})
	go func() { defer close(resStopped); a.resWG.Wait() }()
	waited := make(chan struct{})
	go func() { defer close(waited); a.wg.Wait() }()
	select {
	case <-waited:
	case <-dctx.Done():
		a.log.Warn("stopping: loops or volume workers still busy; stopping the primaries anyway")
	}
	a.mu.Lock()
	prims := maps.Clone(a.prims)
	a.mu.Unlock()
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		var wg sync.WaitGroup
		for name, p := range prims {
			wg.Add(1)
			go func() { defer wg.Done(); a.stopPrimary(name, p, agentStopping, true) }()
		}
		wg.Wait()
	}()
	select {
	case <-stopped:
	case <-dctx.Done():
		a.log.Warn("stopping: primaries still closing (their exports are cut off); not waiting longer", "waited", time.Since(start).Round(time.Millisecond))
		// their events now, with when their exports were cut off: the
		// store takes them before the lease goes (the mirrors' requests
		// in flight end on their own, or with the process)
		for name, p := range prims {
			if c, ok := cuts[name]; ok {
				a.emitStopped(name, p, agentStopping+" (its mirror still closing)", c.at)
			}
		}
	}
	// The local resources (OCF and others) have no data-path fencing:
	// the lease is their fence, so they are stopped before it goes,
	// however long that takes (ResourceStopTimeout at most).
	select {
	case <-resStopped:
	default:
		a.log.Info("stopping: waiting for the local resources to stop before the lease goes")
		<-resStopped
	}
	a.log.Info("resource manager stopped", "primaries", len(prims), "took", time.Since(start).Round(time.Millisecond))
}

const agentStopping = "agent stopping"

// serverCloseWait bounds the wait for an NBD server's connections to end
// when Run returns: one whose request is stuck in a mirror (a silent
// replica) ends with the process.
const serverCloseWait = 250 * time.Millisecond

// closeWithin closes c, waiting at most d for it.
func closeWithin(c interface{ Close() error }, d time.Duration) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Close()
	}()
	select {
	case <-done:
	case <-time.After(d):
	}
}

func (a *Agent) self() string { return a.node.Name() }

func (a *Agent) emit(kind, volume, msg string) { a.emitFields(kind, volume, msg, nil) }

// emitFields logs the event with its fields and writes it to the cluster's
// event log. The log line matters when the store cannot take the event (an
// agent stopping, a node cut off): it is then the only record of it.
func (a *Agent) emitFields(kind, volume, msg string, fields map[string]string) {
	attrs := []any{"event", kind, "volume", volume}
	for _, k := range slices.Sorted(maps.Keys(fields)) {
		attrs = append(attrs, k, fields[k])
	}
	a.log.Info(msg, attrs...)
	a.node.Emit(kind, "volume/"+volume, msg, fields)
}

// capacityLoop publishes the pool's free space for placement.
func (a *Agent) capacityLoop(ctx context.Context) {
	if a.cfg.Pool == nil {
		return
	}
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		if st, err := a.cfg.Pool.Stats(); err == nil {
			a.node.SetCapacity(ctx, cluster.Capacity{TotalBytes: st.Limit, FreeBytes: st.Limit - st.Promised})
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// nodeLoop converges this node to the cluster state: serve the volumes it
// is primary of, stop serving the others. Each volume's worker does that
// volume's part (worker.go); the loop only hands out the latest views.
func (a *Agent) nodeLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.Tick)
	defer t.Stop()
	for i := 0; ; i++ {
		snap, changed := a.vols.Snapshot()
		nodeChanged := a.node.Changes()
		if snap.Synced {
			a.dispatch(ctx, snap)
			if i%5 == 0 && !snap.Stale {
				a.cleanup(snap)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-nodeChanged:
		case <-t.C:
		}
	}
}

// fenceLoop is the self-fence of the volume exports: as soon as this node
// stops holding its lease, it cuts every export's clients off, whatever
// the volumes' workers are doing (one may be waiting for a mirror that
// waits for the cluster store, up to the mirror's StoreTimeout: the node
// would go on serving, past its lease, while another node takes over). The
// workers then stop the cut primaries (stopReason, cutReason).
func (a *Agent) fenceLoop(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		changed := a.node.Changes()
		if !a.node.IsServing() {
			a.cutExportsFor(selfFence)
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-t.C:
		}
	}
}

// cutExportsFor cuts off the clients of every export, side by side (one
// whose requests are stuck in its mirror must not delay the others), and
// records when and why for stopPrimary.
func (a *Agent) cutExportsFor(why string) {
	names := a.esrv.ExportNames()
	if len(names) == 0 {
		return
	}
	var wg sync.WaitGroup
	for _, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.noteCut(name, a.esrv.CutExport(name), why)
			if why == selfFence {
				a.log.Warn("export cut off: this node does not hold its lease (self-fence)", "volume", name)
			} else {
				a.log.Info("export cut off: "+why, "volume", name)
			}
		}()
	}
	wg.Wait()
}

// exportCut is when and why an export was cut off ahead of its worker.
type exportCut struct {
	at  time.Time
	why string
}

const selfFence = "this node lost its lease or quorum: it stops serving (self-fence)"

// noteCut records the first cut of a volume's export (of this tenure).
func (a *Agent) noteCut(name string, at time.Time, why string) {
	a.cutMu.Lock()
	if _, ok := a.cuts[name]; !ok {
		a.cuts[name] = exportCut{at: at, why: why}
	}
	a.cutMu.Unlock()
}

// cutReason says why a volume's export was cut off ("" if it was not).
func (a *Agent) cutReason(name string) string {
	a.cutMu.Lock()
	defer a.cutMu.Unlock()
	return a.cuts[name].why
}

// newerEpochOpened is told by the replica host that a primary opened this
// node's replica of a volume at a newer epoch (its earlier handles are
// fenced already). If this node still serves an older epoch of it (a
// move or failover elsewhere that its worker has not acted on yet: it may
// be stuck publishing its export record while the store is slow), its
// export is cut off now, before the new primary can serve: two primaries
// never take requests at once, even for a moment. The worker then stops
// it (stopReason).
func (a *Agent) newerEpochOpened(name string, epoch uint64) {
	a.mu.Lock()
	defer a.mu.Unlock() // held: no new tenure of name can be installed meanwhile
	p := a.prims[name]
	if p == nil || p.epoch >= epoch {
		return
	}
	why := fmt.Sprintf("a newer primary opened this node's replica at epoch %d", epoch)
	a.noteCut(name, a.esrv.CutExport(name), why)
	a.log.Warn("export cut off: "+why, "volume", name, "epoch", p.epoch)
	if w := a.workers[name]; w != nil {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

// countEpochsLocked counts the volumes' epoch changes seen in the store.
func (a *Agent) countEpochsLocked(views map[string]*volumeView) {
	for name, v := range views {
		if v.state == nil {
			continue
		}
		if old, ok := a.epochs[name]; ok && old != v.state.Epoch {
			a.epochChanges[name]++
		}
		a.epochs[name] = v.state.Epoch
	}
	for name := range a.epochs {
		if v := views[name]; v == nil || v.state == nil {
			delete(a.epochs, name)
			delete(a.epochChanges, name)
		}
	}
}

// cleanup deletes local replicas of volumes that were destroyed or whose
// replica moved away from this node (once nothing has them open).
func (a *Agent) cleanup(snap cluster.Snapshot) {
	if a.cfg.Pool == nil || !a.node.IsServing() {
		return
	}
	views, errs := volumesFrom(snap)
	if len(errs) > 0 {
		return // never delete on a view we cannot fully read
	}
	local, err := a.cfg.Pool.Volumes()
	if err != nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, lv := range local {
		v := views[lv.Name]
		gone := v == nil
		moved := v != nil && v.placement != nil && !slices.Contains(v.placement.Replicas, a.self())
		if (!gone && !moved) || a.prims[lv.Name] != nil || a.workers[lv.Name] != nil {
			continue
		}
		if t, ok := a.creating[lv.Name]; ok {
			if gone && time.Since(t) < 2*time.Minute {
				continue
			}
			delete(a.creating, lv.Name)
		}
		if err := a.cfg.Pool.DeleteVolume(lv.Name); err == nil {
			why := "volume destroyed"
			if moved {
				why = "replica moved to other nodes"
			}
			a.emit("replica-deleted", lv.Name, "local replica deleted: "+why)
		}
	}
}

func (a *Agent) replicaFor(name string, size int64, node string) mirror.Replica {
	if node == a.self() {
		return mirror.Replica{ID: node, Local: true, Dial: func(ctx context.Context, epoch uint64) (device.Device, error) {
			return a.host.Acquire(name, epoch, mirror.ReplicaSize(size))
		}}
	}
	return mirror.Replica{ID: node, Dial: func(ctx context.Context, epoch uint64) (device.Device, error) {
		info, ok := a.node.Members().Node(node)
		if !ok {
			return nil, fmt.Errorf("node %s is not a member", node)
		}
		if info.ReplicaAddr == "" {
			return nil, fmt.Errorf("node %s has no replica server", node)
		}
		var d net.Dialer
		raw, err := d.DialContext(ctx, "tcp", info.ReplicaAddr)
		if err != nil {
			return nil, fmt.Errorf("nbd dial %s: %w", info.ReplicaAddr, err)
		}
		if tc, ok := raw.(*net.TCPConn); ok {
			tc.SetNoDelay(true)
		}
		// tracked: cut at once if the replica node's certificate is revoked
		nc, tc := a.node.TrackConn(raw, "replica client of "+node)
		c, err := nbd.NewClient(nc, nbd.ClientOptions{Export: replica.ExportName(name, epoch, mirror.ReplicaSize(size)), TLS: tc})
		if err != nil {
			nc.Close()
			return nil, err
		}
		return c, nil
	}}
}

// startPrimary starts serving a volume (parallelStarts at a time on the
// node). Callers act on the volume alone (its worker, or with its act
// lock).
func (a *Agent) startPrimary(ctx context.Context, v *volumeView) error {
	select {
	case a.starts <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	a.mu.Lock()
	stats := a.statsLocked(v.name)
	a.mu.Unlock()
	m, err := a.openMirror(ctx, v, stats)
	var from time.Time
	if err == nil {
		from, err = a.install(v, m)
	}
	<-a.starts
	if err != nil {
		return err
	}
	a.announce(ctx, v.name, m, from)
	return nil
}

func (a *Agent) statsLocked(name string) *mirror.Stats {
	stats := a.stats[name]
	if stats == nil {
		stats = mirror.NewStats()
		a.stats[name] = stats
	}
	return stats
}

// openMirror opens the volume's mirror as its primary (a.mu not needed).
func (a *Agent) openMirror(ctx context.Context, v *volumeView, stats *mirror.Stats) (*mirror.Mirror, error) {
	var reps []mirror.Replica
	for _, n := range v.placement.Replicas {
		reps = append(reps, a.replicaFor(v.name, v.spec.Size, n))
	}
	if !slices.Contains(v.placement.Replicas, a.self()) {
		return nil, fmt.Errorf("this node holds no replica of %s", v.name)
	}
	octx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	name := v.name
	cfg := mirror.Config{
		Stats:  stats,
		Volume: name, Self: a.self(), Size: v.spec.Size, Replicas: reps, Store: a.node.Volumes(),
		Timeout: a.cfg.ReplicaTimeout, Logger: a.log,
		OnEvent: func(e mirror.Event) {
			a.node.Emit(e.Kind, "volume/"+name, e.Message, map[string]string{"replica": e.Replica})
			if e.Kind == "replica-failed" && e.Replica == a.self() {
				// Our own disk failed under the volume: a failure here
				// (migration-threshold moves it away).
				go a.recordFailure(context.Background(), name)
			}
		},
	}
	if a.mirrorHook != nil {
		a.mirrorHook(&cfg)
	}
	m, err := mirror.Open(octx, cfg)
	if err != nil {
		return nil, err
	}
	if m.Epoch() != v.state.Epoch {
		m.Close()
		return nil, fmt.Errorf("state moved to epoch %d while starting", m.Epoch())
	}
	return m, nil
}

// install exports an opened mirror and records it as served; it returns
// when the export began taking requests.
func (a *Agent) install(v *volumeView, m *mirror.Mirror) (time.Time, error) {
	name := v.name
	a.mu.Lock()
	served := a.prims[name] != nil
	a.mu.Unlock()
	if served {
		m.Close()
		return time.Time{}, fmt.Errorf("volume %s is served already", name)
	}
	a.esrv.RemoveExport(name)
	a.cutMu.Lock()
	delete(a.cuts, name) // a cut of an earlier tenure
	a.cutMu.Unlock()
	from := time.Now()
	if v.spec.TLS == nbd.TLSRequired && !a.exportTLS() {
		a.log.Warn("volume requires TLS but this node has no TLS certificate or pre-shared keys for exports: its clients are refused", "volume", name)
	}
	// added under mu, with the check of stopping: the agent's stop cuts
	// every export off once it set stopping, so none may come after
	a.mu.Lock()
	if a.stopping {
		a.mu.Unlock()
		m.Close()
		return time.Time{}, errors.New("the agent is stopping")
	}
	if err := a.esrv.AddExport(a.exportOf(name, *v.spec, m)); err != nil {
		a.mu.Unlock()
		m.Close()
		return time.Time{}, err
	}
	a.prims[name] = &primary{m: m, epoch: m.Epoch(), size: v.spec.Size, from: from, grants: grantsKey(v.spec.Grants)}
	delete(a.failed, name)
	a.mu.Unlock()
	return from, nil
}

// SetExportPSK replaces the pre-shared keys of the volume exports (the
// --export-tls-psk file re-read) while the agent runs: new handshakes use
// keys, and the open connections of an identity keys lacks, or whose key
// changed, are cut at once. It returns how many it cut. The agent must
// have been started with pre-shared keys; keys cannot be empty.
func (a *Agent) SetExportPSK(keys tlspsk.Keys) (cut int, err error) {
	if len(a.cfg.ExportPSK) == 0 {
		return 0, errors.New("this agent was started without pre-shared keys (--export-tls-psk)")
	}
	if len(keys) == 0 {
		return 0, errors.New("no pre-shared keys: they can be replaced, not removed")
	}
	a.pskMu.Lock()
	defer a.pskMu.Unlock()
	a.pskKeys = keys
	if a.pskSrv == nil { // not serving yet: Run takes them
		return 0, nil
	}
	return a.pskSrv.SetPSKKeys(keys)
}

// exportTLS reports whether the exports offer TLS (certificates or
// pre-shared keys).
func (a *Agent) exportTLS() bool { return a.cfg.ExportTLS != nil || len(a.cfg.ExportPSK) > 0 }

// exportOf is the NBD export of a volume with its access policy.
func (a *Agent) exportOf(name string, spec Spec, dev device.Device) nbd.Export {
	e := nbd.Export{Name: name, Description: "hacs volume " + name, Device: dev, TLS: spec.TLS}
	if a.cfg.ExportClientAuth && (spec.TLS == nbd.TLSDefault || spec.TLS == nbd.TLSRequired) {
		e.TLS, e.ClientAuth = nbd.TLSRequired, true
	}
	if spec.Grants != nil {
		// only the granted clients (and the nodes): authenticated TLS,
		// whatever else the spec says
		e.TLS, e.ClientAuth = nbd.TLSRequired, true
		e.Authorize = grantCheck(a.node.ClusterID(), name, spec.Grants)
	}
	return e
}

// syncAccess applies a changed TLS policy (hacs volume tls) or changed
// grants (hacs volume grant/ungrant) of a volume served as p to its
// export; a client no longer granted loses its open connections.
func (a *Agent) syncAccess(v *volumeView, p *primary) {
	want := a.exportOf(v.name, *v.spec, nil)
	changed, err := a.esrv.SetExportAccess(v.name, want.TLS, want.ClientAuth)
	if err != nil {
		a.log.Warn("changing the export's TLS policy", "volume", v.name, "err", err)
		return
	}
	if changed {
		a.emit("volume-tls-changed", v.name, fmt.Sprintf("export policy now tls %s, client authentication %v (for new connections)", want.TLS, want.ClientAuth))
	}
	key := grantsKey(v.spec.Grants)
	a.mu.Lock()
	same := p.grants == key
	a.mu.Unlock()
	if same {
		return
	}
	cut, err := a.esrv.SetExportAuthorize(v.name, want.Authorize, "the client is no longer granted volume "+v.name)
	if err != nil {
		a.log.Warn("changing the export's grants", "volume", v.name, "err", err)
		return
	}
	a.mu.Lock()
	p.grants = key
	a.mu.Unlock()
	a.log.Info("export grants applied", "volume", v.name, "grants", GrantsString(v.spec.Grants), "cut", cut)
	if cut > 0 {
		a.emitFields(EventVolumeClientsCut, v.name, fmt.Sprintf("cut %d open connection(s) of clients no longer granted (grants now: %s)", cut, GrantsString(v.spec.Grants)),
			map[string]string{"cut": strconv.Itoa(cut)})
	}
}

// announce publishes where a volume is served now (a.mu not needed: the
// key's content depends only on the epoch).
func (a *Agent) announce(ctx context.Context, name string, m *mirror.Mirror, from time.Time) {
	a.putExport(ctx, name, m.Epoch())
	// epoch, and the time the export began taking requests (the event is
	// stamped later), for whoever checks that no two epochs overlap.
	a.emitFields("volume-serving", name, fmt.Sprintf("serving as primary at epoch %d on %s (in sync: %v)", m.Epoch(), a.exportAddr, m.InSync()),
		map[string]string{"epoch": strconv.FormatUint(m.Epoch(), 10), "serving_from": from.UTC().Format(time.RFC3339Nano)})
}

func (a *Agent) putExport(ctx context.Context, name string, epoch uint64) {
	e := Export{Node: a.self(), Addr: a.exportAddr, Name: name, Epoch: epoch, TLS: a.exportTLS()}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := a.node.Client().Put(pctx, exportKey(name), mustJSON(e)); err != nil {
		a.log.Warn("publishing export", "volume", name, "err", err)
	}
}

// stopPrimary stops serving a volume with primary p. graceful flushes
// first (the primary moves on purpose); otherwise the mirror is dropped as
// it is (fenced, or this node may not serve any more). Callers act on the
// volume alone (its worker, or with its act lock).
func (a *Agent) stopPrimary(name string, p *primary, why string, graceful bool) {
	a.mu.Lock()
	if a.prims[name] != p {
		a.mu.Unlock()
		return
	}
	delete(a.prims, name)
	a.mu.Unlock()
	cut := a.esrv.RemoveExport(name)
	a.cutMu.Lock()
	if c, ok := a.cuts[name]; ok {
		cut = c.at // cut off first (fenceLoop, newerEpochOpened)
		delete(a.cuts, name)
	}
	a.cutMu.Unlock()
	if graceful {
		p.m.Flush()
	}
	p.m.Close()
	// stopped_at: when the export's clients were cut off (no request taken
	// and no reply sent after it); the event is stamped once the requests
	// in flight ended and the mirror closed.
	a.emitStopped(name, p, why, cut)
}

// emitStopped emits a tenure's volume-stopped event, once (the agent's
// stop may emit it before stopPrimary ends: stop).
func (a *Agent) emitStopped(name string, p *primary, why string, cut time.Time) {
	if !p.stopEmitted.CompareAndSwap(false, true) {
		return
	}
	a.emitFields("volume-stopped", name, "stopped serving: "+why,
		map[string]string{"epoch": strconv.FormatUint(p.epoch, 10), "stopped_at": cut.UTC().Format(time.RFC3339Nano)})
}

// recordFailure counts a failure of the volume on this node.
func (a *Agent) recordFailure(ctx context.Context, name string) {
	cli := a.node.Client()
	key := failureKey(name, a.self())
	for i := 0; i < 5; i++ {
		resp, err := cli.Get(ctx, key)
		if err != nil {
			return
		}
		var f struct {
			Count int       `json:"count"`
			Last  time.Time `json:"last"`
		}
		rev := int64(0)
		if len(resp.Kvs) > 0 {
			rev = resp.Kvs[0].ModRevision
			jsonUnmarshal(resp.Kvs[0].Value, &f)
		}
		f.Count++
		f.Last = time.Now().UTC()
		tr, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).Then(clientv3.OpPut(key, mustJSON(f))).Commit()
		if err == nil && tr.Succeeded {
			return
		}
	}
}

// Primaries lists the volumes this node serves with their status.
func (a *Agent) Primaries() map[string]mirror.Status {
	a.mu.Lock()
	prims := maps.Clone(a.prims)
	a.mu.Unlock()
	out := map[string]mirror.Status{}
	for n, p := range prims {
		out[n] = p.m.Status() // may wait for the mirror: not under mu
	}
	return out
}

func (a *Agent) mirrorOf(name string) (*mirror.Mirror, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if p := a.prims[name]; p != nil {
		return p.m, nil
	}
	return nil, errors.New("not the primary of " + name)
}
