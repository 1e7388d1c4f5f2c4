package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/hacs/hacs/internal/agent"
	"github.com/hacs/hacs/internal/attach"
	"github.com/hacs/hacs/internal/mirror"
	"github.com/hacs/hacs/internal/nbd"
	"github.com/hacs/hacs/internal/policy"
)

// volumeFlags are the flags shared by the volume commands (client.go).
type volumeFlags = apiFlags

func (f *volumeFlags) names(ctx context.Context, spec string) ([]string, error) {
	return expandNames(spec, func() ([]string, error) {
		var vols []agent.VolumeInfo
		if err := f.client().do(ctx, "GET", "/v1/volumes", nil, &vols); err != nil {
			return nil, err
		}
		var out []string
		for _, v := range vols {
			out = append(out, v.Spec.Name)
		}
		return out, nil
	})
}

// eachName runs fn for every name, reporting each result (with --json, a
// JSON list of the results instead of fn's lines), and fails if any failed.
func eachName(cmd *cobra.Command, names []string, fn func(name string) error) error {
	asJSON, _ := cmd.Flags().GetBool("json")
	return forEach(cmd, asJSON, names, func(name string) (string, any, error) {
		if !asJSON {
			return "", nil, fn(name)
		}
		out := cmd.OutOrStdout()
		cmd.SetOut(io.Discard)
		defer cmd.SetOut(out)
		return "", nil, fn(name)
	})
}

func newVolumeCmd(use string, aliases ...string) *cobra.Command {
	f := &volumeFlags{}
	cmd := &cobra.Command{
		Use:     use,
		Aliases: aliases,
		Short:   "Manage replicated volumes: create, list, info, standby/active, prefer, resize, snapshot, clone, verify, attach",
		Long: `Manage the cluster's replicated volumes through any agent's API.

Names accept the VHACS range syntax (vol1-3,vol5) and ALL where several are
allowed. --cluster (or HACS_CLUSTER) takes one agent API address or a
comma-separated list, tried in turn.`,
	}
	f.register(cmd.PersistentFlags())
	cmd.AddCommand(volCreateCmd(f), volListCmd(f), volInfoCmd(f), volDestroyCmd(f),
		volSpecCmd(f, "standby", "Stop serving volumes (the primary stops; replicas stay)"),
		volSpecCmd(f, "active", "Serve volumes again"),
		volSpecCmd(f, "unfail", "Clear volumes' failure counts"),
		volRestartCmd(f),
		volPreferCmd(f), volTLSCmd(f), volGrantCmd(f, "grant"), volGrantCmd(f, "ungrant"), volVerifyCmd(f), volResyncWaitCmd(f), volResizeCmd(f), volSnapshotCmd(f), volCloneCmd(f), volAttachCmd(f))
	return cmd
}

func volCreateCmd(f *volumeFlags) *cobra.Command {
	var size, nodes, spread, tlsMode, grant string
	var replicas, threshold int
	var standby bool
	cmd := &cobra.Command{
		Use:   "create NAMES --size SIZE [--replicas N] [--nodes NODES]",
		Short: "Create volumes",
		Example: `  hacs volume create vm1 --size 10G
  hacs volume create vm1-3 --size 20G --replicas 3 --nodes node2,node1
  hacs volume create vm4 --size 10G --grant vmhost1,psk:backup`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := parseSize(size)
			if err != nil {
				return fmt.Errorf("--size: %w", err)
			}
			if n%4096 != 0 {
				return fmt.Errorf("--size: %d is not a multiple of 4 KiB", n)
			}
			names, err := expandNames(args[0], nil)
			if err != nil {
				return err
			}
			tlsPolicy, err := nbd.ParseTLSPolicy(tlsMode)
			if err != nil {
				return fmt.Errorf("--tls: %w", err)
			}
			var grants []string
			if grant != "" {
				if grants, err = splitClients([]string{grant}); err != nil {
					return fmt.Errorf("--grant: %w", err)
				}
				if len(grants) == 0 {
					return usagef("--grant %q names no client", grant)
				}
			}
			var prefer []string
			if nodes != "" {
				if prefer, err = expandNames(nodes, nil); err != nil {
					return fmt.Errorf("--nodes: %w", err)
				}
			}
			return eachName(cmd, names, func(name string) error {
				req := agent.VolumeRequest{Name: name, Size: n, Replicas: replicas, Spread: spread, Stopped: standby,
					Policy: policy.Constraints{Prefer: prefer, MigrationThreshold: threshold}, TLS: tlsPolicy, Grants: grants}
				if err := f.client().do(cmd.Context(), "POST", "/v1/volumes", req, nil); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "created %s (%s, %d replicas)\n", name, human(n), max(replicas, 1))
				return nil
			})
		},
	}
	cmd.Flags().StringVarP(&size, "size", "s", "", "size, e.g. 10G (required)")
	cmd.Flags().IntVarP(&replicas, "replicas", "r", 2, "number of replicas (1 to 5)")
	cmd.Flags().StringVarP(&nodes, "nodes", "n", "", "preferred nodes, most preferred first (range syntax)")
	cmd.Flags().StringVar(&spread, "spread", "", "node label to spread replicas over (e.g. zone)")
	cmd.Flags().IntVar(&threshold, "migration-threshold", 0, "move away from a node after this many failures there (0: never)")
	cmd.Flags().BoolVar(&standby, "standby", false, "create without serving it")
	cmd.Flags().StringVar(&tlsMode, "tls", "", "who may open the volume: required (the default in a cluster with TLS: TLS clients with a certificate of the cluster or a pre-shared key), allowed or off (also plaintext clients and TLS clients without a certificate: anyone who reaches the export port; see hacs volume tls)")
	cmd.Flags().StringVar(&grant, "grant", "", "the only export clients that may open the volume, besides the cluster's nodes: client certificate names and psk:IDENTITY, comma-separated (default: every authenticated client; see hacs volume grant)")
	cmd.MarkFlagRequired("size")
	return cmd
}

