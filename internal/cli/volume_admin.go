package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hacs/hacs/internal/agent"
)

// Resize, snapshots and clones of replicated volumes (the agents' API in
// internal/agent/admin.go).

func volResizeCmd(f *volumeFlags) *cobra.Command {
	var size string
	var force bool
	cmd := &cobra.Command{
		Use:   "resize NAMES --size SIZE [--force]",
		Short: "Grow volumes (online), or shrink stopped ones with --force",
		Long: `Change the size of volumes on every replica.

Growing works while a volume is served: its primary flushes, stops its
export for a moment, grows every replica (its data and its replication
metadata), and serves the volume again at the new size. NBD clients
reconnect and see the new size; a device attached with hacs volume attach
keeps the size it was attached with (it logs the new size): detach and
attach again to use it. Every replica's node must be online.

Shrinking discards the data past the new end, in every snapshot too: it
needs --force and the volume stopped (hacs volume standby).`,
		Example: `  hacs volume resize vm1 --size 20G
  hacs volume standby vm2 && hacs volume resize vm2 --size 5G --force`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := parseSize(size)
			if err != nil {
				return fmt.Errorf("--size: %w", err)
			}
			if n%4096 != 0 {
				return usagef("--size: %d is not a multiple of 4 KiB", n)
			}
			names, err := f.names(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return eachName(cmd, names, func(name string) error {
				var out struct {
					Size    int64 `json:"size"`
					OldSize int64 `json:"old_size"`
				}
				if err := f.client().do(cmd.Context(), "POST", "/v1/volumes/"+name+"/resize", agent.ResizeRequest{Size: n, Force: force}, &out); err != nil {
					return err
				}
				if out.OldSize == out.Size {
					fmt.Fprintf(cmd.OutOrStdout(), "%s: already %s\n", name, human(n))
				} else {
					fmt.Fprintf(cmd.OutOrStdout(), "%s: resized from %s to %s\n", name, human(out.OldSize), human(out.Size))
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVarP(&size, "size", "s", "", "new size, e.g. 20G (required)")
	cmd.Flags().BoolVar(&force, "force", false, "allow shrinking (discards the data past the new end; the volume must be stopped)")
	cmd.MarkFlagRequired("size")
	return cmd
}

func volSnapshotCmd(f *volumeFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "snapshot",
		Aliases: []string{"snap"},
		Short:   "Snapshots of volumes, the same point of the writes on every replica: create, list, delete, revert",
		Long: `Snapshots of a replicated volume are taken on every in-sync replica at the
same point of the write stream: the primary holds the writes for a moment,
flushes, and has every in-sync replica take it. A replica out of sync at
that moment does not get it (listed as missing); reverting to the snapshot
makes such replicas resync from the reverted ones. A revert needs the
volume stopped (hacs volume standby, or --restart).`,
	}
	cmd.AddCommand(snapCreateCmd(f), snapListCmd(f), snapDeleteCmd(f), snapRevertCmd(f))
	return cmd
}

func snapCreateCmd(f *volumeFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "create NAME SNAPSHOT",
		Short:   "Take a snapshot of a volume on all its in-sync replicas (online)",
		Example: "  hacs volume snapshot create vm1 before-upgrade",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := validName(args[1]); err != nil {
				return asUsage(err)
			}
			var s agent.SnapshotInfo
			if err := f.client().do(cmd.Context(), "POST", "/v1/volumes/"+args[0]+"/snapshots", agent.SnapshotRequest{Name: args[1]}, &s); err != nil {
				return err
			}
			if f.asJSON {
				return printJSON(cmd.OutOrStdout(), s)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: snapshot %s taken on %s\n", args[0], s.Name, strings.Join(s.Replicas, ","))
			if len(s.Missing) > 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "%s: not on %s (out of sync)\n", args[0], strings.Join(s.Missing, ","))
			}
			return nil
		},
	}
}

func snapListCmd(f *volumeFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "list NAME",
		Aliases: []string{"ls"},
		Short:   "List a volume's snapshots",
		Example: "  hacs volume snapshot list vm1\n  hacs volume snapshot list vm1 --json",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var list []agent.SnapshotInfo
			if err := f.client().do(cmd.Context(), "GET", "/v1/volumes/"+args[0]+"/snapshots", nil, &list); err != nil {
				return err
			}
			return f.print(cmd, list, func(w io.Writer) { printSnapshots(w, list) })
		},
	}
}

func printSnapshots(w io.Writer, list []agent.SnapshotInfo) {
	fmt.Fprintln(w, "SNAPSHOT\tCREATED\tSIZE\tREPLICAS\tMISSING\tBY")
	for _, s := range list {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, s.Created.Format(time.RFC3339), human(s.Size),
			strings.Join(s.Replicas, ","), orDash(strings.Join(s.Missing, ",")), orDash(s.By))
	}
}

func snapDeleteCmd(f *volumeFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "delete NAME SNAPSHOT",
		Aliases: []string{"rm"},
		Short:   "Delete a snapshot of a volume on every replica",
		Example: "  hacs volume snapshot delete vm1 before-upgrade",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.client().do(cmd.Context(), "DELETE", "/v1/volumes/"+args[0]+"/snapshots/"+args[1], nil, nil); err != nil {
				return err
			}
			if !f.asJSON {
				fmt.Fprintf(cmd.OutOrStdout(), "%s: snapshot %s deleted\n", args[0], args[1])
				return nil
			}
			return printJSON(cmd.OutOrStdout(), map[string]string{"volume": args[0], "deleted": args[1]})
		},
	}
}

