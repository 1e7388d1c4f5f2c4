package cluster

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
)

var (
	// ErrRemoved means this node was removed from the cluster; it never
	// runs again with its data directory.
	ErrRemoved = errors.New("this node was removed from the cluster")
	// ErrNotServing means this node does not hold its liveness lease (it
	// cannot reach a quorum, or its lease expired) and must not act.
	ErrNotServing = errors.New("this node is not serving: it does not hold its liveness lease (no quorum)")
	// ErrStopped is returned by calls on a stopped node.
	ErrStopped = errors.New("cluster node stopped")
)

// Phase is where a node is in its life.
type Phase string

const (
	PhaseStarting      Phase = "starting"
	PhaseWaitingQuorum Phase = "waiting-for-quorum"
	PhaseRunning       Phase = "running"
	PhaseStopping      Phase = "stopping"
	PhaseStopped       Phase = "stopped"
	PhaseFailed        Phase = "failed"
)

// Node is this machine's member of a hacs cluster: its identity, its
// connection to the cluster store, its liveness lease, its part in the DC
// election and its view of the membership.
type Node struct {
	cfg Config
	log *slog.Logger
	mux *http.ServeMux

	ident   *identity
	identMu sync.Mutex // serializes ident changes and saves

	lockFile                            *os.File
	apiListen, peerListen, clientListen string
	apiAddr                             string // advertised API address
	creating                            bool   // this start creates the cluster
	newSecret                           string // join secret of a cluster being created

	etcd *embed.Etcd
	cli  *clientv3.Client

	apiLn, sockLn net.Listener
	httpSrv       *http.Server
	apiGate       *connGate // limits on connections not authenticated yet

	lifeCtx    context.Context
	lifeCancel context.CancelFunc
	leaseCtx   context.Context // liveness loop; canceled first on Stop
	leaseStop  context.CancelFunc
	wg         sync.WaitGroup
	leaseWG    sync.WaitGroup

	ready     chan struct{}
	done      chan struct{}
	doneOnce  sync.Once
	stopOnce  sync.Once
	callbacks chan func()
	events    chan Event
	// evStop (closed once by flushEvents) ends the event writer, which
	// hands the events it could not write yet to evLeft; evWriting says
	// whether it was started.
	evStop    chan struct{}
	evStopped sync.Once
	evCtx     context.Context // the writer's writes (evCancel: by flushEvents)
	evCancel  context.CancelFunc
	evLeft    chan []Event
	evWriting atomic.Bool

	nodesCache *Cache
	dcCache    *Cache

	mu            sync.Mutex
	phase         Phase
	err           error
	info          ClusterInfo
	changes       chan struct{}
	registeredRev int64
	// raftLeaderCost: see SetRaftLeaderCost
	raftLeaderCost func(node string) int

	serving       bool
	servingCtx    context.Context
	servingCancel context.CancelFunc
	servingSince  time.Time
	servingReason string
	lease         clientv3.LeaseID
	leaseTTL      time.Duration
	lastRenewal   time.Time
	aliveRev      int64 // revision of the last alive key put
	counters      leaseCounters

	won      bool   // this node's election key is the oldest
	dcKey    string // this node's election key
	dcRev    int64  // its create revision: the DC term
	isDC     bool
	dcCtx    context.Context
	dcCancel context.CancelFunc
	dcName   string // the DC as observed in the store
	dcSince  time.Time

	membership  Membership
	transitions map[string]time.Time
	// rolesGiven: Config.Roles was set (--roles); otherwise a restarted
	// node keeps the roles of its record (changed with ChangeRoles).
	rolesGiven bool

	// the cluster PKI (nil in an --insecure cluster)
	creds    *tlsCreds
	extTLS   *tls.Config // the external etcd's client credentials (nil: plain http://)
	newCA    *caRecord   // CA of a cluster being created, stored at creation
	httpOnce sync.Once
	httpCli  *http.Client
	revMu    sync.RWMutex
	revoked  map[string]struct{} // serials (decimal) of revoked certificates
	renewMu  sync.Mutex
	tracker  connTracker // connections cut when their certificate is revoked
	rotKick  chan struct{}
	// the TLS front of the embedded etcd's client port (secure clusters)
	etcdFront *etcdFront
	// etcdTrustPEM: the CA file the embedded etcd was started with
	etcdTrustPEM []byte
	retired      int // old-CA certificates in the revocation list (after a CA rotation)

	// the administrator's export client certificate of a cluster being
	// created (recorded at creation, written to DATA_DIR/admin-client)
	newAdminClient *adminClientCert
	// API tokens (secure clusters)
	tokensCache atomic.Pointer[Cache]
	// the embedded etcd once started (n.etcd, for the API's goroutines:
	// the API listens before etcd starts)
	etcdLive atomic.Pointer[embed.Etcd]
	// closed when this node finds it has lost its quorum (quorum.go)
	quorumOnce sync.Once
	quorumMu   sync.Mutex
	quorumGone chan struct{}
}

// New checks cfg and returns a node ready to Start.
func New(cfg Config) (*Node, error) {
	rolesGiven := len(cfg.Roles) > 0
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	n := &Node{
		cfg:         cfg,
		log:         cfg.Logger,
		mux:         http.NewServeMux(),
		ready:       make(chan struct{}),
		done:        make(chan struct{}),
		callbacks:   make(chan func(), 1024),
		events:      make(chan Event, 1024),
		evStop:      make(chan struct{}),
		evLeft:      make(chan []Event, 1),
		changes:     make(chan struct{}),
		phase:       PhaseStarting,
		servingCtx:  canceled,
		transitions: map[string]time.Time{},
		rolesGiven:  rolesGiven,
		rotKick:     make(chan struct{}, 1),
	}
	n.lifeCtx, n.lifeCancel = context.WithCancel(context.Background())
	n.leaseCtx, n.leaseStop = context.WithCancel(n.lifeCtx)
	n.evCtx, n.evCancel = context.WithCancel(n.lifeCtx)
	n.routes()
	return n, nil
}

