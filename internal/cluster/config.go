package cluster

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"
)

// Defaults of Config.
const (
	DefaultAPIAddr             = "0.0.0.0:7700"
	DefaultPeerListen          = "0.0.0.0:7701"
	DefaultClientListen        = "0.0.0.0:7702"
	DefaultLeaseTTL            = 2 * time.Second
	DefaultVoters              = 3
	DefaultEtcdHeartbeat       = 50 * time.Millisecond
	DefaultEtcdElectionTimeout = 500 * time.Millisecond
	DefaultJoinTimeout         = 60 * time.Second
)

// Config configures a Node. The zero value of every field but DataDir has a
// sensible default.
type Config struct {
	// DataDir holds all the node's state: node.json (identity), etcd/ (the
	// embedded etcd member), join-token (the first node's), api.sock, lock.
	DataDir string
	// Name is the node name (default: the host name). Ignored on restart,
	// where the name comes from DataDir; an explicit different name is
	// refused.
	Name string
	// Join is the API address (HOST:PORT) of any member, with Token, for a
	// new node to join an existing cluster.
	Join  string
	Token string
	// EtcdEndpoints use an external etcd cluster instead of the embedded
	// one. Every node of such a cluster is an etcd client.
	EtcdEndpoints []string
	// EtcdTLS are the client credentials of the external etcd (etcdctl's
	// --cacert, --cert, --key; required for https:// endpoints).
	// Remembered in the data directory: a restart needs them only to
	// change them.
	EtcdTLS StoreTLSFiles

	// Listen addresses: the HTTP API (join handshake, status), the embedded
	// etcd's peer (raft) and client (gRPC) ports. A restarted node reuses
	// the addresses it last used unless given explicitly.
	APIAddr      string
	PeerListen   string
	ClientListen string
	// Advertise is the host or IP other nodes reach this node at, used when
	// a listen address is a wildcard (0.0.0.0). Default: the first
	// non-loopback IPv4 address of the machine.
	Advertise string

	// LeaseTTL is the liveness lease TTL (whole seconds, at least 1s, and
	// at least 1.5 etcd election timeouts). A dead node is noticed within
	// about LeaseTTL; a node that cannot renew stops serving after
	// LeaseTTL - SafetyMargin without a renewal.
	LeaseTTL time.Duration
	// SafetyMargin (default LeaseTTL/4) is how much earlier than its lease
	// can expire for the others a node stops serving.
	SafetyMargin time.Duration
	// KeepAliveInterval (default LeaseTTL/8) is how often the lease is
	// renewed.
	KeepAliveInterval time.Duration

	Roles  []Role
	Labels map[string]string
	// Voters is the number of voting etcd members (3 or 5, default 3); only
	// used when creating the cluster.
	Voters int

	// Embedded etcd tuning (defaults suit a LAN: 50ms / 500ms).
	EtcdHeartbeat       time.Duration
	EtcdElectionTimeout time.Duration
	// EtcdLogLevel is the embedded etcd's zap log level (default "error").
	EtcdLogLevel string
	// EtcdUnsafeNoFsync disables fsync in the embedded etcd (tests only).
	EtcdUnsafeNoFsync bool

	// AllowDCRaftLeader keeps the DC from handing the raft leadership of
	// the embedded etcd to another voter. By default the DC moves it away,
	// so that a crash of the DC does not also cost a raft election (which
	// extends every lease by an election timeout and delays the new DC).
	AllowDCRaftLeader bool

	// Insecure creates (or joins) a cluster without TLS and without API
	// authentication: for special cases only (docs/SECURITY.md). Ignored on
	// restart, where the mode comes from the data directory.
	Insecure bool

	// JoinTokenTTL and JoinTokenUses shape the join token a new cluster's
	// first node prints (and writes to DATA_DIR/join-token): valid for
	// JoinTokenTTL (default DefaultJoinTokenTTL), admitting JoinTokenUses
	// nodes (default 1). Ignored unless the cluster is being created.
	JoinTokenTTL  time.Duration
	JoinTokenUses int

	// JoinTimeout bounds the join handshake retries (default 60s).
	JoinTimeout time.Duration

	// APILimits bound the TCP API's connections that have not
	// authenticated yet (zero: the defaults).
	APILimits APILimits

	// Version is the agent version recorded in the node's records.
	Version string
	// Logger (default slog.Default()).
	Logger *slog.Logger
	// Out receives the banner printed when a cluster is created (the join
	// token and how to join). Default os.Stdout.
	Out io.Writer

	// OnServing is called (from a goroutine of the node, never
	// concurrently) when the node starts or stops serving.
	OnServing func(serving bool, reason string)
	// OnDC is called when this node becomes or stops being the DC.
	OnDC func(isDC bool)
}