func snapRevertCmd(f *volumeFlags) *cobra.Command {
	var force, restart bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "revert NAME SNAPSHOT [--restart] [--force]",
		Short: "Revert a stopped volume to a snapshot on every replica",
		Long: `Revert a volume to a snapshot: every replica holding the snapshot reverts
to it; the others resync from them when the volume is served again. The
volume must be stopped: --restart stops it, reverts, and serves it again.
Newer snapshots are discarded only with --force.`,
		Example: `  hacs volume standby vm1 && hacs volume snapshot revert vm1 before-upgrade && hacs volume active vm1
  hacs volume snapshot revert vm1 before-upgrade --restart`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, snap := args[0], args[1]
			c := f.client()
			ctx := cmd.Context()
			if restart {
				if err := c.do(ctx, "POST", "/v1/volumes/"+name+"/standby", nil, nil); err != nil {
					return err
				}
				if _, err := waitVolume(ctx, c, name, false, timeout); err != nil {
					return err
				}
			}
			var out struct {
				Reverted  []string `json:"reverted"`
				Failed    []string `json:"failed"`
				Discarded []string `json:"discarded"`
			}
			err := c.do(ctx, "POST", "/v1/volumes/"+name+"/snapshots/"+snap+"/revert", agent.RevertRequest{Force: force}, &out)
			if err != nil {
				if restart {
					return fmt.Errorf("%w (the volume is left stopped: hacs volume active %s serves it again)", err, name)
				}
				return err
			}
			var served agent.VolumeInfo
			if restart {
				if err := c.do(ctx, "POST", "/v1/volumes/"+name+"/active", nil, nil); err != nil {
					return err
				}
				if served, err = waitVolume(ctx, c, name, true, timeout); err != nil {
					return err
				}
			}
			if f.asJSON {
				return printJSON(cmd.OutOrStdout(), out)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "%s: reverted to %s on %s\n", name, snap, strings.Join(out.Reverted, ","))
			for _, fl := range out.Failed {
				fmt.Fprintf(w, "%s: revert failed on %s (that replica resyncs)\n", name, fl)
			}
			if len(out.Discarded) > 0 {
				fmt.Fprintf(w, "%s: newer snapshots discarded: %s\n", name, strings.Join(out.Discarded, ","))
			}
			if restart {
				fmt.Fprintf(w, "%s: served again by %s at epoch %d\n", name, served.Export.Node, served.Export.Epoch)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "discard the snapshots newer than SNAPSHOT")
	cmd.Flags().BoolVar(&restart, "restart", false, "stop the volume first and serve it again after")
	cmd.Flags().DurationVar(&timeout, "timeout", time.Minute, "with --restart: how long to wait for each step")
	return cmd
}

// waitVolume waits until a volume is served (served) or fully stopped.
func waitVolume(ctx context.Context, c *apiClient, name string, served bool, timeout time.Duration) (agent.VolumeInfo, error) {
	deadline := time.Now().Add(timeout)
	for {
		var v agent.VolumeInfo
		err := c.do(ctx, "GET", "/v1/volumes/"+name, nil, &v)
		if err == nil {
			if served && v.Export != nil {
				return v, nil
			}
			if !served && v.Export == nil && (v.State == nil || v.State.Primary == "") {
				return v, nil
			}
		}
		if time.Now().After(deadline) {
			state := "stopped"
			if served {
				state = "served again"
			}
			return v, fmt.Errorf("volume %s is not %s after %v (health %s)", name, state, timeout, v.Health)
		}
		select {
		case <-ctx.Done():
			return v, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func volCloneCmd(f *volumeFlags) *cobra.Command {
	var snap string
	cmd := &cobra.Command{
		Use:   "clone SOURCE NEW [--snapshot SNAPSHOT]",
		Short: "Create a volume with the content of another (now, or of one of its snapshots)",
		Long: `Create volume NEW with SOURCE's content: of its snapshot SNAPSHOT, or, without
--snapshot, of its data now (a snapshot taken for the purpose at one point
of the writes, deleted after). Each node holding the snapshot copies it
locally into NEW's replica; NEW has SOURCE's size, replica count and
constraints, and is served at once. The copy's progress is shown on standard
error (a bar on a terminal, plain lines otherwise).`,
		Example: "  hacs volume clone vm1 vm1-test\n  hacs volume clone vm1 vm1-old --snapshot before-upgrade",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := validName(args[1]); err != nil {
				return asUsage(err)
			}
			var out struct {
				Replicas []string `json:"replicas"`
			}
			// The copy's progress on stderr (GET /v1/clones/NEW): a bar on a
			// terminal, plain lines otherwise.
			stop := func() {}
			if !f.asJSON {
				c := f.client()
				stderr := cmd.ErrOrStderr()
				stop = pollProgress(cmd.Context(), newProgress(stderr, "clone "+args[1], isTerminal(stderr)), 250*time.Millisecond,
					func(ctx context.Context) (int64, int64, bool) {
						var p agent.CloneProgress
						err := c.do(ctx, "GET", "/v1/clones/"+args[1], nil, &p)
						return p.Done, p.Total, err == nil && p.Running
					})
			}
			err := f.client().do(cmd.Context(), "POST", "/v1/volumes/"+args[0]+"/clone", agent.CloneRequest{Name: args[1], Snapshot: snap}, &out)
			stop()
			if err != nil {
				return err
			}
			if f.asJSON {
				return printJSON(cmd.OutOrStdout(), map[string]any{"created": args[1], "source": args[0], "snapshot": snap, "replicas": out.Replicas})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "created %s from %s on %s\n", args[1], args[0], strings.Join(out.Replicas, ","))
			return nil
		},
	}
	cmd.Flags().StringVar(&snap, "snapshot", "", "clone this snapshot of SOURCE (default: its data now)")
	return cmd
}