// Mux is the node's HTTP API mux (served on the --api address and on
// DATA_DIR/api.sock); other layers may register their handlers on it.
func (n *Node) Mux() *http.ServeMux { return n.mux }

// Start brings the node up: it checks the data directory, the addresses and
// (for a new node) the join token synchronously, so that bad input fails
// here with a clear message; then it connects to the cluster in the
// background (Ready is closed once it is registered and holds its lease;
// Done is closed if that fails fatally).
func (n *Node) Start(ctx context.Context) error {
	err := n.start(ctx)
	if err != nil {
		n.cleanup()
		n.mu.Lock()
		n.phase, n.err = PhaseFailed, err
		n.mu.Unlock()
		n.doneOnce.Do(func() { close(n.done) })
	}
	return err
}

func (n *Node) start(ctx context.Context) error {
	lf, err := lockDataDir(n.cfg.DataDir)
	if err != nil {
		return err
	}
	n.lockFile = lf
	id, err := loadIdentity(n.cfg.DataDir)
	if err != nil {
		return err
	}
	if id != nil && !id.Insecure && (id.External || legacyPlain(id, n.cfg.DataDir)) && !hasTLSDir(n.cfg.DataDir) {
		// a data directory of a hacs without the cluster PKI (on an
		// external etcd: without it there)
		n.log.Warn("this node belongs to a cluster created before hacs had TLS: it keeps running without TLS and API authentication; create a new cluster to have them (docs/SECURITY.md)")
		id.Insecure = true
	}
	if !n.cfg.EtcdTLS.empty() && len(n.cfg.EtcdEndpoints) == 0 && (id == nil || !id.External) {
		return errors.New("--etcd-cacert, --etcd-cert and --etcd-key are the client credentials of an external etcd: give them with --etcd-endpoints")
	}
	n.ident = id
	stored := ""
	if id != nil {
		stored = id.APIAddr
	}
	n.apiListen = n.pick(n.cfg.APIAddr, stored, DefaultAPIAddr)
	if err := n.listenAPI(); err != nil {
		return err
	}
	switch {
	case id != nil && !id.Joining:
		err = n.prepareRestart(ctx)
	case len(n.cfg.EtcdEndpoints) > 0:
		err = n.prepareExternal(ctx)
	case n.cfg.Join != "" || id != nil:
		err = n.prepareJoin(ctx)
	default:
		err = n.prepareCreate()
	}
	if err != nil {
		return err
	}
	n.log = n.log.With("node", n.ident.Name)
	if !n.ident.Insecure {
		if err := n.setupCreds(); err != nil {
			return err
		}
	} else if n.ident.Insecure {
		n.log.Warn("this cluster runs WITHOUT TLS and WITHOUT API authentication (--insecure): anyone who reaches its ports can read and change every volume")
	}
	if err := n.startAPI(); err != nil {
		return err
	}
	if err := n.checkNotRemoved(ctx); err != nil {
		return err
	}
	if n.ident.Voter && !n.ident.External {
		if n.ident.EtcdStarted {
			if _, err := os.Stat(filepath.Join(n.ident.etcdDir(n.cfg.DataDir), "member")); err != nil {
				return fmt.Errorf("the etcd data of this voting node (%s) is missing, so it cannot rejoin as the same etcd member: on another member run `hacs node remove %s`, then remove %s and join again as a new node", n.ident.etcdDir(n.cfg.DataDir), n.ident.Name, n.cfg.DataDir)
			}
		}
		state := "existing"
		if n.ident.Creator {
			state = "new"
		}
		e, err := n.startEtcd(state, n.ident.InitialCluster)
		if err != nil {
			return err
		}
		n.etcd = e
		n.etcdLive.Store(e)
	}
	n.wg.Add(2)
	go n.runCallbacks()
	go n.run()
	return nil
}

func (n *Node) pick(flag, stored, def string) string {
	if flag != "" {
		return flag
	}
	if stored != "" {
		return stored
	}
	return def
}