func volListCmd(f *volumeFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List volumes",
		Example: "  hacs volume list\n  hacs volume list --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var vols []agent.VolumeInfo
			if err := f.client().do(cmd.Context(), "GET", "/v1/volumes", nil, &vols); err != nil {
				return err
			}
			return f.print(cmd, volumeRows(vols), func(w io.Writer) {
				fmt.Fprintln(w, "NAME\tSIZE\tREPLICAS\tPRIMARY\tEPOCH\tIN-SYNC\tHEALTH\tEXPORT\tGRANTS")
				for _, v := range vols {
					primary, epoch, insync, export := "-", "-", "-", "-"
					if v.State != nil {
						primary, epoch, insync = orDash(v.State.Primary), fmt.Sprint(v.State.Epoch), strings.Join(v.State.InSync, ",")
					}
					if v.Export != nil {
						export = exportURI(v.Export)
					}
					fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", v.Spec.Name, human(v.Spec.Size), v.Spec.Replicas, primary, epoch, insync, v.Health, export, grantsCell(v.Spec.Grants))
				}
			})
		},
	}
}

// grantsCell is a volume's grants in a table: ALL (every authenticated
// client), - (none: nodes only) or the granted clients.
func grantsCell(grants []string) string {
	switch {
	case grants == nil:
		return "ALL"
	case len(grants) == 0:
		return "-"
	}
	return strings.Join(grants, ",")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func volInfoCmd(f *volumeFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "info NAME",
		Aliases: []string{"show"},
		Short:   "Show a volume: placement, primary, replica states, resync progress, why degraded, who may open it",
		Example: "  hacs volume info vm1\n  hacs volume info vm1 --json",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var v agent.VolumeInfo
			if err := f.client().do(cmd.Context(), "GET", "/v1/volumes/"+args[0], nil, &v); err != nil {
				return err
			}
			return f.print(cmd, newVolumeRow(v), func(w io.Writer) { printVolumeInfo(w, v) })
		},
	}
}

