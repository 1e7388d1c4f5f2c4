package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/hacs/hacs/internal/agent"
	"github.com/hacs/hacs/internal/cluster"
	"github.com/hacs/hacs/internal/dashboard"
	"github.com/hacs/hacs/internal/fence"
	"github.com/hacs/hacs/internal/nbd"
	"github.com/hacs/hacs/internal/policy"
	"github.com/hacs/hacs/internal/store"
)

func newAgentCmd() *cobra.Command {
	var (
		rm                  rmFlags
		cfg                 cluster.Config
		roles, endpoints    string
		labels              []string
		etcdHeartbeat       time.Duration
		etcdElectionTimeout time.Duration
		apiLim              apiLimitFlags
	)
	cmd := &cobra.Command{
		Use:   "agent --data-dir DIR [--join HOST:PORT --token TOKEN]",
		Short: "Run the node daemon: cluster membership, quorum, the embedded cluster store",
		Long: `hacs agent is the node daemon. Started with no cluster to join, it creates a
new cluster with an embedded etcd and prints a join token; started with --join
(the API address of any member) and --token, it joins that cluster. The first
three nodes (five with --voters 5 on the first node) become voting etcd
members, further nodes etcd clients. Restarting with the same --data-dir
rejoins as the same node.

Node liveness is an etcd lease (--lease-ttl): a node that cannot renew it stops
serving before it can expire for the others.`,
		Example: `  # first node: creates the cluster and prints the join token
  hacs agent --data-dir /var/lib/hacs --name n1 --api 10.0.0.1:7700
  # other nodes
  hacs agent --data-dir /var/lib/hacs --name n2 --join 10.0.0.1:7700 --token hacs1.…
  # two storage nodes and a witness
  hacs agent --data-dir /var/lib/hacs --name w --roles witness --join 10.0.0.1:7700 --token …
  # every node of a cluster on an external etcd (TLS, client certificate)
  hacs agent --data-dir /var/lib/hacs --name n1 --etcd-endpoints https://etcd1:2379,https://etcd2:2379 \
    --etcd-cacert /etc/hacs/etcd-ca.crt --etcd-cert /etc/hacs/etcd-client.crt --etcd-key /etc/hacs/etcd-client.key`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if cmd.Flags().Changed("roles") {
				if cfg.Roles, err = cluster.ParseRoles(roles); err != nil {
					return fmt.Errorf("--roles: %w", err)
				}
			}
			if cfg.Labels, err = cluster.ParseLabels(labels); err != nil {
				return fmt.Errorf("--labels: %w", err)
			}
			if endpoints != "" {
				for _, e := range strings.Split(endpoints, ",") {
					if e = strings.TrimSpace(e); e != "" {
						if !strings.Contains(e, "://") {
							e = "http://" + e
						}
						cfg.EtcdEndpoints = append(cfg.EtcdEndpoints, e)
					}
				}
			}
			cfg.EtcdHeartbeat, cfg.EtcdElectionTimeout = etcdHeartbeat, etcdElectionTimeout
			if cfg.APILimits, err = apiLim.limits(); err != nil {
				return err
			}
			cfg.Version = Version
			cfg.Out = cmd.OutOrStdout()
			cfg.Logger = slog.Default()
			return runAgent(cfg, rm)
		},
	}
	f := cmd.Flags()
	f.StringVar(&rm.pool, "pool", "", "storage pool directory holding this node's replicas (default DATA_DIR/pool)")
	f.StringVar(&rm.replicaListen, "replica-listen", "0.0.0.0:7703", "replica server address (primaries reach this node's replicas there)")
	f.StringVar(&rm.exportListen, "export-listen", "0.0.0.0:10809", "NBD address of the volumes this node serves as primary")
	rm.exportTLS.register(f, "export-", "", "volume exports' NBD")
	rm.nbdLimits.register(f, "nbd-", "NBD ports (volume exports and replication, each; the per-IP bound: exports only)", "export-max-connections", "clients that may be connected to one volume's export at once (0: no limit)")
	f.DurationVar(&rm.replicaTimeout, "replica-timeout", 5*time.Second, "a replica that does not answer within this time leaves the in-sync set")
	f.StringVar(&rm.alertExec, "alert-exec", "", "when this node is the DC: run this executable for each cluster event worth an alert (node lost, failover, replica degraded, resync finished, fencing), with the event in HACS_EVENT_* variables and as JSON on stdin; give every agent the same")
	f.StringVar(&rm.alertURL, "alert-url", "", "when this node is the DC: POST each cluster event worth an alert as JSON to this URL (a webhook); give every agent the same")
	f.StringVar(&rm.ocfRoot, "ocf-root", "/usr/lib/ocf", "OCF_ROOT: where the OCF resource agents are (resource.d/PROVIDER/AGENT)")
	f.StringArrayVar(&rm.ocfEnv, "ocf-env", nil, "NAME=VALUE added to the environment of every resource agent this node runs, such as HA_RSCTMP=DIR (repeatable)")
	f.DurationVar(&rm.reReplicateAfter, "re-replicate-after", policy.DefaultReReplicateAfter, "when this node is the DC: a node down this long has its replicas rebuilt elsewhere")
	f.DurationVar(&rm.failbackSettle, "failback-settle", policy.DefaultFailbackSettle, "when this node is the DC: a healthy volume moves to a node for its preference (failback) only once that node has been online this long without a break, so that a flapping node does not draw volumes back and forth (0: at once; failover is never delayed); give every agent the same")
	f.StringArrayVar(&rm.fenceAgentDirs, "fence-agent-dir", nil, "directory to look fence agents up in before /usr/sbin, /sbin, /usr/local/sbin (repeatable; give every agent the same)")
	f.DurationVar(&rm.selfFenceGrace, "self-fence-grace", 0, "when this node is the DC: a lost node without fence levels counts as fenced this long after its lease ended (default: the lease TTL); give every agent the same")
	f.StringVar(&cfg.DataDir, "data-dir", "", "directory holding all the node's state (identity, etcd data); required")
	f.StringVar(&cfg.Name, "name", "", "node name (default: the host name; fixed once the node exists)")
	f.StringVar(&cfg.Join, "join", "", "API address HOST:PORT of any member, to join its cluster (with --token)")
	f.StringVar(&cfg.Token, "token", "", "join token printed by the first node, or made on a member with hacs cluster token create")
	f.DurationVar(&cfg.JoinTokenTTL, "join-token-ttl", cluster.DefaultJoinTokenTTL, "first node only: how long the join token it prints is valid (up to 168h)")
	f.IntVar(&cfg.JoinTokenUses, "join-token-uses", 1, "first node only: how many nodes the join token it prints admits")
	f.StringVar(&endpoints, "etcd-endpoints", "", "comma-separated client URLs of an external etcd cluster to use instead of the embedded one (remembered in the data directory)")
	f.StringVar(&cfg.EtcdTLS.CACert, "etcd-cacert", "", "with https:// --etcd-endpoints: CA certificate (PEM) of the external etcd's servers, as etcdctl --cacert (remembered in the data directory)")
	f.StringVar(&cfg.EtcdTLS.Cert, "etcd-cert", "", "client certificate (PEM) the external etcd accepts, as etcdctl --cert (remembered in the data directory)")
	f.StringVar(&cfg.EtcdTLS.Key, "etcd-key", "", "key of --etcd-cert (PEM), as etcdctl --key (remembered in the data directory)")
	f.StringVar(&cfg.APIAddr, "api", "", "API listen address, HTTPS (default "+cluster.DefaultAPIAddr+"; also served as plain HTTP on the owner-only socket DATA_DIR/api.sock)")
	apiLim.register(f)
	f.StringVar(&cfg.PeerListen, "peer-listen", "", "embedded etcd peer (raft) listen address (default "+cluster.DefaultPeerListen+")")
	f.StringVar(&cfg.ClientListen, "client-listen", "", "embedded etcd client listen address (default "+cluster.DefaultClientListen+")")
	f.StringVar(&cfg.Advertise, "advertise", "", "host or IP the other nodes reach this node at, when listening on a wildcard address")
	f.DurationVar(&cfg.LeaseTTL, "lease-ttl", cluster.DefaultLeaseTTL, "liveness lease TTL, whole seconds: a dead node is noticed within about this time")
	f.StringVar(&roles, "roles", "storage,vhost", "node roles: storage, vhost (comma-separated), or witness (votes only); without --roles, a restarted node keeps the roles set with hacs node setrole/delrole")
	f.StringArrayVar(&labels, "labels", nil, "node labels for failure domains, such as zone=a,rack=r1 (repeatable)")
	f.IntVar(&cfg.Voters, "voters", cluster.DefaultVoters, "number of voting etcd members, 3 or 5 (when creating the cluster)")
	f.DurationVar(&etcdHeartbeat, "etcd-heartbeat", cluster.DefaultEtcdHeartbeat, "embedded etcd heartbeat interval")
	f.DurationVar(&etcdElectionTimeout, "etcd-election-timeout", cluster.DefaultEtcdElectionTimeout, "embedded etcd election timeout")
	f.StringVar(&cfg.EtcdLogLevel, "etcd-log-level", "error", "embedded etcd log level: debug, info, warn, error")
	f.BoolVar(&cfg.Insecure, "insecure", false, "create (or join) a cluster WITHOUT TLS and WITHOUT API authentication: anyone who reaches its ports can read and change every volume (special cases only; see docs/SECURITY.md)")
	f.BoolVar(&cfg.EtcdUnsafeNoFsync, "etcd-unsafe-no-fsync", false, "disable fsync in the embedded etcd (tests only: loses data on power failure)")
	f.MarkHidden("etcd-unsafe-no-fsync")
	cmd.AddCommand(legacyAgentCmds()...)
	return cmd
}