func (n *Node) prepareRestart(ctx context.Context) error {
	id := n.ident
	dir := n.cfg.DataDir
	if id.Removed {
		return n.removedError()
	}
	if id.Schema != SchemaVersion {
		return fmt.Errorf("data directory %s was written by a hacs agent with key schema %d, this agent (version %s) uses schema %d: run the hacs version this node was running, or upgrade the whole cluster", dir, id.Schema, n.cfg.Version, SchemaVersion)
	}
	if n.cfg.Name != "" && n.cfg.Name != id.Name {
		return fmt.Errorf("data directory %s belongs to node %s, not %s: start without --name (or with --name %s), or give another --data-dir to create a new node", dir, id.Name, n.cfg.Name, id.Name)
	}
	if n.cfg.Token != "" {
		tok, err := ParseToken(n.cfg.Token)
		if err != nil {
			return err
		}
		if tok.ClusterID != id.ClusterID {
			return fmt.Errorf("data directory %s belongs to cluster %s (node %s), but the token is for cluster %s: to join cluster %s as a new node use another --data-dir (or remove %s); to restart this node, drop --join and --token", dir, id.ClusterID, id.Name, tok.ClusterID, tok.ClusterID, dir)
		}
		n.log.Info("this node is already a member of the cluster: --join and --token are ignored", "cluster", id.ClusterID)
	}
	if len(n.cfg.EtcdEndpoints) > 0 && !id.External {
		return fmt.Errorf("data directory %s belongs to a cluster with an embedded etcd; --etcd-endpoints would point this node at another store: drop --etcd-endpoints", dir)
	}
	if id.External && len(n.cfg.EtcdEndpoints) > 0 {
		id.Endpoints = slices.Clone(n.cfg.EtcdEndpoints)
	}
	if id.External {
		if err := n.setupStoreLink(); err != nil {
			return err
		}
		// credentials the store refuses are not remembered
		if err := probeStore(ctx, id.Endpoints, n.extTLS, id.StoreTLS); err != nil {
			return err
		}
	}
	n.apiListen = n.pick(n.cfg.APIAddr, id.APIAddr, DefaultAPIAddr)
	n.peerListen = n.pick(n.cfg.PeerListen, id.PeerListen, DefaultPeerListen)
	n.clientListen = n.pick(n.cfg.ClientListen, id.ClientListen, DefaultClientListen)
	if id.Voter && !id.External {
		peer, err := advertiseAddr(n.peerListen, n.cfg.Advertise)
		if err != nil {
			return err
		}
		scheme := etcdScheme(id.Insecure)
		if scheme+peer != id.PeerURL {
			return fmt.Errorf("this node's etcd member is known to the cluster at peer URL %s, but --peer-listen %s would make it %s%s: restart with the address it had (or without --peer-listen)", id.PeerURL, n.peerListen, scheme, peer)
		}
		client, err := advertiseAddr(n.clientListen, n.cfg.Advertise)
		if err != nil {
			return err
		}
		id.ClientURL = scheme + client
		if err := checkListen("--peer-listen", n.peerListen); err != nil {
			return err
		}
		if err := checkListen("--client-listen", n.clientListen); err != nil {
			return err
		}
	}
	id.APIAddr, id.PeerListen, id.ClientListen = n.apiListen, n.peerListen, n.clientListen
	return id.save(dir)
}

func (n *Node) prepareCreate() error {
	name := n.cfg.Name
	if name == "" {
		name = defaultName()
	}
	n.apiListen = n.pick(n.cfg.APIAddr, "", DefaultAPIAddr)
	n.peerListen = n.pick(n.cfg.PeerListen, "", DefaultPeerListen)
	n.clientListen = n.pick(n.cfg.ClientListen, "", DefaultClientListen)
	peer, client, err := n.etcdURLs(n.cfg.Insecure)
	if err != nil {
		return err
	}
	id := &identity{
		Insecure:  n.cfg.Insecure,
		ClusterID: randomHex(8),
		NodeID:    randomHex(8),
		Name:      name,
		Schema:    SchemaVersion,
		CreatedAt: time.Now().UTC(),
		Voter:     true,
		Creator:   true,
		PeerURL:   peer,
		ClientURL: client,
		APIAddr:   n.apiListen, PeerListen: n.peerListen, ClientListen: n.clientListen,
	}
	id.InitialCluster = name + "=" + id.PeerURL
	id.Endpoints = []string{id.ClientURL}
	n.ident = id
	n.creating = true
	n.newSecret = newSecret()
	if !id.Insecure {
		if err := n.createPKI(id.ClusterID, id.NodeID, name, n.certHosts(peer, client)); err != nil {
			return fmt.Errorf("creating the cluster CA: %w", err)
		}
	}
	return id.save(n.cfg.DataDir)
}

// prepareExternal makes a new node of a cluster on an external etcd. With
// --insecure the cluster id comes from the store (or is created there) in
// run(); otherwise the node gets its certificate here (bootstrapExternal),
// creating the cluster and its CA if the store holds none.
func (n *Node) prepareExternal(ctx context.Context) error {
	name := n.cfg.Name
	if name == "" {
		name = defaultName()
	}
	n.apiListen = n.pick(n.cfg.APIAddr, "", DefaultAPIAddr)
	n.ident = &identity{
		NodeID:    randomHex(8),
		Name:      name,
		Schema:    SchemaVersion,
		CreatedAt: time.Now().UTC(),
		External:  true,
		Insecure:  n.cfg.Insecure,
		APIAddr:   n.apiListen,
		Endpoints: slices.Clone(n.cfg.EtcdEndpoints),
	}
	if err := n.setupStoreLink(); err != nil {
		return err
	}
	n.newSecret = newSecret()
	if n.cfg.Insecure {
		return nil
	}
	os.RemoveAll(TLSFiles(n.cfg.DataDir).Dir) // of an attempt that did not finish
	return n.bootstrapExternal(ctx)
}

// Ready is closed once the node is registered and holds its lease.
func (n *Node) Ready() <-chan struct{} { return n.ready }

// Done is closed when the node has failed fatally or stopped; Err says why.
func (n *Node) Done() <-chan struct{} { return n.done }

// Err is the fatal error that closed Done (nil after a clean Stop).
func (n *Node) Err() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.err
}

// Name is this node's name.
func (n *Node) Name() string { return n.ident.Name }

// ID is this node's identity (stable across restarts).
func (n *Node) ID() string { return n.ident.NodeID }

// ClusterID is the id of the cluster this node belongs to.
func (n *Node) ClusterID() string {
	n.identMu.Lock()
	defer n.identMu.Unlock()
	return n.ident.ClusterID
}

