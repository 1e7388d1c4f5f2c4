package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/hacs/hacs/internal/cluster"
)

// eventsQuery is what `hacs events` asks for.
type eventsQuery struct {
	node, kind, resource, since string
	limit                       int
}

// path is the API request for events since t (zero: the query's --since).
func (q eventsQuery) path(now, t time.Time) (string, error) {
	v := url.Values{}
	if q.node != "" {
		v.Set("node", q.node)
	}
	if q.kind != "" {
		v.Set("kind", q.kind)
	}
	if q.resource != "" {
		v.Set("resource", q.resource)
	}
	if t.IsZero() && q.since != "" {
		var err error
		if t, err = parseSince(now, q.since); err != nil {
			return "", err
		}
	}
	if !t.IsZero() {
		v.Set("since", t.UTC().Format(time.RFC3339Nano))
	}
	if q.limit > 0 {
		v.Set("limit", strconv.Itoa(q.limit))
	}
	return "/v1/events?" + v.Encode(), nil
}

// parseSince reads --since: a duration back from now (10m, 2h) or an RFC
// 3339 time.
func parseSince(now time.Time, s string) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, usagef("--since %s: want a positive duration such as 10m, or a time such as 2024-05-01T12:00:00Z", s)
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, usagef("--since %q: want a duration such as 10m or 2h, or an RFC 3339 time such as 2024-05-01T12:00:00Z", s)
	}
	return t, nil
}

func newEventsCmd() *cobra.Command {
	f := &apiFlags{}
	var q eventsQuery
	var follow bool
	var interval time.Duration
	cmd := &cobra.Command{
		Use:   "events [--follow]",
		Short: "Show the cluster event log (failovers, nodes joining and leaving, admin changes)",
		Long: `Show the cluster's event log, oldest first: nodes joining, starting, going
offline, standby and role changes (with who made them), DC elections,
volume failovers and resyncs. --follow keeps printing new events as they are
logged, until Ctrl-C; with --json each event is then one JSON line.`,
		Example: `  hacs events
  hacs events --since 1h --kind node-offline
  hacs events --follow
  hacs events --follow --json | jq -c 'select(.kind | startswith("volume"))'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if q.limit < 0 {
				return usagef("--limit %d: want 0 (all) or more", q.limit)
			}
			if interval < 100*time.Millisecond {
				return usagef("--interval %v: at least 100ms", interval)
			}
			path, err := q.path(time.Now(), time.Time{})
			if err != nil {
				return err
			}
			c := f.client()
			out := cmd.OutOrStdout()
			var page struct {
				Events []cluster.Event `json:"events"`
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			err = c.do(ctx, "GET", path, nil, &page)
			cancel()
			if err != nil {
				return err
			}
			if !follow {
				if f.asJSON {
					return printJSON(out, page.Events)
				}
				for _, e := range page.Events {
					writeEvent(out, e)
				}
				return nil
			}
			sctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return followEvents(sctx, c, q, interval, page.Events, func(e cluster.Event) {
				if f.asJSON {
					b, _ := json.Marshal(e)
					fmt.Fprintf(out, "%s\n", b)
				} else {
					writeEvent(out, e)
				}
			}, cmd.ErrOrStderr())
		},
	}
	f.register(cmd.Flags())
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new events until Ctrl-C")
	cmd.Flags().IntVarP(&q.limit, "limit", "n", 50, "show the newest N events (0: all)")
	cmd.Flags().StringVar(&q.since, "since", "", "only events since a duration ago (10m, 2h) or an RFC 3339 time")
	cmd.Flags().StringVar(&q.node, "node", "", "only events logged by this node")
	cmd.Flags().StringVar(&q.kind, "kind", "", "only events of this kind (such as node-offline)")
	cmd.Flags().StringVar(&q.resource, "resource", "", "only events about this resource (such as a volume)")
	cmd.Flags().DurationVar(&interval, "interval", time.Second, "with --follow: how often to ask for new events")
	return cmd
}

func writeEvent(w io.Writer, e cluster.Event) {
	fmt.Fprintf(w, "%s  %-8s %-20s %-14s %s\n", e.Time.In(displayLoc).Format("2006-01-02 15:04:05.000"), e.Node, e.Kind, orDash(e.Resource), e.Message)
}

// followWindow: events are keyed by their writer's clock, and a node
// writes the events it queued while cut off late; each poll asks again for
// this much before the newest event seen.
const followWindow = 30 * time.Second

// followEvents prints first, then polls for new events (each printed once,
// by its key), through whichever agent answers.
func followEvents(ctx context.Context, c *apiClient, q eventsQuery, interval time.Duration, first []cluster.Event, emit func(cluster.Event), errw io.Writer) error {
	seen := map[string]time.Time{} // printed events within the window
	last := time.Now().Add(-time.Second)
	// older events than the first page's were left out by --limit
	floor := last
	if len(first) > 0 {
		floor = first[0].Time
	}
	for _, e := range first {
		emit(e)
		seen[e.Key] = e.Time
		last = e.Time
	}
	q.limit = 0
	failing := false
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		path, err := q.path(time.Now(), last.Add(-followWindow))
		if err != nil {
			return err
		}
		var page struct {
			Events []cluster.Event `json:"events"`
		}
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = c.do(rctx, "GET", path, nil, &page)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			if !failing {
				fmt.Fprintf(errw, "hacs: reading events: %v (retrying)\n", err)
			}
			failing = true
			continue
		}
		failing = false
		for _, e := range page.Events {
			if _, ok := seen[e.Key]; ok || e.Time.Before(floor) {
				continue
			}
			seen[e.Key] = e.Time
			emit(e)
			if e.Time.After(last) {
				last = e.Time
			}
		}
		for k, at := range seen {
			if at.Before(last.Add(-followWindow)) {
				delete(seen, k)
			}
		}
	}
}
