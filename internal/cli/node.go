package cli

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hacs/hacs/internal/agent"
	"github.com/hacs/hacs/internal/cluster"
)

func newNodeCmd() *cobra.Command {
	f := &apiFlags{}
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Manage the cluster's nodes: list, info, standby/active, roles, remove",
		Long: `Manage the cluster's nodes through any agent's API.

Names accept the VHACS range syntax (node1-3,node5) and ALL where several are
allowed. --cluster (or HACS_CLUSTER) takes one agent API address or a
comma-separated list, tried in turn; --data-dir DIR talks to the local agent
of DIR over its API socket.`,
	}
	f.register(cmd.PersistentFlags())
	cmd.AddCommand(nodeListCmd(f), nodeInfoCmd(f),
		nodeStandbyCmd(f, "standby", true), nodeStandbyCmd(f, "active", false),
		nodeRoleCmd(f, "setrole"), nodeRoleCmd(f, "delrole"), nodeRemoveCmd(f))
	return cmd
}

// nodeNames expands a node list (range syntax, ALL = every node).
func nodeNames(ctx context.Context, c *apiClient, spec string) ([]string, error) {
	return expandNames(spec, func() ([]string, error) {
		var m cluster.Membership
		if err := c.do(ctx, "GET", "/v1/nodes", nil, &m); err != nil {
			return nil, err
		}
		var out []string
		for _, n := range m.Nodes {
			out = append(out, n.Name)
		}
		return out, nil
	})
}

// result is the outcome of a change on one name, for --json.
type result struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Result any    `json:"result,omitempty"`
	Error  string `json:"error,omitempty"`
}

// forEach applies fn to every name: its line per name (or a JSON list of
// the results with --json), and an error if any failed.
func forEach(cmd *cobra.Command, asJSON bool, names []string, fn func(name string) (string, any, error)) error {
	var results []result
	failed := 0
	for _, n := range names {
		msg, res, err := fn(n)
		r := result{Name: n, OK: err == nil, Result: res}
		if err != nil {
			failed++
			r.Error = err.Error()
			if !asJSON && len(names) > 1 {
				fmt.Fprintf(cmd.ErrOrStderr(), "%s: %v\n", n, err)
			}
		} else if !asJSON && msg != "" {
			fmt.Fprintln(cmd.OutOrStdout(), msg)
		}
		results = append(results, r)
	}
	if asJSON {
		if err := printJSON(cmd.OutOrStdout(), results); err != nil {
			return err
		}
	}
	switch {
	case failed == 1 && len(names) == 1:
		return fmt.Errorf("%s: %s", names[0], results[0].Error)
	case failed > 0:
		return fmt.Errorf("%d of %d failed", failed, len(names))
	}
	return nil
}

func nodeListCmd(f *apiFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the nodes: HA state, roles, voter, DC, storage, primaries and replicas",
		Example: `  hacs node list
  hacs node list --json | jq -r '.[] | select(.online | not) | .name'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			v, err := gather(ctx, f.client(), nil)
			if err != nil {
				return err
			}
			return f.print(cmd, v.Nodes, func(w io.Writer) {
				writeNodeTable(w, v)
				if v.Quorum.Stale || !v.Quorum.Serving {
					fmt.Fprintf(w, "(%s cannot reach a quorum: this view may be outdated)\n", v.AskedNode)
				}
			})
		},
	}
}

func nodeInfoCmd(f *apiFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "info NAMES",
		Short: "Show nodes in detail: state, roles, addresses, storage, version, the volumes they serve",
		Example: `  hacs node info node1
  hacs node info node1-3 --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			c := f.client()
			names, err := nodeNames(ctx, c, args[0])
			if err != nil {
				return err
			}
			v, err := gather(ctx, c, func(vi agent.VolumeInfo) bool {
				return vi.Export != nil && slices.ContainsFunc(names, func(n string) bool { return slices.Contains(vi.Placement, n) })
			})
			if err != nil {
				return err
			}
			var found []nodeView
			for _, name := range names {
				i := slices.IndexFunc(v.Nodes, func(n nodeView) bool { return n.Name == name })
				if i < 0 {
					return fmt.Errorf("no node named %s in cluster %s (its nodes: %s)", name, v.Cluster, strings.Join(nodeList(v), ", "))
				}
				found = append(found, v.Nodes[i])
			}
			if f.asJSON {
				if len(found) == 1 && args[0] == found[0].Name {
					return printJSON(cmd.OutOrStdout(), found[0])
				}
				return printJSON(cmd.OutOrStdout(), found)
			}
			for i, n := range found {
				if i > 0 {
					fmt.Fprintln(cmd.OutOrStdout())
				}
				f.print(cmd, nil, func(w io.Writer) { printNodeInfo(w, v, n) })
			}
			return nil
		},
	}
}

