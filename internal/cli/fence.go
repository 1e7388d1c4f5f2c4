package cli

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hacs/hacs/internal/cluster"
	"github.com/hacs/hacs/internal/fence"
)

func newFenceCmd() *cobra.Command {
	f := &apiFlags{}
	var (
		yes    bool
		action string
		reason string
		wait   time.Duration
	)
	cmd := &cobra.Command{
		Use:   "fence NODE --yes",
		Short: "Fence a node (power it off or reboot it through its fence devices); manage fence devices and levels",
		Long: `Fencing makes sure a node lost without a clean stop runs nothing any more
before its resources without data-path fencing (floating IPs, services) are
recovered elsewhere. The DC fences such a node once per loss: level 0 is the
node's own self-fence through its liveness lease (confirmed when the lease
has ended plus the self-fence grace); a node with fence levels is confirmed
only by a level of devices, tried in order (every device of a level must
succeed). Devices are agents of Debian's fence-agents package (fence_ipmilan,
fence_apc_snmp, fence_virsh, fence_dummy, ...), run with the stdin key=value
protocol.

hacs fence NODE --yes asks the DC to fence NODE now (reboot by default) and
waits for the outcome.`,
		Example: `  hacs fence device add ipmi-n1 --agent fence_ipmilan --param ip=10.0.9.1 --param username=admin --param password=secret --nodes n1
  hacs fence level add n1 ipmi-n1
  hacs fence level add n1 pdu-a,pdu-b
  hacs fence test ipmi-n1
  hacs fence status
  hacs fence n1 --yes --reason "hung kernel"`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			node := args[0]
			if !yes {
				return usagef("fencing powers node %s off: add --yes to confirm", node)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), wait+30*time.Second)
			defer cancel()
			c := f.client()
			var q fence.Request
			if err := c.do(ctx, "POST", "/v1/fence/nodes/"+url.PathEscape(node), fence.FenceRequest{Action: action, Reason: reason, Confirm: true}, &q); err != nil {
				return err
			}
			if wait <= 0 {
				return f.print(cmd, q, func(w io.Writer) { fmt.Fprintf(w, "fencing of %s requested (%s)\n", node, q.Action) })
			}
			deadline := time.Now().Add(wait)
			for {
				var rec fence.Record
				err := c.do(ctx, "GET", "/v1/fence/nodes/"+url.PathEscape(node), nil, &rec)
				if err == nil && rec.Manual && rec.Requested.Equal(q.Time) && (rec.State == fence.StateFenced || rec.State == fence.StateFailed) {
					if perr := f.print(cmd, rec, func(w io.Writer) { fmt.Fprintln(w, describeRecord(rec)) }); perr != nil {
						return perr
					}
					if rec.State == fence.StateFailed {
						return fmt.Errorf("fencing of %s failed: %s", node, rec.LastError)
					}
					return nil
				}
				if time.Now().After(deadline) {
					return fmt.Errorf("fencing of %s not finished after %v (see hacs fence status)", node, wait)
				}
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(300 * time.Millisecond):
				}
			}
		},
	}
	f.register(cmd.PersistentFlags())
	cmd.Flags().BoolVar(&yes, "yes", false, "confirm: the node is powered off or rebooted")
	cmd.Flags().StringVar(&action, "action", fence.ActionReboot, "reboot or off")
	cmd.Flags().StringVar(&reason, "reason", "", "why (recorded in the event log)")
	cmd.Flags().DurationVar(&wait, "wait", 2*time.Minute, "wait this long for the outcome (0: do not wait)")
	cmd.AddCommand(fenceDeviceCmd(f), fenceLevelCmd(f), fenceStatusCmd(f), fenceTestCmd(f))
	return cmd
}

func describeRecord(r fence.Record) string {
	switch r.State {
	case fence.StateFenced:
		how := "by its lease (self-fence)"
		if r.Method == fence.MethodDevice {
			how = fmt.Sprintf("by level %d (%s)", r.Level, strings.Join(r.Devices, ", "))
		}
		return fmt.Sprintf("node %s fenced %s at %s", r.Node, how, r.Confirmed.In(displayLoc).Format("2006-01-02 15:04:05"))
	case fence.StateFailed:
		return fmt.Sprintf("fencing of node %s FAILED (attempt %d): %s", r.Node, r.Attempts, r.LastError)
	}
	return fmt.Sprintf("node %s: fencing %s (%s)", r.Node, r.State, r.Reason)
}

