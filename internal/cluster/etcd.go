package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// checkListen fails with a clear message when addr cannot be listened on.
func checkListen(flag, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return listenError(flag, addr, err)
	}
	return ln.Close()
}

func listenError(flag, addr string, err error) error {
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("%s %s: address already in use: another hacs agent or etcd may be running on this port; stop it, or choose another port with %s", flag, addr, flag)
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return fmt.Errorf("%s %s: this machine has no such address; give an address of one of its interfaces (or 0.0.0.0) with %s", flag, addr, flag)
	case errors.Is(err, syscall.EACCES):
		return fmt.Errorf("%s %s: permission denied (ports below 1024 need root); choose another port with %s", flag, addr, flag)
	}
	return fmt.Errorf("%s %s: %w", flag, addr, err)
}

// startEtcd starts the embedded etcd member of a voter. state is "new" for
// the first node, "existing" for a joining one; both are ignored by etcd
// once its data directory exists.
func (n *Node) startEtcd(state, initialCluster string) (*embed.Etcd, error) {
	id := n.ident
	ec := embed.NewConfig()
	ec.Name = id.Name
	ec.Dir = id.etcdDir(n.cfg.DataDir)
	scheme := etcdScheme(id.Insecure)
	lp, err := url.Parse(scheme + n.peerListen)
	if err != nil {
		return nil, err
	}
	clientListen := n.clientListen
	var front *etcdFront
	if n.creds != nil {
		// clients reach etcd through the node's TLS front (etcdfront.go);
		// etcd itself listens on a loopback port
		if front, err = n.listenEtcdFront(n.clientListen); err != nil {
			return nil, err
		}
		clientListen = "127.0.0.1:0"
	}
	lc, err := url.Parse(scheme + clientListen)
	if err != nil {
		front.close()
		return nil, err
	}
	ap, err := url.Parse(id.PeerURL)
	if err != nil {
		return nil, err
	}
	ac, err := url.Parse(id.ClientURL)
	if err != nil {
		return nil, err
	}
	ec.ListenPeerUrls = []url.URL{*lp}
	ec.AdvertisePeerUrls = []url.URL{*ap}
	ec.ListenClientUrls = []url.URL{*lc}
	ec.AdvertiseClientUrls = []url.URL{*ac}
	ec.InitialCluster = initialCluster
	ec.ClusterState = state
	ec.InitialClusterToken = "hacs-" + id.ClusterID
	ec.TickMs = uint(n.cfg.EtcdHeartbeat / time.Millisecond)
	ec.ElectionMs = uint(n.cfg.EtcdElectionTimeout / time.Millisecond)
	ec.Logger = "zap"
	ec.LogLevel = n.cfg.EtcdLogLevel
	ec.LogOutputs = []string{"stderr"}
	lg, err := etcdLogger(n.cfg.EtcdLogLevel)
	if err != nil {
		return nil, err
	}
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg)
	ec.AutoCompactionMode = embed.CompactorModePeriodic
	ec.AutoCompactionRetention = "5m"
	ec.SnapshotCount = 10000
	ec.StrictReconfigCheck = true
	ec.PreVote = true
	ec.MaxLearners = 1
	ec.EnableGRPCGateway = false
	ec.UnsafeNoFsync = n.cfg.EtcdUnsafeNoFsync
	if n.creds != nil {
		// mutual TLS on the peer and client URLs: only holders of a node
		// certificate of this cluster, not revoked, get in; etcd rereads
		// the certificate and the revocation list at every connection
		p := n.creds.paths
		// the client's source address is not matched against its
		// certificate's names (the chain to the cluster CA and the
		// revocation list are the identity; a multi-homed node may connect
		// from another address than it advertises, and the check would
		// look names up in DNS during the handshake)
		// Export client certificates (same CA, client authentication)
		// must not get in: only certificates valid for nodeOnlyHostname,
		// which every node certificate is and no client certificate is.
		ti := transport.TLSInfo{CertFile: p.Cert, KeyFile: p.Key, TrustedCAFile: p.CACert, ClientCertAuth: true, CRLFile: p.CRL, SkipClientSANVerify: true,
			AllowedHostnames: []string{nodeOnlyHostname}}
		ec.PeerTLSInfo, ec.ClientTLSInfo = ti, ti
	}
	ec.ListenMetricsUrls = nil
	ec.Metrics = "basic"
	e, err := embed.StartEtcd(ec)
	if err == nil && front != nil {
		if len(e.Clients) == 0 {
			e.Close()
			front.close()
			return nil, errors.New("the embedded etcd opened no client listener")
		}
		front.serve(e.Clients[0].Addr().String())
		n.etcdFront = front
		n.etcdTrustPEM, _ = os.ReadFile(n.creds.paths.CACert)
	}
	if err != nil {
		front.close()
		var flag, addr string
		switch {
		case strings.Contains(err.Error(), n.peerListen):
			flag, addr = "--peer-listen", n.peerListen
		case strings.Contains(err.Error(), n.clientListen):
			flag, addr = "--client-listen", n.clientListen
		}
		if flag != "" {
			return nil, listenError(flag, addr, err)
		}
		return nil, fmt.Errorf("starting the embedded etcd member (data in %s): %w", ec.Dir, err)
	}
	return e, nil
}