// Client is the etcd client of the cluster store (nil before Ready).
// Layers above use it for their own keys (docs/SCHEMA.md).
func (n *Node) Client() *clientv3.Client {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cli
}

// Config returns the node's configuration (with defaults applied).
func (n *Node) Config() Config { return n.cfg }

// APIAddr is the advertised address of this node's HTTP API.
func (n *Node) APIAddr() string { return n.apiAddr }

// fail records a fatal error and shuts the node down.
func (n *Node) fail(err error) {
	n.mu.Lock()
	if n.err == nil && n.phase != PhaseStopping && n.phase != PhaseStopped {
		n.err = err
		n.phase = PhaseFailed
	}
	n.mu.Unlock()
	n.log.Error("cluster node failed", "err", err)
	n.setServing(false, "node failed: "+err.Error())
	go n.Stop(context.Background())
}

func (n *Node) setPhase(p Phase) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.phase == PhaseStopping || n.phase == PhaseStopped || n.phase == PhaseFailed {
		return
	}
	if n.phase != p {
		n.phase = p
		n.notifyLocked()
	}
}

// Phase is where the node is in its life.
func (n *Node) Phase() Phase {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.phase
}

func (n *Node) notifyLocked() {
	close(n.changes)
	n.changes = make(chan struct{})
}

// Changes returns a channel closed at the next change of the membership,
// the DC, or this node's serving state: take the state you need, then wait
// on the channel you got before taking it.
func (n *Node) Changes() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.changes
}

func (n *Node) callback(fn func()) {
	select {
	case n.callbacks <- fn:
	default:
		n.log.Error("callback queue full: a serving or DC callback blocks; dropping a notification")
	}
}

func (n *Node) runCallbacks() {
	defer n.wg.Done()
	for {
		select {
		case fn := <-n.callbacks:
			fn()
		case <-n.lifeCtx.Done():
			for {
				select {
				case fn := <-n.callbacks:
					fn()
				default:
					return
				}
			}
		}
	}
}

// run connects to the cluster and starts the node's loops.
func (n *Node) run() {
	defer n.wg.Done()
	ctx := n.lifeCtx
	if err := n.bringUp(ctx); err != nil {
		if ctx.Err() == nil {
			n.fail(err)
		}
		return
	}
}

// retry runs fn until it succeeds, reporting a quorum wait while it fails.
func (n *Node) retry(ctx context.Context, what string, fn func(ctx context.Context) error) error {
	start := time.Now()
	lastLog := start
	backoff := 100 * time.Millisecond
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := fn(cctx)
		cancel()
		if err == nil {
			return nil
		}
		var perm permanentError
		if errors.As(err, &perm) {
			return perm.err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		n.setPhase(PhaseWaitingQuorum)
		if time.Since(lastLog) > 5*time.Second {
			n.log.Warn("waiting for the cluster store (a quorum of voting members)", "step", what, "waited", time.Since(start).Round(time.Second), "err", err)
			lastLog = time.Now()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, time.Second)
	}
}

type permanentError struct{ err error }

func (p permanentError) Error() string { return p.err.Error() }

func permanent(err error) error { return permanentError{err} }