func nodeList(v clusterView) []string {
	var s []string
	for _, n := range v.Nodes {
		s = append(s, n.Name)
	}
	return s
}

func printNodeInfo(w io.Writer, v clusterView, n nodeView) {
	fmt.Fprintf(w, "node\t%s (id %s)\n", n.Name, n.ID)
	state := string(n.State)
	if !n.Since.IsZero() {
		state += fmt.Sprintf(" (for %s)", ago(v.Time, n.Since))
	}
	fmt.Fprintf(w, "state\t%s\n", state)
	fmt.Fprintf(w, "roles\t%s\n", rolesString(n.Roles))
	voter := yesNo(n.Voter)
	if n.Voter && n.MemberID != 0 {
		voter += fmt.Sprintf(" (etcd member %x)", n.MemberID)
	}
	fmt.Fprintf(w, "voter\t%s\n", voter)
	fmt.Fprintf(w, "DC\t%s\n", yesNo(n.DC))
	if len(n.Labels) > 0 {
		var ls []string
		for k, val := range n.Labels {
			ls = append(ls, k+"="+val)
		}
		sort.Strings(ls)
		fmt.Fprintf(w, "labels\t%s\n", strings.Join(ls, ","))
	}
	fmt.Fprintf(w, "api\t%s\n", orDash(n.APIAddr))
	fmt.Fprintf(w, "replica server\t%s\n", orDash(n.ReplicaAddr))
	if n.Alive != nil {
		fmt.Fprintf(w, "agent\thacs %s, pid %d on %s, up %s\n", n.Alive.Version, n.Alive.Pid, orDash(n.Alive.Hostname), ago(v.Time, n.Alive.StartedAt))
		if c := n.Alive.Capacity; c != nil {
			fmt.Fprintf(w, "storage\t%s free of %s\n", human(c.FreeBytes), human(c.TotalBytes))
		}
	}
	fmt.Fprintf(w, "joined\t%s\n", n.JoinedAt.In(displayLoc).Format(time.RFC3339))
	fmt.Fprintf(w, "primaries\t%s\n", orDash(strings.Join(n.Primaries, ",")))
	var reps []string
	for _, r := range v.Volumes {
		for _, rs := range r.ReplicaStates {
			if rs.Node == n.Name {
				s := r.Spec.Name + " (" + rs.State
				if rs.State == "resyncing" {
					s += fmt.Sprintf(" %.0f%%", rs.Progress)
				}
				reps = append(reps, s+")")
			}
		}
	}
	fmt.Fprintf(w, "replicas\t%s\n", orDash(strings.Join(reps, ", ")))
}

func nodeStandbyCmd(f *apiFlags, verb string, standby bool) *cobra.Command {
	short := "Put nodes in standby: they take no new work and hand their primaries over"
	example := "  hacs node standby node2\n  hacs node standby node1-3,node5"
	if !standby {
		short = "Make standby nodes active again"
		example = "  hacs node active node2\n  hacs node active ALL"
	}
	return &cobra.Command{
		Use:     verb + " NAMES",
		Short:   short,
		Example: example,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := f.client()
			names, err := nodeNames(cmd.Context(), c, args[0])
			if err != nil {
				return err
			}
			return forEach(cmd, f.asJSON, names, func(name string) (string, any, error) {
				var out map[string]any
				err := c.do(cmd.Context(), "POST", "/v1/nodes/"+url.PathEscape(name)+"/standby", map[string]bool{"standby": standby}, &out)
				return fmt.Sprintf("node %s: %s", name, verb), out, err
			})
		},
	}
}

