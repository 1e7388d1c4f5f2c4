package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/hacs/hacs/internal/store"
)

// newPoolCmd is the node-local storage tool, what lvcreate/lvs/lvconvert are
// to LVM: pools of thin volumes with snapshots, clones and resize.
func newPoolCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "pool",
		Short: "Manage a local storage pool: thin volumes, snapshots, clones, resize",
		Long: `Manage a storage pool on this machine directly (the LVM role).

A pool is a directory; its volumes are thin (space is used only where data
was written) and have named, instant, crash-consistent snapshots. These
commands act on a pool that no running process has open.`,
	}
	cmd.PersistentFlags().BoolVar(&asJSON, "json", false, "print JSON")
	out := func(c *cobra.Command, v any, table func(w io.Writer)) error {
		if asJSON {
			enc := json.NewEncoder(c.OutOrStdout())
			enc.SetIndent("", "  ")
			return enc.Encode(v)
		}
		tw := tabwriter.NewWriter(c.OutOrStdout(), 0, 4, 2, ' ', 0)
		table(tw)
		return tw.Flush()
	}
	open := func(dir string) (*store.Pool, error) { return store.OpenPool(dir) }
	withVolume := func(dir, name string, fn func(*store.Volume) error) error {
		p, err := open(dir)
		if err != nil {
			return err
		}
		v, err := p.OpenVolume(name, store.Options{})
		if err != nil {
			return err
		}
		err = fn(v)
		if cerr := v.Close(); err == nil {
			err = cerr
		}
		return err
	}

	var overcommit float64
	create := &cobra.Command{
		Use:     "create DIR",
		Short:   "Create a pool in DIR",
		Example: "  hacs pool create /var/lib/hacs/pool --overcommit 1.5",
		Args:    cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			_, err := store.CreatePool(args[0], store.PoolOptions{Overcommit: overcommit})
			return err
		},
	}
	create.Flags().Float64Var(&overcommit, "overcommit", 0, "sum of volume sizes allowed, as a multiple of capacity (default 2.0)")

	info := &cobra.Command{
		Use:   "info DIR",
		Short: "Show capacity, usage, promises and volumes",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			p, err := open(args[0])
			if err != nil {
				return err
			}
			st, err := p.Stats()
			if err != nil {
				return err
			}
			vols, err := p.Volumes()
			if err != nil {
				return err
			}
			return out(c, map[string]any{"stats": st, "volumes": vols}, func(w io.Writer) {
				fmt.Fprintf(w, "capacity\t%s\nused\t%s\nfree\t%s\npromised\t%s (limit %s, overcommit %.2f)\n\n",
					human(st.Capacity), human(st.Used), human(st.Free), human(st.Promised), human(st.Limit), st.Overcommit)
				fmt.Fprintln(w, "VOLUME\tSIZE\tUSED\tSNAPSHOTS\tERROR")
				for _, v := range vols {
					fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\n", v.Name, human(v.Size), human(v.Used), v.Snapshots, v.Error)
				}
			})
		},
	}

	var sizeStr string
	volCreate := &cobra.Command{
		Use:     "create-volume DIR NAME --size SIZE",
		Short:   "Create a thin volume",
		Example: "  hacs pool create-volume /var/lib/hacs/pool vm1 --size 20G",
		Args:    cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			size, err := parseSize(sizeStr)
			if err != nil {
				return fmt.Errorf("--size: %w", err)
			}
			p, err := open(args[0])
			if err != nil {
				return err
			}
			return p.CreateVolume(args[1], size)
		},
	}
	volCreate.Flags().StringVar(&sizeStr, "size", "", "volume size (required), e.g. 10G")
	volCreate.MarkFlagRequired("size")

	volDelete := &cobra.Command{
		Use:   "delete-volume DIR NAME",
		Short: "Delete a volume and its snapshots",
		Args:  cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			p, err := open(args[0])
			if err != nil {
				return err
			}
			return p.DeleteVolume(args[1])
		},
	}

	snap := &cobra.Command{
		Use:     "snapshot DIR VOLUME SNAPSHOT",
		Short:   "Take a named, crash-consistent snapshot",
		Example: "  hacs pool snapshot /var/lib/hacs/pool vm1 before-upgrade",
		Args:    cobra.ExactArgs(3),
		RunE: func(c *cobra.Command, args []string) error {
			return withVolume(args[0], args[1], func(v *store.Volume) error { return v.Snapshot(args[2]) })
		},
	}
	snaps := &cobra.Command{
		Use:   "snapshots DIR VOLUME",
		Short: "List a volume's snapshots with creation time and the space they pin",
		Args:  cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			var list []store.SnapshotInfo
			if err := withVolume(args[0], args[1], func(v *store.Volume) error { list = v.Snapshots(); return nil }); err != nil {
				return err
			}
			return out(c, list, func(w io.Writer) {
				fmt.Fprintln(w, "SNAPSHOT\tCREATED\tPINNED")
				for _, s := range list {
					fmt.Fprintf(w, "%s\t%s\t%s\n", s.Name, s.Created.Format("2006-01-02 15:04:05"), human(s.Pinned))
				}
			})
		},
	}
	delSnap := &cobra.Command{
		Use:   "delete-snapshot DIR VOLUME SNAPSHOT",
		Short: "Delete a snapshot (its data merges into what depends on it)",
		Args:  cobra.ExactArgs(3),
		RunE: func(c *cobra.Command, args []string) error {
			return withVolume(args[0], args[1], func(v *store.Volume) error { return v.DeleteSnapshot(args[2]) })
		},
	}
	var force bool
	revert := &cobra.Command{
		Use:   "revert DIR VOLUME SNAPSHOT [--force]",
		Short: "Revert a volume to a snapshot (--force discards newer snapshots)",
		Args:  cobra.ExactArgs(3),
		RunE: func(c *cobra.Command, args []string) error {
			return withVolume(args[0], args[1], func(v *store.Volume) error { return v.Revert(args[2], force) })
		},
	}
	revert.Flags().BoolVar(&force, "force", false, "also discard snapshots newer than SNAPSHOT")
	clone := &cobra.Command{
		Use:   "clone DIR VOLUME SNAPSHOT NEWVOLUME",
		Short: "Create a new volume from a snapshot (sparse copy)",
		Args:  cobra.ExactArgs(4),
		RunE: func(c *cobra.Command, args []string) error {
			return withVolume(args[0], args[1], func(v *store.Volume) error { return v.Clone(args[2], args[3]) })
		},
	}
	var shrink bool
	resize := &cobra.Command{
		Use:   "resize DIR VOLUME SIZE [--force]",
		Short: "Grow a volume (shrinking needs --force and loses the data past the new end)",
		Args:  cobra.ExactArgs(3),
		RunE: func(c *cobra.Command, args []string) error {
			size, err := parseSize(args[2])
			if err != nil {
				return err
			}
			return withVolume(args[0], args[1], func(v *store.Volume) error { return v.Resize(size, shrink) })
		},
	}
	resize.Flags().BoolVar(&shrink, "force", false, "allow shrinking")
	cmd.AddCommand(create, info, volCreate, volDelete, snap, snaps, delSnap, revert, clone, resize)
	return cmd
}

// human prints a byte count in binary units.
func human(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