func (n *Node) bringUp(ctx context.Context) error {
	if n.etcd != nil {
		n.setPhase(PhaseWaitingQuorum)
		if err := n.waitEtcdReady(ctx, n.etcd); err != nil {
			return err
		}
		n.identMu.Lock()
		if !n.ident.EtcdStarted {
			n.ident.EtcdStarted = true
			n.ident.InitialCluster = ""
			n.ident.Joining = false
		}
		err := n.ident.save(n.cfg.DataDir)
		n.identMu.Unlock()
		if err != nil {
			return err
		}
		n.wg.Add(1)
		go n.watchEtcd()
	}
	eps := n.clientEndpoints()
	cli, err := newClient(eps, n.storeTLS())
	if err != nil {
		return fmt.Errorf("connecting to the cluster store at %v: %w", eps, err)
	}
	n.mu.Lock()
	n.cli = cli
	n.mu.Unlock()

	if err := n.retry(ctx, "cluster identity", n.checkCluster); err != nil {
		return err
	}
	if err := n.retry(ctx, "node registration", n.register); err != nil {
		return err
	}
	n.nodesCache = NewCache(ctx, cli, PrefixNodes, n.log)
	n.dcCache = NewCache(ctx, cli, PrefixDC, n.log)
	if n.creds != nil {
		n.tokensCache.Store(NewCache(ctx, cli, PrefixTokens, n.log))
	}

	n.wg.Add(8)
	go n.rotationLoop()
	go n.revocationLoop()
	go n.renewLoop()
	n.evWriting.Store(true)
	go n.eventWriter()
	go n.watchLoop()
	go n.endpointsLoop()
	go n.dcDuties()
	go n.promoteLoop()
	n.leaseWG.Add(1)
	go n.livenessLoop()

	if _, err := n.WaitServing(ctx); err != nil {
		return err
	}
	// Ready means this node's own view shows it online
	n.mu.Lock()
	rev := max(n.registeredRev, n.aliveRev)
	n.mu.Unlock()
	if err := n.nodesCache.WaitSynced(ctx, rev); err != nil {
		return err
	}
	for {
		n.mu.Lock()
		ok, ch := n.membership.Rev >= rev, n.changes
		n.mu.Unlock()
		if ok {
			break
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	n.setPhase(PhaseRunning)
	close(n.ready)
	n.log.Info("node is up", "cluster", n.ClusterID(), "api", n.apiAddr, "voter", n.ident.Voter, "roles", n.cfg.Roles)
	return nil
}

// clientEndpoints are the etcd endpoints to use: the voters' client URLs,
// without this node's own while it is a learner.
func (n *Node) clientEndpoints() []string {
	n.identMu.Lock()
	defer n.identMu.Unlock()
	eps := slices.Clone(n.ident.Endpoints)
	if n.etcd != nil {
		if n.etcd.Server.IsLearner() {
			eps = slices.DeleteFunc(eps, func(s string) bool { return s == n.ident.ClientURL })
		} else if !slices.Contains(eps, n.ident.ClientURL) {
			eps = append([]string{n.ident.ClientURL}, eps...)
		}
	}
	if len(eps) == 0 {
		eps = []string{n.ident.ClientURL}
	}
	return eps
}

// checkCluster verifies (or, for the first node, writes) the cluster's
// identity record.
func (n *Node) checkCluster(ctx context.Context) error {
	resp, err := n.cli.Get(ctx, KeyClusterInfo)
	if err != nil {
		return err
	}
	if len(resp.Kvs) == 0 {
		if !n.ident.Creator && !n.ident.External {
			return permanent(fmt.Errorf("the cluster store at %v holds no hacs cluster: is this the right --etcd-endpoints / --join address?", n.ident.Endpoints))
		}
		if n.ident.External && !n.ident.Insecure && n.ident.ClusterID != "" {
			return permanent(fmt.Errorf("the external etcd at %v holds no hacs cluster, but this node belongs to cluster %s: is this the right --etcd-endpoints (was the store wiped)?", n.ident.Endpoints, n.ident.ClusterID))
		}
		id := n.ident.ClusterID
		if id == "" {
			id = randomHex(8)
		}
		created, err := n.createClusterRecord(ctx, n.cli, id)
		if err != nil {
			return err
		}
		if !created {
			return errors.New("cluster identity written concurrently; reading it again")
		}
		return nil
	}
	var info ClusterInfo
	if err := json.Unmarshal(resp.Kvs[0].Value, &info); err != nil {
		return permanent(fmt.Errorf("the cluster identity record %s is corrupt: %w", KeyClusterInfo, err))
	}
	if n.ident.External && n.ident.ClusterID == "" {
		n.identMu.Lock()
		n.ident.ClusterID = info.ID
		n.identMu.Unlock()
	}
	if info.ID != n.ident.ClusterID {
		return permanent(fmt.Errorf("the cluster store at %v belongs to cluster %s, but data directory %s belongs to cluster %s: point this node at its own cluster, or use another --data-dir", n.ident.Endpoints, info.ID, n.cfg.DataDir, n.ident.ClusterID))
	}
	if info.Schema != SchemaVersion {
		return permanent(fmt.Errorf("cluster %s uses key schema %d (created by hacs %s), this agent (hacs %s) uses schema %d: run the same hacs version on every node", info.ID, info.Schema, info.Version, n.cfg.Version, SchemaVersion))
	}
	if n.ident.External && n.creds == nil {
		// a node without TLS must not join a cluster that has it
		r, err := n.cli.Get(ctx, KeyCA, clientv3.WithCountOnly())
		if err != nil {
			return err
		}
		if r.Count > 0 {
			return permanent(fmt.Errorf("cluster %s on the external etcd at %v runs with TLS and API authentication (it has a cluster CA), but this node would run without (started with --insecure, or its TLS files %s are missing): start a new node without --insecure (it enrolls with the CA from the store); for an existing node restore %s, or remove %s and start it again as a new node", info.ID, n.ident.Endpoints, TLSFiles(n.cfg.DataDir).Dir, TLSFiles(n.cfg.DataDir).Dir, n.cfg.DataDir))
		}
	}
	n.mu.Lock()
	n.info = info
	n.mu.Unlock()
	if n.ident.External {
		n.identMu.Lock()
		err := n.ident.save(n.cfg.DataDir)
		n.identMu.Unlock()
		if err != nil {
			return permanent(err)
		}
	}
	return nil
}

// createClusterRecord writes the record of cluster id if the store holds
// none (one transaction: the record, the join secret and the first join
// token, and in a secure cluster its CA, the admin API token, this node's
// certificate and the administrator's client certificate). created is
// false when another node was first.
func (n *Node) createClusterRecord(ctx context.Context, cli *clientv3.Client, id string) (created bool, err error) {
	secret := n.newSecret
	if secret == "" {
		secret = newSecret()
	}
	info := ClusterInfo{ID: id, CreatedAt: time.Now().UTC(), CreatedBy: n.ident.Name, Schema: SchemaVersion, Version: n.cfg.Version, Voters: n.cfg.Voters, External: n.ident.External}
	b, _ := json.Marshal(info)
	ops := []clientv3.Op{clientv3.OpPut(KeyClusterInfo, string(b)), clientv3.OpPut(KeyJoinSecret, secret)}
	// The token the banner prints: short-lived, single use by default.
	joinSecret, joinRec := newJoinToken(n.cfg.JoinTokenTTL, n.cfg.JoinTokenUses, "cluster creation on node "+n.ident.Name)
	jb, _ := json.Marshal(joinRec)
	ops = append(ops, clientv3.OpPut(PrefixJoinTokens+joinRec.ID, string(jb)))
	var adminTok string
	if n.newCA != nil {
		adminTok = newAPIToken("admin")
		tb, _ := json.Marshal(APIToken{Name: "admin", Role: AuthAdmin, Hash: hashToken(adminTok), CreatedAt: time.Now().UTC(), CreatedBy: "cluster creation on node " + n.ident.Name})
		ops = append(ops, clientv3.OpPut(PrefixTokens+"admin", string(tb)))
		cb, _ := json.Marshal(n.newCA)
		ops = append(ops, clientv3.OpPut(KeyCA, string(cb)))
		if certPEM, err := os.ReadFile(TLSFiles(n.cfg.DataDir).Cert); err == nil {
			if serial, exp, err := certSerial(certPEM); err == nil {
				ops = append(ops, clientv3.OpPut(certKey(n.ident.NodeID, serial), exp.UTC().Format(time.RFC3339)))
			}
		}
		if ac := n.newAdminClient; ac != nil {
			rb, _ := json.Marshal(ac.rec)
			ops = append(ops, clientv3.OpPut(clientCertKey(ac.rec.Name, ac.rec.Serial), string(rb)))
		}
	}
	tr, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(KeyClusterInfo), "=", 0)).
		Then(ops...).Commit()
	if err != nil {
		return false, err
	}
	if !tr.Succeeded {
		return false, nil
	}
	n.mu.Lock()
	n.info = info
	n.mu.Unlock()
	if adminTok != "" {
		if err := writeTLSFile(filepath.Join(n.cfg.DataDir, AdminTokenFile), []byte(adminTok+"\n")); err != nil {
			n.log.Warn("cannot write the admin API token file", "err", err)
		}
		if n.newAdminClient != nil {
			if err := writeAdminClientDir(n.cfg.DataDir, n.newAdminClient, adminTok); err != nil {
				n.log.Warn("cannot write the administrator's client credentials", "err", err)
			}
		}
	}
	n.identMu.Lock()
	n.ident.ClusterID = id
	n.ident.Creator = true
	err = n.ident.save(n.cfg.DataDir)
	n.identMu.Unlock()
	if err != nil {
		return true, permanent(err)
	}
	n.emit(Event{Kind: EventClusterCreated, Message: fmt.Sprintf("cluster %s created by node %s", id, n.ident.Name)})
	n.printBanner(Token{ClusterID: id, Secret: joinSecret}, joinRec)
	return true, nil
}

