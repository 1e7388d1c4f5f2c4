package cli

import (
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hacs/hacs/internal/agent"
	"github.com/hacs/hacs/internal/policy"
)

func newResourceCmd() *cobra.Command {
	f := &apiFlags{}
	cmd := &cobra.Command{
		Use:     "resource",
		Aliases: []string{"rsc"},
		Short:   "Manage resources besides volumes: floating IPs, OCF agents, groups",
		Long: `Manage the cluster's resources besides volumes, as Pacemaker does:
a floating IP (type ip), any OCF resource agent (type ocf:PROVIDER:AGENT, run
from /usr/lib/ocf/resource.d exactly as Pacemaker runs it), and groups of them
(started in order on one node, stopped in reverse; a member volume:NAME makes
the group run where the volume's primary is). See docs/RESOURCES.md.`,
	}
	f.register(cmd.PersistentFlags())
	cmd.AddCommand(resCreateCmd(f), resListCmd(f), resInfoCmd(f), resDeleteCmd(f), resMoveCmd(f),
		resActionCmd(f, "unfail", "Clear a resource's failure counts (a group: its members' too)"),
		resActionCmd(f, "cleanup", "Clear failure counts and probe the resource again on every node"),
		resActionCmd(f, "stop", "Stop a resource (it stays stopped until started)"),
		resActionCmd(f, "start", "Start a resource stopped with stop"))
	return cmd
}

// parseKV reads NAME=VALUE arguments.
func parseKV(args []string) (map[string]string, error) {
	out := map[string]string{}
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if !ok || k == "" {
			return nil, usagef("parameter %q: want NAME=VALUE", a)
		}
		out[k] = v
	}
	return out, nil
}

// parseScore reads a score: a number, INFINITY/inf or -INFINITY/-inf.
func parseScore(s string) (int, error) {
	switch strings.ToLower(strings.TrimPrefix(s, "+")) {
	case "infinity", "inf":
		return policy.Infinity, nil
	case "-infinity", "-inf":
		return -policy.Infinity, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, usagef("score %q: want a number, INFINITY or -INFINITY", s)
	}
	return max(-policy.Infinity, min(policy.Infinity, n)), nil
}

func resCreateCmd(f *apiFlags) *cobra.Command {
	var req agent.ResourceRequest
	var members, prefer string
	var stickiness int
	var failureTimeout, interval, timeout, startTimeout, stopTimeout time.Duration
	var force bool
	cmd := &cobra.Command{
		Use:   "create NAME TYPE [PARAM=VALUE...]",
		Short: "Create a resource (ip, ocf:PROVIDER:AGENT or group)",
		Example: `  hacs resource create web-ip ip ip=192.0.2.10 cidr_netmask=24 nic=eth0
  hacs resource create web ocf:heartbeat:apache configfile=/etc/apache2/apache2.conf --monitor-interval 20s
  hacs resource create fs ocf:heartbeat:Filesystem device=/dev/loop0 directory=/srv fstype=ext4
  hacs resource create svc group --members volume:vol1,fs,web-ip,web --migration-threshold 2`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name, req.Type = args[0], args[1]
			params, err := parseKV(args[2:])
			if err != nil {
				return err
			}
			if len(params) > 0 {
				req.Params = params
			}
			if members != "" {
				req.Members = strings.Split(members, ",")
			}
			if prefer != "" {
				if req.Policy.Prefer, err = expandNames(prefer, nil); err != nil {
					return fmt.Errorf("--nodes: %w", err)
				}
			}
			if cmd.Flags().Changed("stickiness") {
				req.Policy.Stickiness = &stickiness
			}
			req.Policy.FailureTimeout = policy.Duration(failureTimeout)
			req.Ops = agent.Ops{MonitorInterval: policy.Duration(interval), MonitorTimeout: policy.Duration(timeout),
				StartTimeout: policy.Duration(startTimeout), StopTimeout: policy.Duration(stopTimeout)}
			path := "/v1/resources"
			if force {
				path += "?force=1"
			}
			var spec agent.ResourceSpec
			if err := f.client().do(cmd.Context(), "POST", path, req, &spec); err != nil {
				return err
			}
			return f.print(cmd, spec, func(w io.Writer) { fmt.Fprintf(w, "created %s (%s)\n", spec.Name, spec.Type) })
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&members, "members", "", "group members in start order, comma-separated (resources, or volume:NAME)")
	fl.StringVarP(&prefer, "nodes", "n", "", "preferred nodes, most preferred first (range syntax)")
	fl.IntVar(&stickiness, "stickiness", policy.DefaultStickiness, "resource-stickiness: score of staying where it runs")
	fl.IntVar(&req.Policy.MigrationThreshold, "migration-threshold", 0, "move away from a node after this many failures there (0: never)")
	fl.DurationVar(&failureTimeout, "failure-timeout", 0, "forget failures older than this (0: never)")
	fl.StringVar(&req.OnFail, "on-fail", "", "when a monitor fails: restart (default), move, stop, fence or ignore")
	fl.StringVar(&req.Requires, "requires", "", "before recovering it from a lost node: fencing (default: the node must be fenced) or quorum")
	fl.DurationVar(&interval, "monitor-interval", 0, "recurring monitor interval (default 10s)")
	fl.DurationVar(&timeout, "monitor-timeout", 0, "monitor timeout (default 20s)")
	fl.DurationVar(&startTimeout, "start-timeout", 0, "start timeout (default 20s)")
	fl.DurationVar(&stopTimeout, "stop-timeout", 0, "stop timeout (default 20s)")
	fl.BoolVar(&req.Stopped, "stopped", false, "create it stopped")
	fl.BoolVar(&force, "force", false, "do not check the agent's parameters against its meta-data on the node that answers")
	return cmd
}