func printVolumeInfo(w io.Writer, v agent.VolumeInfo) {
	fmt.Fprintf(w, "volume\t%s\nsize\t%s (%d bytes)\nreplicas\t%d\nhealth\t%s\n", v.Spec.Name, human(v.Spec.Size), v.Spec.Size, v.Spec.Replicas, v.Health)
	if len(v.Spec.Policy.Prefer) > 0 {
		fmt.Fprintf(w, "prefers\t%s\n", strings.Join(v.Spec.Policy.Prefer, ","))
	}
	fmt.Fprintf(w, "placement\t%s\n", orDash(strings.Join(v.Placement, ",")))
	granted := agent.GrantsString(v.Spec.Grants)
	if v.Spec.Grants == nil && (v.Spec.TLS == nbd.TLSAllowed || v.Spec.TLS == nbd.TLSOff) {
		granted = fmt.Sprintf("anyone who reaches the export port (tls %s)", v.Spec.TLS)
	}
	fmt.Fprintf(w, "granted to\t%s\n", granted)
	if v.State != nil {
		fmt.Fprintf(w, "primary\t%s (epoch %d)\nin sync\t%s\n", orDash(v.State.Primary), v.State.Epoch, orDash(strings.Join(v.State.InSync, ",")))
	}
	if v.Export != nil {
		fmt.Fprintf(w, "export\tnbd://%s/%s\n", v.Export.Addr, v.Export.Name)
	}
	if v.Degraded != nil {
		fmt.Fprintf(w, "degraded\t%s (since %s)\n", v.Degraded.Reason, v.Degraded.Since.Format(time.RFC3339))
	}
	for node, fl := range v.Failures {
		fmt.Fprintf(w, "failures\t%s: %d (last %s)\n", node, fl.Count, fl.Last.Format(time.RFC3339))
	}
	if v.Mirror != nil {
		fmt.Fprintln(w, "\nREPLICA\tSTATE\tCONNECTED\tOUT-OF-SYNC\tRESYNC")
		for _, r := range v.Mirror.Replicas {
			resync := "-"
			if r.State == "resyncing" {
				resync = fmt.Sprintf("%.0f%% %s/s eta %v", r.Percent(), human(int64(r.Rate)), r.ETA.Round(time.Second))
			}
			fmt.Fprintf(w, "%s\t%s\t%v\t%s\t%s\n", r.ID, r.State, r.Connected, human(r.OutOfSync), resync)
		}
	}
}

func volDestroyCmd(f *volumeFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "destroy NAMES",
		Aliases: []string{"delete", "rm"},
		Short:   "Destroy volumes and their replicas",
		Example: "  hacs volume destroy vm1\n  hacs volume destroy vm1-3,vm5",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			names, err := f.names(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return eachName(cmd, names, func(name string) error {
				if err := f.client().do(cmd.Context(), "DELETE", "/v1/volumes/"+name, nil, nil); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "destroyed %s\n", name)
				return nil
			})
		},
	}
}

func volSpecCmd(f *volumeFlags, verb, short string) *cobra.Command {
	return &cobra.Command{
		Use:     verb + " NAMES",
		Short:   short,
		Example: fmt.Sprintf("  hacs volume %s vm1\n  hacs volume %s vm1-3,vm5\n  hacs volume %s ALL", verb, verb, verb),
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			names, err := f.names(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return eachName(cmd, names, func(name string) error {
				if err := f.client().do(cmd.Context(), "POST", "/v1/volumes/"+name+"/"+verb, nil, nil); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: %s\n", name, verb)
				return nil
			})
		},
	}
}

func volRestartCmd(f *volumeFlags) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:     "restart NAMES",
		Short:   "Stop and start serving volumes (the primary flushes and stops, then the cluster serves them again)",
		Example: "  hacs volume restart vm1\n  hacs volume restart vm1-3",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			names, err := f.names(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			c := f.client()
			wait := func(name string, served bool) (agent.VolumeInfo, error) {
				deadline := time.Now().Add(timeout)
				for {
					var v agent.VolumeInfo
					err := c.do(cmd.Context(), "GET", "/v1/volumes/"+name, nil, &v)
					if err == nil && (v.Export != nil) == served {
						return v, nil
					}
					if time.Now().After(deadline) {
						state := "stopped"
						if served {
							state = "served again"
						}
						return v, fmt.Errorf("not %s after %v (health %s)", state, timeout, v.Health)
					}
					time.Sleep(100 * time.Millisecond)
				}
			}
			return eachName(cmd, names, func(name string) error {
				if err := c.do(cmd.Context(), "POST", "/v1/volumes/"+name+"/standby", nil, nil); err != nil {
					return err
				}
				if _, err := wait(name, false); err != nil {
					return err
				}
				if err := c.do(cmd.Context(), "POST", "/v1/volumes/"+name+"/active", nil, nil); err != nil {
					return err
				}
				v, err := wait(name, true)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: restarted, served by %s at epoch %d\n", name, v.Export.Node, v.Export.Epoch)
				return nil
			})
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", time.Minute, "how long to wait for each step")
	return cmd
}