// rmFlags configure the resource manager part of the agent.
type rmFlags struct {
	pool, replicaListen, exportListen string
	alertExec, alertURL               string
	replicaTimeout, reReplicateAfter  time.Duration
	failbackSettle                    time.Duration
	fenceAgentDirs                    []string
	selfFenceGrace                    time.Duration
	exportTLS                         tlsServerFlags
	nbdLimits                         nbdLimitFlags
	ocfRoot                           string
	ocfEnv                            []string
}

// failbackSettle maps --failback-settle to the planner's setting, where
// zero means the default: --failback-settle 0 turns the settle time off.
func failbackSettle(d time.Duration) policy.Duration {
	if d <= 0 {
		return -1
	}
	return policy.Duration(d)
}

// nodeStopTimeout bounds the node's part of an agent's stop: the last
// events (cluster.StopEventsTimeout), the lease's revocation, the etcd
// raft leadership's hand-over and the embedded etcd's close.
const nodeStopTimeout = 3 * time.Second

func runAgent(cfg cluster.Config, rm rmFlags) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	exportTLS, exportPSK, exportPolicy, err := rm.exportTLS.config()
	if err != nil {
		return err
	}
	nbdLimits, err := rm.nbdLimits.limits()
	if err != nil {
		return err
	}
	n, err := cluster.New(cfg)
	if err != nil {
		return err
	}
	dashboard.Register(n.Mux()) // the web dashboard at / and /ui/ (docs/OBSERVABILITY.md)
	if err := n.Start(ctx); err != nil {
		return err
	}
	exportClientAuth := false
	if exportTLS == nil && rm.exportTLS.mode == "" {
		// A secure cluster serves its volume exports with NBD TLS and the
		// node's certificate, and admits to a volume only clients with a
		// certificate of the cluster (a node's, or an export client's:
		// hacs cluster auth client-cert create), unless the volume's
		// spec says tls allowed or off. The clients check the server
		// against the cluster CA (hacs volume attach does).
		if tc := n.ExportTLSServerConfig(); tc != nil {
			exportTLS, exportPolicy, exportClientAuth = tc, nbd.TLSAllowed, true
		}
	}
	acfg := agent.Config{Node: n, StateDir: filepath.Join(cfg.DataDir, "replicas"), ReplicaListen: rm.replicaListen,
		ExportListen: rm.exportListen, ExportTLS: exportTLS, ExportPSK: exportPSK, ExportTLSPolicy: exportPolicy, ExportClientAuth: exportClientAuth, NBDLimits: nbdLimits, ReplicaTimeout: rm.replicaTimeout, Logger: slog.Default(),
		Settings: policy.Settings{ReReplicateAfter: policy.Duration(rm.reReplicateAfter), FailbackSettle: failbackSettle(rm.failbackSettle)},
		Alerts:   agent.AlertConfig{Exec: rm.alertExec, URL: rm.alertURL},
		OCFRoot:  rm.ocfRoot, OCFEnv: rm.ocfEnv}
	for _, e := range rm.ocfEnv {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			n.Stop(context.Background())
			return fmt.Errorf("--ocf-env %q: want NAME=VALUE", e)
		}
	}
	if rm.alertExec != "" {
		if rm.alertExec, err = filepath.Abs(rm.alertExec); err != nil {
			return err
		}
		if st, err := os.Stat(rm.alertExec); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			n.Stop(context.Background())
			return fmt.Errorf("--alert-exec %s: not an executable file", rm.alertExec)
		}
		acfg.Alerts.Exec = rm.alertExec
	}
	if slices.Contains(n.Config().Roles, cluster.RoleStorage) {
		dir := rm.pool
		if dir == "" {
			dir = filepath.Join(cfg.DataDir, "pool")
		}
		if acfg.Pool, err = store.OpenOrCreatePool(dir, store.PoolOptions{}); err != nil {
			n.Stop(context.Background())
			return fmt.Errorf("storage pool: %w", err)
		}
	}
	acfg.Fence = fence.NewController(fence.Config{Node: n, Runner: fence.NewRunner(append(slices.Clone(rm.fenceAgentDirs), fence.DefaultAgentDirs...)...),
		Grace: rm.selfFenceGrace, Logger: slog.Default()})
	a, err := agent.New(acfg)
	if err != nil {
		n.Stop(context.Background())
		return err
	}
	rmDone := make(chan error, 1)
	rctx, rcancel := context.WithCancel(ctx)
	defer rcancel()
	if rm.exportTLS.psk != "" {
		// SIGHUP, or a change of the file, re-reads the keys
		newPSKReloader(rm.exportTLS.psk, exportPSK, a.SetExportPSK, slog.Default()).start(rctx)
	}
	go func() { rmDone <- a.Run(rctx) }()
	select {
	case <-ctx.Done():
		slog.Info("stopping the agent")
	case <-n.Done():
	case err := <-rmDone:
		if err != nil {
			slog.Error("resource manager stopped", "err", err)
			n.Stop(context.Background())
			return err
		}
	}
	// The stop, bounded: the resource manager cuts its exports off at once
	// and stops its primaries (agent.StopTimeout) and its local resources
	// (as long as they take, agent.ResourceStopTimeout at most), then the
	// node writes their events, gives up its lease and closes the embedded
	// etcd (nodeStopTimeout): about 1 s in the common case, 5 s at worst
	// (a store without quorum, a silent replica), plus the resources' stop.
	rcancel()
	select {
	case <-rmDone:
	case <-time.After(agent.ResourceStopTimeout + agent.StopTimeout + time.Second):
		slog.Warn("the resource manager did not stop in time; stopping the node anyway (its exports are cut off)")
	}
	sctx, cancel := context.WithTimeout(context.Background(), nodeStopTimeout)
	defer cancel()
	n.Stop(sctx)
	return n.Err()
}