func (n *Node) printBanner(tok Token, rec JoinToken) {
	if err := writeTokenFile(n.cfg.DataDir, tok); err != nil {
		n.log.Warn("cannot write the join token file", "err", err)
	}
	if n.ident.External {
		creds := ""
		if f := n.ident.StoreTLS; f.CACert != "" {
			creds = " --etcd-cacert FILE"
			if f.Cert != "" {
				creds += " --etcd-cert FILE --etcd-key FILE"
			}
		}
		fmt.Fprintf(n.cfg.Out, `hacs: created cluster %s with node %s on the external etcd at %s
to add a node, run on it (with a client certificate of the store):
  hacs agent --data-dir DIR --etcd-endpoints %s%s
`, tok.ClusterID, n.ident.Name, strings.Join(n.ident.Endpoints, ","), strings.Join(n.ident.Endpoints, ","), creds)
	} else {
		n.printJoinBanner(tok, rec)
	}
	if n.creds != nil || n.newCA != nil {
		fmt.Fprintf(n.cfg.Out, `TLS on every link; the CLI needs the cluster CA (%s) and an API token
(the admin token is in %s): see docs/SECURITY.md
the administrator's client credentials (cluster CA, admin token, and the
export client certificate "admin" that nbdinfo, nbdcopy and qemu present:
tls-certificates=DIR) are in %s: copy them to ~/.config/hacs
`, TLSFiles("DATA_DIR").CACert, filepath.Join("DATA_DIR", AdminTokenFile), filepath.Join("DATA_DIR", AdminClientDir))
	}
}

func (n *Node) printJoinBanner(tok Token, rec JoinToken) {
	nodes := "one node"
	if rec.Uses > 1 {
		nodes = fmt.Sprintf("%d nodes", rec.Uses)
	}
	fmt.Fprintf(n.cfg.Out, `hacs: created cluster %s with node %s
join token: %s
to add a node, run on it:
  hacs agent --data-dir DIR --join %s --token %s
(the token is also in %s; keep it secret; it admits %s until
%s; make more with "hacs cluster token create --data-dir DATA_DIR")
`, tok.ClusterID, n.ident.Name, tok, n.apiAddr, tok, filepath.Join("DATA_DIR", tokenFile), nodes, rec.Expires.Format(time.RFC3339))
}