// resourceRow is one line of resource list (and of cluster status).
type resourceRow struct {
	Name     string `json:"name"`
	Type     string `json:"type"`
	Group    string `json:"group,omitempty"`
	Health   string `json:"health"`
	Node     string `json:"node,omitempty"`
	Running  string `json:"running,omitempty"`
	Failures int    `json:"failures,omitempty"`
	Why      string `json:"why,omitempty"`
}

func newResourceRow(r agent.ResourceInfo) resourceRow {
	row := resourceRow{Name: r.Spec.Name, Type: r.Spec.Type, Group: r.Group, Health: r.Health, Running: strings.Join(r.Running, ",")}
	if r.Assigned != nil {
		row.Node = r.Assigned.Node
	}
	for _, f := range r.Failures {
		row.Failures += f.Count
	}
	if r.Blocked != nil {
		row.Why = r.Blocked.Reason
	} else {
		for _, node := range sortedStatusNodes(r.Status) {
			if s := r.Status[node]; s.State == policy.StateFailed || s.State == policy.StateStopFailed {
				row.Why = node + ": " + s.Message
			}
		}
	}
	return row
}

func sortedStatusNodes(m map[string]agent.ResourceStatus) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func printResourceRows(w io.Writer, rows []resourceRow) {
	fmt.Fprintln(w, "NAME\tTYPE\tGROUP\tHEALTH\tNODE\tRUNNING\tFAILS\tWHY")
	for _, r := range rows {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", r.Name, r.Type, orDash(r.Group), r.Health, orDash(r.Node), orDash(r.Running), r.Failures, orDash(r.Why))
	}
}

func resListCmd(f *apiFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List resources: where they run, health, failures, why blocked",
		Example: "  hacs resource list\n  hacs resource list --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var list []agent.ResourceInfo
			if err := f.client().do(cmd.Context(), "GET", "/v1/resources", nil, &list); err != nil {
				return err
			}
			if f.asJSON {
				return printJSON(cmd.OutOrStdout(), list)
			}
			rows := make([]resourceRow, 0, len(list))
			for _, r := range list {
				rows = append(rows, newResourceRow(r))
			}
			return f.print(cmd, rows, func(w io.Writer) { printResourceRows(w, rows) })
		},
	}
}

func resInfoCmd(f *apiFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "info NAME",
		Short:   "Show a resource: spec, assignment, state on each node, failures with the agent's output",
		Example: "  hacs resource info web-ip\n  hacs resource info web-ip --json",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var r agent.ResourceInfo
			if err := f.client().do(cmd.Context(), "GET", "/v1/resources/"+args[0], nil, &r); err != nil {
				return err
			}
			return f.print(cmd, r, func(w io.Writer) { printResourceInfo(w, r) })
		},
	}
}