func fenceDeviceCmd(f *apiFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "device", Short: "Add, delete and list fence devices"}
	var (
		agentName, hostArg string
		params, hostMap    []string
		nodes              string
		timeout            time.Duration
	)
	add := &cobra.Command{
		Use:   "add NAME --agent fence_AGENT [--param KEY=VALUE ...]",
		Short: "Add a fence device (its parameters are checked against the agent's metadata)",
		Example: `  hacs fence device add dummy --agent fence_dummy --param type=file --nodes n1,n2
  hacs fence device add pdu --agent fence_apc_snmp --param ip=10.0.9.5 --host-map n1:3,n2:4`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d := fence.Device{Name: args[0], Agent: agentName, HostArgument: hostArg, Timeout: cluster.Duration(timeout), Params: map[string]string{}}
			for _, p := range params {
				k, v, ok := strings.Cut(p, "=")
				if !ok || k == "" {
					return usagef("--param %q: give KEY=VALUE", p)
				}
				d.Params[k] = v
			}
			for _, m := range hostMap {
				for _, e := range strings.Split(m, ",") {
					n, p, ok := strings.Cut(strings.TrimSpace(e), ":")
					if !ok || n == "" || p == "" {
						return usagef("--host-map %q: give NODE:PLUG[,NODE:PLUG...]", e)
					}
					if d.HostMap == nil {
						d.HostMap = map[string]string{}
					}
					d.HostMap[n] = p
				}
			}
			for _, n := range strings.Split(nodes, ",") {
				if n = strings.TrimSpace(n); n != "" {
					d.Nodes = append(d.Nodes, n)
				}
			}
			if err := d.Validate(); err != nil {
				return usagef("%v", err)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 60*time.Second)
			defer cancel()
			var out fence.Device
			if err := f.client().do(ctx, "POST", "/v1/fence/devices", d, &out); err != nil {
				return err
			}
			return f.print(cmd, out, func(w io.Writer) { fmt.Fprintf(w, "fence device %s (%s) added\n", out.Name, out.Agent) })
		},
	}
	add.Flags().StringVar(&agentName, "agent", "", "fence agent, such as fence_ipmilan (hacs fence device agents lists those installed)")
	add.Flags().StringArrayVar(&params, "param", nil, "agent parameter KEY=VALUE (repeatable), as in the agent's metadata")
	add.Flags().StringArrayVar(&hostMap, "host-map", nil, "NODE:PLUG[,NODE:PLUG...]: the plug (port, outlet, VM name) that fences each node")
	add.Flags().StringVar(&nodes, "nodes", "", "nodes the device can fence, comma-separated (default: those of --host-map, or any)")
	add.Flags().StringVar(&hostArg, "host-argument", "", "parameter that carries the plug (default: plug or port, from the metadata; none: send no plug)")
	add.Flags().DurationVar(&timeout, "timeout", 0, "bound of each action of the agent (default 60s); a hung agent is killed")
	add.MarkFlagRequired("agent")

	del := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a fence device (refused while a level uses it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			var out map[string]string
			if err := f.client().do(ctx, "DELETE", "/v1/fence/devices/"+url.PathEscape(args[0]), nil, &out); err != nil {
				return err
			}
			return f.print(cmd, out, func(w io.Writer) { fmt.Fprintf(w, "fence device %s deleted\n", args[0]) })
		},
	}
	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the fence devices",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			var ds []fence.Device
			if err := f.client().do(ctx, "GET", "/v1/fence/devices", nil, &ds); err != nil {
				return err
			}
			return f.print(cmd, ds, func(w io.Writer) { writeDeviceTable(w, ds) })
		},
	}
	agents := &cobra.Command{
		Use:   "agents",
		Short: "List the fence agents installed on the agent asked",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			var out struct {
				Node   string   `json:"node"`
				Agents []string `json:"agents"`
			}
			if err := f.client().do(ctx, "GET", "/v1/fence/agents", nil, &out); err != nil {
				return err
			}
			return f.print(cmd, out, func(w io.Writer) {
				fmt.Fprintf(w, "fence agents on %s (%d):\n%s\n", out.Node, len(out.Agents), strings.Join(out.Agents, " "))
			})
		},
	}
	cmd.AddCommand(add, del, list, agents)
	return cmd
}