// register writes this node's record, refusing a removed identity or a
// name taken by another node.
func (n *Node) register(ctx context.Context) error {
	id := n.ident
	r, err := n.cli.Get(ctx, RemovedKey(id.NodeID))
	if err != nil {
		return err
	}
	if len(r.Kvs) > 0 {
		return permanent(n.markRemoved())
	}
	key := NodeConfigKey(id.Name)
	resp, err := n.cli.Get(ctx, key)
	if err != nil {
		return err
	}
	var old NodeConfig
	var modRev int64
	if len(resp.Kvs) > 0 {
		modRev = resp.Kvs[0].ModRevision
		if err := json.Unmarshal(resp.Kvs[0].Value, &old); err != nil {
			return permanent(fmt.Errorf("node record %s is corrupt: %w", key, err))
		}
		if old.ID != id.NodeID {
			return permanent(fmt.Errorf("the cluster already has a node named %s (id %s; this node is id %s): remove it first with `hacs node remove %s` on a member, or give this node another name", id.Name, old.ID, id.NodeID, id.Name))
		}
	}
	roles := slices.Clone(n.cfg.Roles)
	if !n.rolesGiven && len(old.Roles) > 0 && old.HasRole(RoleWitness) == slices.Contains(roles, RoleWitness) {
		roles = old.Roles // as set by an administrator (hacs node setrole)
	}
	cfg := NodeConfig{
		ID:          id.NodeID,
		Name:        id.Name,
		Roles:       roles,
		Labels:      maps.Clone(n.cfg.Labels),
		APIAddr:     n.apiAddr,
		ReplicaAddr: old.ReplicaAddr,
		Voter:       id.Voter,
		MemberID:    id.MemberID,
		Version:     n.cfg.Version,
		Schema:      SchemaVersion,
		JoinedAt:    old.JoinedAt,
	}
	if id.Voter {
		cfg.PeerURL, cfg.ClientURL = id.PeerURL, id.ClientURL
		if n.etcd != nil {
			cfg.MemberID = uint64(n.etcd.Server.MemberID())
		}
	}
	if cfg.JoinedAt.IsZero() {
		cfg.JoinedAt = time.Now().UTC()
	}
	b, _ := json.Marshal(cfg)
	tr, err := n.cli.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(key), "=", modRev),
		clientv3.Compare(clientv3.CreateRevision(RemovedKey(id.NodeID)), "=", 0),
	).Then(clientv3.OpPut(key, string(b))).Commit()
	if err != nil {
		return err
	}
	if !tr.Succeeded {
		return errors.New("node record changed concurrently; retrying")
	}
	n.mu.Lock()
	n.registeredRev = tr.Header.Revision
	n.mu.Unlock()
	kind, msg := EventNodeStarted, fmt.Sprintf("node %s started (pid %d, version %s)", id.Name, os.Getpid(), n.cfg.Version)
	if len(resp.Kvs) == 0 {
		kind, msg = EventNodeJoined, fmt.Sprintf("node %s joined the cluster (roles %v, voter %v)", id.Name, cfg.Roles, cfg.Voter)
	}
	n.emit(Event{Kind: kind, Message: msg})
	return nil
}

// checkNotRemoved asks the other members (best effort, briefly) whether
// this node's identity was removed while it was down, so that a removed
// node is refused before it starts anything.
func (n *Node) checkNotRemoved(ctx context.Context) error {
	if n.creating || n.ident.ClusterID == "" {
		return nil
	}
	var others []string
	for _, ep := range n.ident.Endpoints {
		if ep != n.ident.ClientURL {
			others = append(others, ep)
		}
	}
	if len(others) == 0 {
		return nil
	}
	cli, err := newClient(others, n.storeTLS())
	if err != nil {
		return nil
	}
	defer cli.Close()
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	r, err := cli.Get(cctx, RemovedKey(n.ident.NodeID))
	if err == nil && len(r.Kvs) > 0 {
		return n.markRemoved()
	}
	if err != nil && n.ident.External {
		if e := storeLinkError(others, n.ident.StoreTLS, err); e != nil {
			return e
		}
		return probeStore(ctx, others, n.extTLS, n.ident.StoreTLS)
	}
	if err != nil && n.creds != nil {
		return n.probeRevoked(ctx, others)
	}
	return nil
}

func (n *Node) removedError() error {
	return fmt.Errorf("%w: its identity (node %s, id %s, in %s) can never rejoin; to bring this machine back, remove %s and join again as a new node with --join and --token", ErrRemoved, n.ident.Name, n.ident.NodeID, n.cfg.DataDir, n.cfg.DataDir)
}

// markRemoved records the removal in node.json and returns the error.
func (n *Node) markRemoved() error {
	n.identMu.Lock()
	if !n.ident.Removed {
		n.ident.Removed = true
		n.ident.RemovedAt = time.Now().UTC()
		if err := n.ident.save(n.cfg.DataDir); err != nil {
			n.log.Warn("cannot record the removal in node.json", "err", err)
		}
	}
	n.identMu.Unlock()
	return n.removedError()
}

// watchEtcd fails the node when the embedded etcd stops on its own.
func (n *Node) watchEtcd() {
	defer n.wg.Done()
	select {
	case <-n.lifeCtx.Done():
	case <-n.etcd.Server.StopNotify():
		if n.lifeCtx.Err() == nil {
			err := n.diagnoseEtcdStop(n.etcd)
			if errors.Is(err, ErrRemoved) {
				err = n.markRemoved()
			}
			n.fail(err)
		}
	case err := <-n.etcd.Err():
		if n.lifeCtx.Err() != nil {
			return
		}
		select {
		case <-n.etcd.Server.StopNotify():
			err = n.diagnoseEtcdStop(n.etcd)
			if errors.Is(err, ErrRemoved) {
				err = n.markRemoved()
			}
		case <-time.After(2 * time.Second):
			err = etcdFailure(err)
		case <-n.lifeCtx.Done():
			return
		}
		n.fail(err)
	}
}

