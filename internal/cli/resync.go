package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hacs/hacs/internal/agent"
)

// resyncProgress sums what the volume's replicas that are not in sync
// still have to get: done and total bytes of the running resyncs, and the
// bytes an outdated replica misses (to do, none done). ok is false when the
// primary's view is unknown; who lists the replicas concerned.
func resyncProgress(v agent.VolumeInfo) (done, total int64, who []string, ok bool) {
	if v.Mirror == nil {
		return 0, 0, nil, false
	}
	for _, r := range v.Mirror.Replicas {
		switch r.State {
		case "resyncing":
			done += r.ResyncDone
			total += r.ResyncTotal
			who = append(who, r.ID)
		case "outdated":
			total += r.OutOfSync
			who = append(who, r.ID)
		}
	}
	return done, total, who, true
}

// inSync reports whether every wanted replica of the volume is in sync.
func inSync(v agent.VolumeInfo) bool {
	return v.Health == "ok" && v.State != nil && len(v.State.InSync) >= v.Spec.Replicas
}

func volResyncWaitCmd(f *volumeFlags) *cobra.Command {
	var timeout, interval time.Duration
	cmd := &cobra.Command{
		Use:   "resync-wait NAMES [--timeout DURATION]",
		Short: "Wait until volumes have every replica in sync, showing the resync's progress",
		Long: `Wait until every wanted replica of the volumes is in sync (health ok), one
volume after the other. While replicas resync, their progress is shown on
standard error: a bar redrawn in place on a terminal (bytes done of total,
rate, time left), else a plain line at each 10 % step. Fails on a stopped
volume (no resync runs) and when --timeout passes first.`,
		Example: "  hacs volume resync-wait vm1\n  hacs volume resync-wait ALL --timeout 1h",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			names, err := f.names(ctx, args[0])
			if err != nil {
				return err
			}
			stderr := cmd.ErrOrStderr()
			tty := isTerminal(stderr)
			var results []map[string]any
			for _, name := range names {
				start := time.Now()
				v, err := waitResync(ctx, f.client(), name, interval, func(label string) progress {
					if f.asJSON {
						return nopProgress{}
					}
					return newProgress(stderr, label, tty)
				})
				if err != nil {
					if errors.Is(err, context.DeadlineExceeded) && timeout > 0 {
						health := "health " + v.Health
						if v.Health == "" {
							health = "no answer from the cluster yet"
						}
						err = fmt.Errorf("volume %s: not in sync after %v (%s)", name, timeout, health)
					}
					return err
				}
				took := time.Since(start).Round(time.Millisecond)
				results = append(results, map[string]any{"volume": name, "in_sync": v.State.InSync, "waited_seconds": took.Seconds()})
				if !f.asJSON {
					fmt.Fprintf(cmd.OutOrStdout(), "%s: %d replica(s) in sync (%s) after %v\n", name, len(v.State.InSync),
						strings.Join(v.State.InSync, ","), took)
				}
			}
			if f.asJSON {
				return printJSON(cmd.OutOrStdout(), results)
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "give up after this long (0: wait as long as it takes)")
	cmd.Flags().DurationVar(&interval, "interval", 500*time.Millisecond, "how often to ask the cluster")
	return cmd
}

// waitResync polls the volume until it is in sync, reporting the progress
// of each resync it sees to a progress made by newP (one per set of
// replicas concerned). It returns the last state read.
func waitResync(ctx context.Context, c *apiClient, name string, interval time.Duration, newP func(label string) progress) (agent.VolumeInfo, error) {
	var p progress
	var label string
	defer func() {
		if p != nil {
			p.Done()
		}
	}()
	var v agent.VolumeInfo
	for {
		var cur agent.VolumeInfo
		if err := c.do(ctx, "GET", "/v1/volumes/"+name, nil, &cur); err != nil {
			return v, err
		}
		v = cur
		if inSync(v) {
			return v, nil
		}
		if v.Spec.Stopped {
			return v, fmt.Errorf("volume %s is stopped (standby): no resync runs; hacs volume active %s serves it again", name, name)
		}
		if done, total, who, ok := resyncProgress(v); ok && total > 0 {
			l := "resync " + name + " (" + strings.Join(who, ",") + ")"
			if l != label {
				if p != nil {
					p.Done()
				}
				p, label = newP(l), l
			}
			p.Set(done, total)
		}
		select {
		case <-ctx.Done():
			return v, ctx.Err()
		case <-time.After(interval):
		}
	}
}

// nopProgress reports nothing (--json).
type nopProgress struct{}

func (nopProgress) Set(int64, int64) {}
func (nopProgress) Done()            {}