// legacyAgentCmds are `hacs agent status` (one agent's own view) and the
// management commands that used to live under `hacs agent`, kept hidden
// for scripts: they are the hacs node and events commands. --api is
// another name of --cluster.
func legacyAgentCmds() []*cobra.Command {
	legacy := func(c *cobra.Command, now string) *cobra.Command {
		c.Hidden = now != ""
		c.Flags().StringVar(new(string), "api", "", "API address HOST:PORT of the agent to ask (same as --cluster)")
		c.Flags().MarkHidden("api")
		c.PreRunE = func(cmd *cobra.Command, args []string) error {
			if now != "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "hacs: `%s` is deprecated: use `%s`\n", cmd.CommandPath(), now)
			}
			if api := cmd.Flags().Lookup("api"); api.Changed {
				if cmd.Flags().Changed("cluster") {
					return usagef("--api and --cluster are the same flag: give one")
				}
				return cmd.Flags().Set("cluster", api.Value.String())
			}
			return nil
		}
		return c
	}
	withFlags := func(mk func(*apiFlags) *cobra.Command) *cobra.Command {
		f := &apiFlags{}
		c := mk(f)
		f.register(c.Flags())
		return c
	}
	status := withFlags(func(f *apiFlags) *cobra.Command {
		return &cobra.Command{
			Use:   "status",
			Short: "Show one agent's own view: phase, serving (lease), DC, roles",
			Long: `Show what one agent says about itself: its phase, whether it holds its
liveness lease (serving), the DC it sees, its roles. For the whole cluster,
see hacs cluster status.`,
			Example: `  hacs agent status --data-dir /var/lib/hacs
  hacs agent status --cluster 10.0.0.2:7700 --json`,
			Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, args []string) error {
				var st cluster.Status
				if err := f.client().do(cmd.Context(), "GET", "/v1/status", nil, &st); err != nil {
					return err
				}
				if f.asJSON {
					return printJSON(cmd.OutOrStdout(), st)
				}
				w := cmd.OutOrStdout()
				fmt.Fprintf(w, "node %s (id %s) in cluster %s, version %s, pid %d\n", st.Name, st.ID, st.Cluster, st.Version, st.Pid)
				fmt.Fprintf(w, "phase: %s\n", st.Phase)
				if st.Error != "" {
					fmt.Fprintf(w, "error: %s\n", st.Error)
				}
				fmt.Fprintf(w, "serving: %v (%s)\n", st.Serving.Serving, st.Serving.Reason)
				fmt.Fprintf(w, "DC: %s (this node: %v)\n", st.Leadership.DC, st.Leadership.IsDC)
				fmt.Fprintf(w, "roles: %v, voter: %v\n", st.Roles, st.Voter)
				return nil
			},
		}
	})
	standby := withFlags(func(f *apiFlags) *cobra.Command {
		c := nodeStandbyCmd(f, "standby", true)
		off := c.Flags().Bool("off", false, "make the node active again")
		run := c.RunE
		c.RunE = func(cmd *cobra.Command, args []string) error {
			if *off {
				return nodeStandbyCmd(f, "active", false).RunE(cmd, args)
			}
			return run(cmd, args)
		}
		return c
	})
	nodes := withFlags(nodeListCmd)
	nodes.Use, nodes.Aliases = "nodes", nil
	return []*cobra.Command{
		legacy(status, ""),
		legacy(nodes, "hacs node list"),
		legacy(withFlags(nodeRemoveCmd), "hacs node remove"),
		legacy(standby, "hacs node standby / active"),
		legacy(newEventsCmd(), "hacs events"),
	}
}