func (c *Config) setDefaults() error {
	if c.DataDir == "" {
		return errors.New("no data directory: give --data-dir DIR (it holds the node's identity and its etcd data)")
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = DefaultLeaseTTL
	}
	if c.LeaseTTL < time.Second || c.LeaseTTL%time.Second != 0 {
		return fmt.Errorf("--lease-ttl %v: etcd leases have whole-second TTLs of at least 1s (such as 1s, 2s, 5s)", c.LeaseTTL)
	}
	if c.SafetyMargin == 0 {
		c.SafetyMargin = c.LeaseTTL / 4
	}
	if c.SafetyMargin <= 0 || c.SafetyMargin >= c.LeaseTTL/2 {
		return fmt.Errorf("safety margin %v must be positive and below half the lease TTL %v", c.SafetyMargin, c.LeaseTTL)
	}
	if c.KeepAliveInterval == 0 {
		c.KeepAliveInterval = max(c.LeaseTTL/8, 50*time.Millisecond)
	}
	if c.KeepAliveInterval*2 >= c.LeaseTTL-c.SafetyMargin {
		return fmt.Errorf("keep-alive interval %v too long for lease TTL %v and safety margin %v", c.KeepAliveInterval, c.LeaseTTL, c.SafetyMargin)
	}
	if c.Voters == 0 {
		c.Voters = DefaultVoters
	}
	if c.Voters != 1 && c.Voters != 3 && c.Voters != 5 {
		return fmt.Errorf("--voters %d: the cluster has 3 or 5 voting members (1 only for a single test node)", c.Voters)
	}
	if c.EtcdHeartbeat == 0 {
		c.EtcdHeartbeat = DefaultEtcdHeartbeat
	}
	if c.EtcdElectionTimeout == 0 {
		c.EtcdElectionTimeout = DefaultEtcdElectionTimeout
	}
	if c.EtcdElectionTimeout < 5*c.EtcdHeartbeat {
		return fmt.Errorf("etcd election timeout %v must be at least 5 heartbeats (%v)", c.EtcdElectionTimeout, c.EtcdHeartbeat)
	}
	if minTTL := c.EtcdElectionTimeout * 3 / 2; c.LeaseTTL < minTTL && len(c.EtcdEndpoints) == 0 {
		return fmt.Errorf("--lease-ttl %v is below 1.5 etcd election timeouts (%v): etcd would silently lengthen it; raise the TTL or lower --etcd-election-timeout", c.LeaseTTL, minTTL)
	}
	if c.EtcdLogLevel == "" {
		c.EtcdLogLevel = "error"
	}
	if len(c.Roles) == 0 {
		c.Roles = DefaultRoles
	} else {
		r, err := ParseRoles(joinRoles(c.Roles))
		if err != nil {
			return err
		}
		c.Roles = r
	}
	if c.Labels == nil {
		c.Labels = map[string]string{}
	}
	if c.JoinTimeout == 0 {
		c.JoinTimeout = DefaultJoinTimeout
	}
	if err := c.APILimits.validate(); err != nil {
		return err
	}
	if c.JoinTokenTTL == 0 {
		c.JoinTokenTTL = DefaultJoinTokenTTL
	}
	if c.JoinTokenUses == 0 {
		c.JoinTokenUses = 1
	}
	if err := checkJoinTokenShape(c.JoinTokenTTL, c.JoinTokenUses); err != nil {
		return fmt.Errorf("--join-token-ttl/--join-token-uses: %w", err)
	}
	if c.Version == "" {
		c.Version = "dev"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Out == nil {
		c.Out = os.Stdout
	}
	if c.Name != "" {
		if err := ValidName("node", c.Name); err != nil {
			return fmt.Errorf("--name: %w", err)
		}
	}
	if (c.Join == "") != (c.Token == "") {
		return errors.New("--join and --token go together: --join HOST:PORT is the API address of any member, --token a join token (printed by the first node, or made on a member with `hacs cluster token create`)")
	}
	if c.Join != "" && len(c.EtcdEndpoints) > 0 {
		return errors.New("--join and --etcd-endpoints exclude each other: with an external etcd, every node just points at it with --etcd-endpoints")
	}
	for _, a := range []struct{ flag, v string }{{"--api", c.APIAddr}, {"--peer-listen", c.PeerListen}, {"--client-listen", c.ClientListen}, {"--join", c.Join}} {
		if a.v == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a.v); err != nil {
			return fmt.Errorf("%s %q: want HOST:PORT (%v)", a.flag, a.v, err)
		}
	}
	return nil
}

func joinRoles(r []Role) string {
	s := make([]string, len(r))
	for i, x := range r {
		s[i] = string(x)
	}
	return strings.Join(s, ",")
}

// defaultName is the host name, cleaned up to a valid node name.
func defaultName() string {
	h, err := os.Hostname()
	if err != nil {
		return "node"
	}
	h = strings.ToLower(strings.Split(h, ".")[0])
	if ValidName("node", h) != nil {
		return "node"
	}
	return h
}

// advertiseAddr turns a listen address into one other nodes can dial.
func advertiseAddr(listen, advertise string) (string, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", err
	}
	ip := net.ParseIP(host)
	if host != "" && (ip == nil || !ip.IsUnspecified()) {
		return listen, nil
	}
	if advertise != "" {
		return net.JoinHostPort(advertise, port), nil
	}
	a, err := firstIPv4()
	if err != nil {
		return "", fmt.Errorf("listen address %s is a wildcard and no --advertise address was given: %w", listen, err)
	}
	return net.JoinHostPort(a, port), nil
}

func firstIPv4() (string, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return "", err
	}
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil && ipn.IP.IsGlobalUnicast() {
				return ipn.IP.String(), nil
			}
		}
	}
	return "127.0.0.1", nil
}