func printResourceInfo(w io.Writer, r agent.ResourceInfo) {
	s := r.Spec
	fmt.Fprintf(w, "resource\t%s\ntype\t%s\nhealth\t%s\n", s.Name, s.Type, r.Health)
	if r.Group != "" {
		fmt.Fprintf(w, "group\t%s\n", r.Group)
	}
	if len(s.Members) > 0 {
		fmt.Fprintf(w, "members\t%s\n", strings.Join(s.Members, " -> "))
	}
	keys := make([]string, 0, len(s.Params))
	for k := range s.Params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "param\t%s=%s\n", k, s.Params[k])
	}
	if r.Assigned != nil {
		fmt.Fprintf(w, "assigned\t%s (since %s: %s)\n", r.Assigned.Node, r.Assigned.Since.Format(time.RFC3339), r.Assigned.Reason)
	} else {
		fmt.Fprintf(w, "assigned\t-\n")
	}
	fmt.Fprintf(w, "running on\t%s\n", orDash(strings.Join(r.Running, ",")))
	if r.Blocked != nil {
		fmt.Fprintf(w, "blocked\t%s (since %s)\n", r.Blocked.Reason, r.Blocked.Since.Format(time.RFC3339))
	}
	meta := []string{}
	if s.OnFail != "" {
		meta = append(meta, "on-fail="+s.OnFail)
	}
	if s.Requires != "" {
		meta = append(meta, "requires="+s.Requires)
	}
	if s.Policy.Stickiness != nil {
		meta = append(meta, fmt.Sprintf("stickiness=%d", *s.Policy.Stickiness))
	}
	if s.Policy.MigrationThreshold > 0 {
		meta = append(meta, fmt.Sprintf("migration-threshold=%d", s.Policy.MigrationThreshold))
	}
	if s.Policy.FailureTimeout > 0 {
		meta = append(meta, "failure-timeout="+time.Duration(s.Policy.FailureTimeout).String())
	}
	if s.Stopped {
		meta = append(meta, "target-role=stopped")
	}
	if len(meta) > 0 {
		fmt.Fprintf(w, "meta\t%s\n", strings.Join(meta, " "))
	}
	if len(r.Status) > 0 {
		fmt.Fprintln(w, "\nNODE\tSTATE\tLAST-OP\tRC\tAT\tMESSAGE")
		for _, node := range sortedStatusNodes(r.Status) {
			st := r.Status[node]
			state := st.State
			if st.Lost {
				state += " (node lost: last known)"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\n", node, state, orDash(st.Op), st.RC, st.At.Format(time.RFC3339), orDash(st.Message))
		}
	}
	if len(r.Failures) > 0 {
		fmt.Fprintln(w, "\nFAILED-ON\tCOUNT\tLAST\tOP\tFATAL\tMESSAGE")
		nodes := make([]string, 0, len(r.Failures))
		for n := range r.Failures {
			nodes = append(nodes, n)
		}
		sort.Strings(nodes)
		for _, n := range nodes {
			fl := r.Failures[n]
			fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%v\t%s\n", n, fl.Count, fl.Last.Format(time.RFC3339), orDash(fl.Op), fl.Fatal, orDash(fl.Message))
		}
	}
	for _, node := range sortedStatusNodes(r.Status) {
		if st := r.Status[node]; st.Stderr != "" {
			fmt.Fprintf(w, "\nagent stderr on %s (last %s):\n%s\n", node, st.Op, strings.TrimRight(st.Stderr, "\n"))
		}
	}
}

func resDeleteCmd(f *apiFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "delete NAME",
		Aliases: []string{"rm"},
		Short:   "Delete a resource (its node stops it; constraints naming it are deleted too)",
		Example: "  hacs resource delete web-ip",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var out map[string]any
			if err := f.client().do(cmd.Context(), "DELETE", "/v1/resources/"+args[0], nil, &out); err != nil {
				return err
			}
			return f.print(cmd, out, func(w io.Writer) { fmt.Fprintf(w, "deleted %s\n", args[0]) })
		},
	}
}

func resMoveCmd(f *apiFlags) *cobra.Command {
	var clear bool
	cmd := &cobra.Command{
		Use:   "move NAME [NODE]",
		Short: "Move a resource to a node (adds location constraint cli-move-NAME; --clear removes it)",
		Example: `  hacs resource move web-ip node2
  hacs resource move web-ip --clear`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			body := map[string]any{}
			switch {
			case clear && len(args) == 1:
				body["clear"] = true
			case !clear && len(args) == 2:
				body["node"] = args[1]
			default:
				return usagef("give either a NODE or --clear")
			}
			var out any
			if err := f.client().do(cmd.Context(), "POST", "/v1/resources/"+args[0]+"/move", body, &out); err != nil {
				return err
			}
			return f.print(cmd, out, func(w io.Writer) {
				if clear {
					fmt.Fprintf(w, "cleared the move constraint of %s\n", args[0])
				} else {
					fmt.Fprintf(w, "moving %s to %s (location constraint cli-move-%s, INFINITY)\n", args[0], args[1], args[0])
				}
			})
		},
	}
	cmd.Flags().BoolVar(&clear, "clear", false, "remove the constraint an earlier move added")
	return cmd
}