// Stop leaves gracefully: stops serving, writes the events still queued
// (those of the layers above, such as the volumes' volume-stopped, which
// they emitted before calling Stop) within StopEventsTimeout, gives up the
// lease (so that the others see this node offline at once and elect a new
// DC), hands its etcd raft leadership over, then stops the embedded etcd.
// Each step that needs the cluster store is bounded (a node without quorum
// still stops), and so is the whole when ctx has a deadline: what is left
// of the embedded etcd's close at ctx's end is abandoned (the process is
// about to exit; etcd is crash-safe), so that Stop returns by then.
func (n *Node) Stop(ctx context.Context) error {
	n.stopOnce.Do(func() {
		start := time.Now()
		n.mu.Lock()
		failed := n.phase == PhaseFailed
		if !failed {
			n.phase = PhaseStopping
		}
		lease := n.lease
		cli := n.cli
		n.notifyLocked()
		n.mu.Unlock()
		n.leaseStop()
		n.leaseWG.Wait()
		n.setServing(false, "agent stopping")
		if cli != nil && !failed {
			n.emit(Event{Kind: EventNodeStopped, Message: fmt.Sprintf("node %s stopped", n.ident.Name)})
			if left := n.flushEvents(ctx, StopEventsTimeout); left > 0 {
				n.log.Warn("stopping: events not written to the cluster store (it did not take them in time); they are in this log only", "events", left)
			}
			if lease != 0 {
				rctx, cancel := context.WithTimeout(ctx, time.Second)
				cli.Revoke(rctx, lease)
				cancel()
			}
		}
		if !failed {
			n.handRaftLeadershipOver(ctx, time.Second)
		}
		n.lifeCancel()
		n.wg.Wait()
		n.cleanupBy(ctx)
		n.mu.Lock()
		if n.phase != PhaseFailed {
			n.phase = PhaseStopped
		}
		n.mu.Unlock()
		n.log.Info("node stopped", "took", time.Since(start).Round(time.Millisecond))
		n.doneOnce.Do(func() { close(n.done) })
	})
	<-n.done
	return nil
}

// StopEventsTimeout bounds the write of the last events while a node stops.
const StopEventsTimeout = 2 * time.Second

// handRaftLeadershipOver moves the etcd raft leadership, if this member
// holds it, to another voter that is online, waiting at most d: the
// others then need no election when this member stops. etcd's own close
// would try the same, but waits up to its request timeout (seconds) for a
// transferee that does not answer; after this, it finds this member a
// follower and skips it. If the transfer does not finish in time, the
// close tries once more within what is left of ctx (Stop), and at worst
// the others elect a leader after their election timeout, as after a
// crash.
func (n *Node) handRaftLeadershipOver(ctx context.Context, d time.Duration) {
	if n.etcd == nil {
		return
	}
	lead, target, _ := n.raftLeaderMove()
	if lead == 0 || lead != uint64(n.etcd.Server.MemberID()) || target == 0 {
		return
	}
	tctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	if err := n.etcd.Server.MoveLeader(tctx, lead, target); err != nil {
		n.log.Warn("stopping: handing the etcd raft leadership over", "to", fmt.Sprintf("%x", target), "err", err)
		return
	}
	n.log.Info("stopping: handed the etcd raft leadership over", "to", fmt.Sprintf("%x", target))
}

func (n *Node) cleanup() { n.cleanupBy(context.Background()) }

// cleanupBy closes the API servers, the client, the etcd front and the
// embedded etcd, waiting for the embedded etcd's close only until ctx
// ends (Stop).
func (n *Node) cleanupBy(ctx context.Context) {
	var api sync.WaitGroup
	if n.httpSrv != nil {
		// side by side with the rest: the API's requests under way get up
		// to a second to end while etcd closes (its peer port alone takes
		// about as long)
		api.Add(1)
		go func() {
			defer api.Done()
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			if n.httpSrv.Shutdown(sctx) != nil {
				n.httpSrv.Close()
			}
		}()
	} else {
		if n.apiLn != nil {
			n.apiLn.Close()
		}
		if n.sockLn != nil {
			n.sockLn.Close()
		}
	}
	if n.cli != nil {
		n.cli.Close()
	}
	n.etcdFront.close()
	if n.etcd != nil {
		closed := make(chan struct{})
		go func() {
			defer close(closed)
			n.etcd.Close()
		}()
		select {
		case <-closed:
		case <-ctx.Done():
			n.log.Warn("stopping: the embedded etcd did not close in time; leaving it to the process's exit")
		}
	}
	api.Wait()
	if n.lockFile != nil {
		n.lockFile.Close()
	}
	n.lifeCancel()
}

// etcdURLs checks that the embedded etcd's listen addresses are free and
// returns the peer and client URLs other nodes reach them at.
func (n *Node) etcdURLs(insecure bool) (peer, client string, err error) {
	if err := checkListen("--peer-listen", n.peerListen); err != nil {
		return "", "", err
	}
	if err := checkListen("--client-listen", n.clientListen); err != nil {
		return "", "", err
	}
	if peer, err = advertiseAddr(n.peerListen, n.cfg.Advertise); err != nil {
		return "", "", err
	}
	if client, err = advertiseAddr(n.clientListen, n.cfg.Advertise); err != nil {
		return "", "", err
	}
	scheme := etcdScheme(insecure)
	return scheme + peer, scheme + client, nil
}

func etcdScheme(insecure bool) string {
	if insecure {
		return "http://"
	}
	return "https://"
}

// certHosts are the hosts to name in this node's certificate.
func (n *Node) certHosts(urls ...string) []string {
	h := hostsOf(append([]string{n.apiAddr}, urls...)...)
	if n.cfg.Advertise != "" {
		h = append(h, n.cfg.Advertise)
	}
	return h
}

// legacyPlain: a node of a cluster created by a hacs without TLS (plain
// etcd URLs, no TLS directory).
func legacyPlain(id *identity, dataDir string) bool {
	if hasTLSDir(dataDir) {
		return false
	}
	for _, u := range append([]string{id.PeerURL, id.ClientURL}, id.Endpoints...) {
		if strings.HasPrefix(u, "http://") {
			return true
		}
	}
	return false
}

// hasTLSDir: the data directory holds TLS files (DATA_DIR/tls).
func hasTLSDir(dataDir string) bool {
	_, err := os.Stat(TLSFiles(dataDir).Dir)
	return err == nil
}