func volPreferCmd(f *volumeFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "prefer NODES NAMES",
		Short: "Set the preferred nodes of volumes, most preferred first",
		Long: `A healthy volume moves to a more preferred node (beyond its stickiness) only once that node has
been online without a break for the DC's --failback-settle (hacs agent; default 10s), so that a node
whose lease flaps does not draw the volume back and forth. A failover away from a primary that cannot
serve is never delayed, and prefers, among the in-sync replicas, a node that has been online that long.`,
		Example: "  hacs volume prefer node2,node1 vm1-3",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			nodes, err := expandNames(args[0], nil)
			if err != nil {
				return err
			}
			names, err := f.names(cmd.Context(), args[1])
			if err != nil {
				return err
			}
			return eachName(cmd, names, func(name string) error {
				return f.client().do(cmd.Context(), "POST", "/v1/volumes/"+name+"/prefer", map[string]any{"nodes": nodes}, nil)
			})
		},
	}
}

func volTLSCmd(f *volumeFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "tls off|allowed|required NAMES",
		Short: "Change who may open volumes: NBD TLS policy (required: authenticated TLS only)",
		Long: `Change the NBD TLS policy of volumes while they are served (the one
hacs volume create --tls sets). In a cluster with TLS (the default),
required admits only TLS clients with a certificate of the cluster (a node's,
or one of hacs cluster auth client-cert create) or a pre-shared key; allowed
and off also admit plaintext clients and TLS clients without a certificate:
anyone who reaches the export port. The primary applies the new policy to the
connections that follow; connections already open keep theirs (hacs volume
restart NAME closes them). Needs the admin role: off and allowed open a
volume to anyone.`,
		Example: "  hacs volume tls required vm1-3\n  hacs volume tls allowed legacy1",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := nbd.ParseTLSPolicy(args[0])
			if err != nil || p == nbd.TLSDefault {
				return usagef("TLS policy %q: want off, allowed or required", args[0])
			}
			names, err := f.names(cmd.Context(), args[1])
			if err != nil {
				return err
			}
			return eachName(cmd, names, func(name string) error {
				return f.client().do(cmd.Context(), "POST", "/v1/volumes/"+name+"/tls", map[string]any{"tls": p.String()}, nil)
			})
		},
	}
}