// parseRoleArg reads a ROLES argument.
func parseRoleArg(s string) ([]cluster.Role, error) {
	var roles []cluster.Role
	for _, r := range strings.Split(s, ",") {
		r = strings.ToLower(strings.TrimSpace(r))
		switch cluster.Role(r) {
		case cluster.RoleStorage, cluster.RoleVHost, cluster.RoleWitness:
			roles = append(roles, cluster.Role(r))
		case "":
		default:
			return nil, fmt.Errorf("unknown role %q: roles are storage and vhost (witness is fixed when the agent starts)", r)
		}
	}
	if len(roles) == 0 {
		return nil, fmt.Errorf("no role in %q: roles are storage and vhost", s)
	}
	return roles, nil
}

func nodeRoleCmd(f *apiFlags, verb string) *cobra.Command {
	var exact bool
	short, example := "Give nodes roles (storage: holds replicas; vhost: runs clients and exports)",
		`  hacs node setrole node4 storage
  hacs node setrole node1-3 storage,vhost
  hacs node setrole node5 vhost --exact     # vhost only: its replicas move away`
	if verb == "delrole" {
		short, example = "Take roles from nodes (delrole storage drains a node: its replicas move away)",
			"  hacs node delrole node5 storage\n  hacs node delrole node1-3 vhost"
	}
	cmd := &cobra.Command{
		Use:   verb + " NAMES ROLES",
		Short: short,
		Long: short + `.

Roles are storage and vhost (comma-separated). The change is written to the
node's record at once and logged in the event log; a node keeps it across
restarts of its agent unless the agent is started with --roles. The witness
role is fixed when the agent starts.`,
		Example: example,
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			roles, err := parseRoleArg(args[1])
			if err != nil {
				if _, err2 := parseRoleArg(args[0]); err2 == nil {
					return usagef("the node names come first, then the roles: hacs node %s %s %s", verb, args[1], args[0])
				}
				return usagef("%v", err)
			}
			change := cluster.RolesChange{Add: roles}
			switch {
			case verb == "delrole":
				change = cluster.RolesChange{Remove: roles}
			case exact:
				change = cluster.RolesChange{Set: roles}
			}
			c := f.client()
			names, err := nodeNames(cmd.Context(), c, args[0])
			if err != nil {
				return err
			}
			return forEach(cmd, f.asJSON, names, func(name string) (string, any, error) {
				var out struct {
					Name  string         `json:"name"`
					Roles []cluster.Role `json:"roles"`
				}
				err := c.do(cmd.Context(), "POST", "/v1/nodes/"+url.PathEscape(name)+"/roles", change, &out)
				return fmt.Sprintf("node %s: roles %s", name, rolesString(out.Roles)), out, err
			})
		},
	}
	if verb == "setrole" {
		cmd.Flags().BoolVar(&exact, "exact", false, "set exactly these roles (others are taken away)")
	}
	return cmd
}

func nodeRemoveCmd(f *apiFlags) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "remove NAMES [--force]",
		Short: "Remove nodes from the cluster (their identity can never rejoin)",
		Long: `Remove nodes from the cluster: their etcd membership (voters), their records,
and a tombstone of their identity, so that they can never come back with
stale state (wipe a removed node's data directory to join it again as a new
node). An online node is refused unless --force (it then stops). ALL is not
accepted here.`,
		Example: `  hacs node remove node4
  hacs node remove node4-6 --force`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			names, err := expandNames(args[0], nil)
			if err != nil {
				return err
			}
			c := f.client()
			q := ""
			if force {
				q = "?force=true"
			}
			return forEach(cmd, f.asJSON, names, func(name string) (string, any, error) {
				ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
				defer cancel()
				err := c.do(ctx, "DELETE", "/v1/nodes/"+url.PathEscape(name)+q, nil, nil)
				return fmt.Sprintf("node %s removed", name), nil, err
			})
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "remove nodes even though they are online (they stop)")
	return cmd
}