func resActionCmd(f *apiFlags, action, short string) *cobra.Command {
	return &cobra.Command{
		Use:     action + " NAME",
		Short:   short,
		Example: "  hacs resource " + action + " web-ip",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var out any
			if err := f.client().do(cmd.Context(), "POST", "/v1/resources/"+args[0]+"/"+action, nil, &out); err != nil {
				return err
			}
			return f.print(cmd, out, func(w io.Writer) { fmt.Fprintf(w, "%s: %s done\n", args[0], action) })
		},
	}
}

func newConstraintCmd() *cobra.Command {
	f := &apiFlags{}
	cmd := &cobra.Command{
		Use:   "constraint",
		Short: "Manage resource constraints: location, colocation, order",
		Long: `Constraints tie resources to nodes and to each other (Pacemaker's location,
colocation and order constraints). Scores are numbers, INFINITY or -INFINITY.`,
	}
	f.register(cmd.PersistentFlags())
	cmd.AddCommand(consAddCmd(f), consListCmd(f), consDeleteCmd(f))
	return cmd
}

func consAddCmd(f *apiFlags) *cobra.Command {
	var id string
	cmd := &cobra.Command{
		Use:   "add location RESOURCE NODE SCORE | colocation RESOURCE WITH [SCORE] | order FIRST THEN",
		Short: "Add a constraint",
		Example: `  hacs constraint add location web-ip node1 200
  hacs constraint add location web-ip node3 -INFINITY
  hacs constraint add colocation web-ip web            # INFINITY: web-ip runs where web runs
  hacs constraint add colocation fs volume:vol1        # fs runs where vol1's primary is
  hacs constraint add order db web                     # start web after db`,
		Args: cobra.RangeArgs(3, 4),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := agent.ConstraintRequest{ID: id, Kind: args[0]}
			score := func(s string) error {
				n, err := parseScore(s)
				if err != nil {
					return err
				}
				req.Score = &n
				return nil
			}
			switch args[0] {
			case policy.ConsLocation:
				if len(args) != 4 {
					return usagef("location takes RESOURCE NODE SCORE")
				}
				req.Resource, req.Node = args[1], args[2]
				if err := score(args[3]); err != nil {
					return err
				}
			case policy.ConsColocation:
				req.Resource, req.With = args[1], args[2]
				if len(args) == 4 {
					if err := score(args[3]); err != nil {
						return err
					}
				}
			case policy.ConsOrder:
				if len(args) != 3 {
					return usagef("order takes FIRST THEN")
				}
				req.First, req.Resource = args[1], args[2]
			default:
				return usagef("constraint kind %q: want location, colocation or order", args[0])
			}
			var c policy.Constraint
			if err := f.client().do(cmd.Context(), "POST", "/v1/constraints", req, &c); err != nil {
				return err
			}
			return f.print(cmd, c, func(w io.Writer) { fmt.Fprintf(w, "added %s: %s\n", c.ID, agent.DescribeConstraint(c)) })
		},
	}
	cmd.Flags().StringVar(&id, "id", "", "constraint id (default KIND-RESOURCE-TARGET)")
	return cmd
}

func consListCmd(f *apiFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List constraints",
		Example: "  hacs constraint list\n  hacs constraint list --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var list []policy.Constraint
			if err := f.client().do(cmd.Context(), "GET", "/v1/constraints", nil, &list); err != nil {
				return err
			}
			return f.print(cmd, list, func(w io.Writer) {
				fmt.Fprintln(w, "ID\tKIND\tRESOURCE\tTARGET\tSCORE\tMEANING")
				for _, c := range list {
					target, score := c.Node, agent.ScoreString(c.Score)
					switch c.Kind {
					case policy.ConsColocation:
						target = c.With
					case policy.ConsOrder:
						target, score = "after "+c.First, "-"
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", c.ID, c.Kind, c.Resource, target, score, agent.DescribeConstraint(c))
				}
			})
		},
	}
}

func consDeleteCmd(f *apiFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "delete ID",
		Aliases: []string{"rm"},
		Short:   "Delete a constraint",
		Example: "  hacs constraint delete location-web-ip-node1",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var out any
			if err := f.client().do(cmd.Context(), "DELETE", "/v1/constraints/"+args[0], nil, &out); err != nil {
				return err
			}
			return f.print(cmd, out, func(w io.Writer) { fmt.Fprintf(w, "deleted %s\n", args[0]) })
		},
	}
}