func volVerifyCmd(f *volumeFlags) *cobra.Command {
	var repair bool
	cmd := &cobra.Command{
		Use:     "verify NAME [--repair]",
		Short:   "Compare every in-sync replica with the primary by checksums (online)",
		Example: "  hacs volume verify vm1\n  hacs volume verify vm1 --repair",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := "/v1/volumes/" + args[0] + "/verify"
			if repair {
				path += "?repair=1"
			}
			var rep mirror.VerifyReport
			// Progress on stderr from the primary's (GET .../verify): a
			// bar on a terminal, plain lines otherwise.
			stop := func() {}
			if !f.asJSON {
				c := f.client()
				stderr := cmd.ErrOrStderr()
				stop = pollProgress(cmd.Context(), newProgress(stderr, "verify "+args[0], isTerminal(stderr)), 250*time.Millisecond,
					func(ctx context.Context) (int64, int64, bool) {
						var p agent.VerifyProgress
						err := c.do(ctx, "GET", "/v1/volumes/"+args[0]+"/verify", nil, &p)
						return p.Done, p.Total, err == nil && p.Running
					})
			}
			err := f.client().do(cmd.Context(), "POST", path, nil, &rep)
			stop()
			if err != nil {
				return err
			}
			err = f.print(cmd, rep, func(w io.Writer) {
				fmt.Fprintf(w, "compared %s of %v against %s: %d difference(s)\n", human(rep.Bytes), rep.Compared, rep.Source, len(rep.Differences))
				for _, d := range rep.Differences {
					fmt.Fprintf(w, "  %s\t[%d, +%d)\n", d.Replica, d.Offset, d.Length)
				}
				if rep.Repaired > 0 {
					fmt.Fprintf(w, "repaired %s\n", human(rep.Repaired))
				}
			})
			if err == nil && len(rep.Differences) > 0 && !repair {
				return errors.New("replicas differ (run with --repair to copy the primary's data over them)")
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&repair, "repair", false, "copy the primary's data over every difference")
	return cmd
}

func volAttachCmd(f *volumeFlags) *cobra.Command {
	var listen, fuseDir string
	var maxPause time.Duration
	var tlsf tlsClientFlags
	cmd := &cobra.Command{
		Use:   "attach NAME [--listen unix:PATH | HOST:PORT] [--fuse DIR]",
		Short: "Serve a volume locally, following its primary through failover",
		Long: `Run, on this host, a local NBD endpoint for a volume that forwards to the
volume's current primary. When the primary dies, requests in flight are sent
again to the new one: clients see a pause, never an I/O error. With --fuse DIR
the volume also appears as the regular file DIR/NAME (losetup + mount give a
block device and a filesystem without the nbd kernel module). Ctrl-C (or
SIGTERM) detaches cleanly: flush, unmount, disconnect.

The link to the primary uses NBD TLS whenever the primary offers it,
checking its certificate against the cluster CA (or --tls-certificates,
--tls-ca); with --tls-psk FILE (and --tls-username NAME) it uses a
pre-shared key instead (agents with --export-tls-psk).`,
		Example: `  hacs volume attach vm1 --listen unix:/run/hacs/vm1.sock
  qemu-system-x86_64 -drive file=nbd+unix:///vm1?socket=/run/hacs/vm1.sock,format=raw ...
  hacs volume attach vm1 --fuse /mnt/hacs && losetup -f --show /mnt/hacs/vm1`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			c := f.client()
			creds, err := f.exportCredentials(&tlsf)
			if err != nil {
				return err
			}
			pskCfg, err := tlsf.pskConfig()
			if err != nil {
				return err
			}
			var warnOnce sync.Once
			resolve := func(ctx context.Context) (attach.Target, error) {
				var v agent.VolumeInfo
				// hedged: an agent that hangs (cut off, or without
				// quorum) must not keep the client from the others
				if err := c.getHedged(ctx, "/v1/volumes/"+name, &v); err != nil {
					return attach.Target{}, err
				}
				if v.Export == nil {
					return attach.Target{}, fmt.Errorf("volume %s has no primary serving it (health %s)", name, v.Health)
				}
				t := attach.Target{Network: "tcp", Addr: v.Export.Addr, Export: v.Export.Name, Epoch: v.Export.Epoch}
				// TLS whenever the primary offers it (and always when the
				// user gave TLS options): with the pre-shared key of
				// --tls-psk, or certificates, presenting the client
				// certificate found (exportCredentials).
				if pskCfg != nil {
					t.PSK = pskCfg
				} else if v.Export.TLS || tlsf.given() {
					if creds == nil {
						return attach.Target{}, fmt.Errorf("volume %s is served with NBD TLS and no cluster CA certificate was found: give --ca-file, --tls-certificates DIR or --tls-ca FILE", name)
					}
					if hint := creds.missingCertHint(); hint != "" {
						warnOnce.Do(func() {
							fmt.Fprintf(cmd.ErrOrStderr(), "hacs: warning: no client certificate found%s\n", hint)
						})
					}
					t.TLS = creds.config(v.Export.Addr)
				}
				return t, nil
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			fl, err := attach.NewFollower(ctx, resolve, slog.Default())
			if err != nil {
				return err
			}
			fl.MaxPause = maxPause
			defer fl.Close()
			var ln interface{ Close() error }
			if listen != "" {
				l, err := listenAddr(listen)
				if err != nil {
					return err
				}
				srv := nbd.NewServer(slog.Default())
				srv.AddExport(nbd.Export{Name: name, Description: "hacs volume " + name + " (attached)", Device: fl})
				go srv.Serve(l)
				defer srv.Close()
				ln = l
				fmt.Fprintf(cmd.OutOrStdout(), "attached %s: %s\n", name, uriFor(l.Addr(), name))
			}
			if fuseDir != "" {
				v, err := attach.MountFileView(fuseDir, name, fl)
				if err != nil {
					return err
				}
				defer v.Unmount()
				fmt.Fprintf(cmd.OutOrStdout(), "attached %s: file %s\n", name, v.Path)
			}
			if ln == nil && fuseDir == "" {
				return errors.New("give --listen and/or --fuse")
			}
			<-ctx.Done()
			fmt.Fprintf(cmd.OutOrStdout(), "detaching %s (flushing)\n", name)
			return nil
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "", "local NBD endpoint: unix:PATH or HOST:PORT")
	cmd.Flags().StringVar(&fuseDir, "fuse", "", "also show the volume as the file DIR/NAME (FUSE)")
	cmd.Flags().DurationVar(&maxPause, "max-pause", 2*time.Minute, "longest pause before a request fails when no primary serves the volume")
	tlsf.register(cmd.Flags())
	return cmd
}