func writeDeviceTable(w io.Writer, ds []fence.Device) {
	fmt.Fprintln(w, "DEVICE\tAGENT\tNODES\tPARAMETERS\tTIMEOUT")
	for _, d := range ds {
		nodes := strings.Join(d.Nodes, ",")
		if len(d.HostMap) > 0 {
			var hm []string
			for n, p := range d.HostMap {
				hm = append(hm, n+":"+p)
			}
			sort.Strings(hm)
			nodes = strings.Trim(nodes+" "+strings.Join(hm, ","), " ")
		}
		var ps []string
		for k, v := range d.Params {
			if strings.Contains(k, "passw") || strings.Contains(k, "secret") || strings.Contains(k, "key") {
				v = "***"
			}
			ps = append(ps, k+"="+v)
		}
		sort.Strings(ps)
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%v\n", d.Name, d.Agent, orDash(nodes), orDash(strings.Join(ps, " ")), d.ActionTimeout())
	}
}

func fenceLevelCmd(f *apiFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "level", Short: "Add, delete and list a node's fence levels (tried in order; every device of a level must succeed)"}
	var index int
	add := &cobra.Command{
		Use:   "add NODE DEVICE[,DEVICE...]",
		Short: "Add a fence level to a node (appended, or at --index)",
		Example: `  hacs fence level add n1 ipmi-n1
  hacs fence level add n1 pdu-a,pdu-b`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var devs []string
			for _, d := range strings.Split(args[1], ",") {
				if d = strings.TrimSpace(d); d != "" {
					devs = append(devs, d)
				}
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			var out fence.Levels
			if err := f.client().do(ctx, "POST", "/v1/fence/levels/"+url.PathEscape(args[0]), fence.LevelRequest{Devices: devs, Index: index}, &out); err != nil {
				return err
			}
			return f.print(cmd, out, func(w io.Writer) { writeLevels(w, []fence.Levels{out}) })
		},
	}
	add.Flags().IntVar(&index, "index", 0, "insert as this level (1 is tried first; default: last)")
	del := &cobra.Command{
		Use:   "delete NODE LEVEL",
		Short: "Delete a node's fence level (by number)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := strconv.Atoi(args[1]); err != nil {
				return usagef("LEVEL %q: give the level's number (hacs fence level list %s)", args[1], args[0])
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			var out fence.Levels
			if err := f.client().do(ctx, "DELETE", "/v1/fence/levels/"+url.PathEscape(args[0])+"/"+args[1], nil, &out); err != nil {
				return err
			}
			return f.print(cmd, out, func(w io.Writer) { writeLevels(w, []fence.Levels{out}) })
		},
	}
	list := &cobra.Command{
		Use:     "list [NODE]",
		Aliases: []string{"ls"},
		Short:   "List the fence levels (of one node, or all)",
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			var ls []fence.Levels
			if len(args) == 1 {
				var l fence.Levels
				if err := f.client().do(ctx, "GET", "/v1/fence/levels/"+url.PathEscape(args[0]), nil, &l); err != nil {
					return err
				}
				ls = []fence.Levels{l}
			} else if err := f.client().do(ctx, "GET", "/v1/fence/levels", nil, &ls); err != nil {
				return err
			}
			return f.print(cmd, ls, func(w io.Writer) { writeLevels(w, ls) })
		},
	}
	cmd.AddCommand(add, del, list)
	return cmd
}

func writeLevels(w io.Writer, ls []fence.Levels) {
	fmt.Fprintln(w, "NODE\tLEVEL\tDEVICES")
	for _, l := range ls {
		fmt.Fprintf(w, "%s\t0\t(its lease: self-fence%s)\n", l.Node, map[bool]string{true: ", alone only without levels", false: ""}[len(l.Levels) > 0])
		for i, devs := range l.Levels {
			fmt.Fprintf(w, "%s\t%d\t%s\n", l.Node, i+1, strings.Join(devs, ", "))
		}
	}
}