// waitEtcdReady waits until the embedded member has joined the raft group
// and can serve, logging while it waits for a quorum.
func (n *Node) waitEtcdReady(ctx context.Context, e *embed.Etcd) error {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	start := time.Now()
	for {
		select {
		case <-e.Server.ReadyNotify():
			return nil
		case err := <-e.Err():
			// a failing member stops: give it a moment, then find out why
			select {
			case <-e.Server.StopNotify():
				return n.diagnoseEtcdStop(e)
			case <-time.After(2 * time.Second):
			}
			return etcdFailure(err)
		case <-e.Server.StopNotify():
			return n.diagnoseEtcdStop(e)
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			n.log.Warn("embedded etcd is waiting for a quorum of voting members: start more of the cluster's voters", "waited", time.Since(start).Round(time.Second))
		}
	}
}

func etcdFailure(err error) error {
	if err != nil && strings.Contains(err.Error(), "permanently removed") {
		return fmt.Errorf("%w (the etcd member of this node was removed from the cluster)", ErrRemoved)
	}
	if err == nil {
		err = errors.New("stopped")
	}
	return fmt.Errorf("embedded etcd failed: %w", err)
}

// diagnoseEtcdStop explains why the embedded member stopped on its own:
// most often because the other members removed it.
func (n *Node) diagnoseEtcdStop(e *embed.Etcd) error {
	id := uint64(e.Server.MemberID())
	if e.Server.IsIDRemoved(id) || e.Server.Cluster().Member(e.Server.MemberID()) == nil {
		return n.removedError()
	}
	var others []string
	for _, ep := range n.ident.Endpoints {
		if ep != n.ident.ClientURL {
			others = append(others, ep)
		}
	}
	if len(others) > 0 {
		if cli, err := newClient(others, n.TLSClientConfig()); err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			r, err := cli.Get(ctx, RemovedKey(n.ident.NodeID))
			cancel()
			cli.Close()
			if err == nil && len(r.Kvs) > 0 {
				return n.removedError()
			}
		}
	}
	return fmt.Errorf("the embedded etcd member stopped unexpectedly (see its log above); if the other members refused it, this node was probably removed from the cluster: remove %s and join again as a new node", n.cfg.DataDir)
}

// newClient connects to the cluster store.
func newClient(endpoints []string, tc *tls.Config) (*clientv3.Client, error) {
	cli, err := clientv3.New(clientv3.Config{
		TLS:                  tc,
		Endpoints:            endpoints,
		DialTimeout:          2 * time.Second,
		DialKeepAliveTime:    2 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
		PermitWithoutStream:  true,
		Logger:               zap.NewNop(),
		RejectOldCluster:     false,
	})
	if err != nil {
		return nil, err
	}
	cli.KV = retryKV{cli.KV} // writes raft dropped while its leadership moved
	return cli, nil
}

// voterEndpoints are the client URLs of the started voting members.
func voterEndpoints(ms *clientv3.MemberListResponse) []string {
	var eps []string
	for _, m := range ms.Members {
		if m.IsLearner || m.Name == "" {
			continue
		}
		eps = append(eps, m.ClientURLs...)
	}
	return eps
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}

// etcdLogger is the embedded etcd's zap logger: JSON on stderr at the
// configured level, without stack traces, and without the messages etcd
// logs as errors in normal operation (a new member's storage version probe,
// the listeners closing at shutdown).
func etcdLogger(level string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("etcd log level %q: want debug, info, warn or error", level)
	}
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(lvl)
	zc.DisableStacktrace = true
	zc.Sampling = nil
	zc.OutputPaths = []string{"stderr"}
	zc.ErrorOutputPaths = []string{"stderr"}
	zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	return zc.Build(zap.WrapCore(func(c zapcore.Core) zapcore.Core { return quietCore{c} }))
}

type quietCore struct{ zapcore.Core }

var quietMessages = []string{
	"failed to update storage version",
	"setting up serving from embedded etcd failed.",
}

// tlsMessages are logged at any level: a connection refused by TLS.
var tlsMessages = []string{
	"rejected connection on client endpoint",
	"rejected connection on peer endpoint",
}

func (c quietCore) With(f []zapcore.Field) zapcore.Core { return quietCore{c.Core.With(f)} }

// Write drops the TLS refusals of connections closed at shutdown.
func (c quietCore) Write(e zapcore.Entry, fs []zapcore.Field) error {
	if slices.Contains(tlsMessages, e.Message) {
		for _, f := range fs {
			if err, ok := f.Interface.(error); ok && f.Key == "error" && strings.Contains(err.Error(), "use of closed network connection") {
				return nil
			}
		}
	}
	return c.Core.Write(e, fs)
}

func (c quietCore) Enabled(l zapcore.Level) bool { return l >= zapcore.WarnLevel || c.Core.Enabled(l) }

func (c quietCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if slices.Contains(quietMessages, e.Message) {
		return ce
	}
	if c.Core.Enabled(e.Level) || slices.Contains(tlsMessages, e.Message) {
		return ce.AddCore(e, c)
	}
	return ce
}