func fenceStatusCmd(f *apiFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Where fencing of each node stands, the devices and levels",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			var st fence.Status
			if err := f.client().do(ctx, "GET", "/v1/fence", nil, &st); err != nil {
				return err
			}
			return f.print(cmd, st, func(w io.Writer) { writeFenceStatus(w, st) })
		},
	}
}

func writeFenceStatus(w io.Writer, st fence.Status) {
	fmt.Fprintf(w, "Fencing by lease: confirmed %v (grace) after a lost node's lease ended (lease TTL %v, safety margin %v)\n\n",
		time.Duration(st.Grace), time.Duration(st.LeaseTTL), time.Duration(st.SafetyMargin))
	writeFenceRecords(w, st.Records)
	fmt.Fprintln(w)
	writeDeviceTable(w, st.Devices)
	fmt.Fprintln(w)
	writeLevels(w, st.Levels)
}

func writeFenceRecords(w io.Writer, recs []fence.Record) {
	fmt.Fprintln(w, "NODE\tSTATE\tBY\tATTEMPTS\tSINCE\tREASON / ERROR")
	if len(recs) == 0 {
		fmt.Fprintln(w, "(no node fenced yet)\t\t\t\t\t")
	}
	for _, r := range recs {
		by := "-"
		switch {
		case r.Method == fence.MethodLease:
			by = "lease"
		case r.Method == fence.MethodDevice && r.Level > 0:
			by = fmt.Sprintf("level %d (%s)", r.Level, strings.Join(r.Devices, ","))
		}
		when := r.Requested
		if !r.Confirmed.IsZero() {
			when = r.Confirmed
		}
		msg := r.Reason
		if r.LastError != "" && r.State != fence.StateFenced {
			msg = r.LastError
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\n", r.Node, r.State, by, r.Attempts, when.In(displayLoc).Format("2006-01-02 15:04:05"), msg)
	}
}

func fenceTestCmd(f *apiFlags) *cobra.Command {
	var statusOf string
	var list bool
	cmd := &cobra.Command{
		Use:   "test DEVICE [--status NODE | --list]",
		Short: "Check a fence device without powering anything off: monitor (default), a node's plug status, or the plugs it lists",
		Example: `  hacs fence test ipmi-n1
  hacs fence test pdu --status n2
  hacs fence test pdu --list`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			q := url.Values{}
			switch {
			case statusOf != "" && list:
				return usagef("--status and --list exclude each other")
			case statusOf != "":
				q.Set("action", fence.ActionStatus)
				q.Set("node", statusOf)
			case list:
				q.Set("action", fence.ActionList)
			}
			path := "/v1/fence/devices/" + url.PathEscape(args[0]) + "/test"
			if len(q) > 0 {
				path += "?" + q.Encode()
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Minute)
			defer cancel()
			var tr fence.TestResult
			if err := f.client().do(ctx, "POST", path, nil, &tr); err != nil {
				return err
			}
			if err := f.print(cmd, tr, func(w io.Writer) {
				if !tr.OK {
					return
				}
				switch tr.Result.Action {
				case fence.ActionStatus:
					state := "on"
					if tr.Result.Off {
						state = "off"
					}
					fmt.Fprintf(w, "node %s is %s (plug %s, asked by %s on %s)\n", statusOf, state, tr.Result.Plug, tr.Result.Agent, tr.Node)
				case fence.ActionList:
					fmt.Fprint(w, tr.Result.Stdout)
				default:
					fmt.Fprintf(w, "fence device %s answers (monitor by %s on %s, %v)\n", args[0], tr.Result.Agent, tr.Node, tr.Result.Took.Round(time.Millisecond))
				}
			}); err != nil {
				return err
			}
			if !tr.OK {
				return fmt.Errorf("fence device %s: %s (run on %s)", args[0], tr.Error, tr.Node)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&statusOf, "status", "", "ask the device whether NODE's plug is on or off (action status)")
	cmd.Flags().BoolVar(&list, "list", false, "list the plugs the device knows (action list)")
	return cmd
}
