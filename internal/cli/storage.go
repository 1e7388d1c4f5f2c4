package cli

import (
	"strconv"
	"strings"

	"github.com/spf13/cobra"
)

// vhacsFlags are VHACS's `vhacs storage` short flags: one action (-c, -D,
// -l, -i, -S, -A, -p) and its options (-s, -n, -r).
type vhacsFlags struct {
	create, destroy, list, info, standby, active bool
	prefer                                       string
	size, nodes                                  string
	replicas                                     int
}

// actions in the order they are named in errors.
var vhacsActions = []struct{ flag, verb string }{
	{"-c", "create"}, {"-D", "destroy"}, {"-l", "list"}, {"-i", "info"}, {"-S", "standby"}, {"-A", "active"}, {"-p", "prefer"},
}

// toArgs maps the flags and positional arguments to the equivalent `hacs
// volume` command line (what `hacs storage` then runs). changed tells which
// flags were given.
func (v vhacsFlags) toArgs(args []string, changed func(string) bool) ([]string, error) {
	set := map[string]bool{"-c": v.create, "-D": v.destroy, "-l": v.list, "-i": v.info, "-S": v.standby, "-A": v.active, "-p": changed("prefers")}
	var given []string
	verb := ""
	for _, a := range vhacsActions {
		if set[a.flag] {
			given = append(given, a.flag)
			verb = a.verb
		}
	}
	switch {
	case len(given) == 0:
		return nil, nil // no VHACS action: not a VHACS command line
	case len(given) > 1:
		return nil, usagef("%s exclude each other: give one action", strings.Join(given, " and "))
	}
	for _, o := range []struct{ name, short string }{{"size", "-s"}, {"nodes", "-n"}, {"replicas", "-r"}} {
		if changed(o.name) && verb != "create" {
			return nil, usagef("%s (--%s) goes with -c (create), not %s (%s)", o.short, o.name, given[0], verb)
		}
	}
	want, what := 1, "NAMES"
	switch verb {
	case "list":
		want = 0
	case "info":
		what = "NAME"
	}
	switch {
	case len(args) < want:
		return nil, usagef("%s (%s) needs the volume %s, such as hacs storage %s vm1", given[0], verb, what, given[0])
	case len(args) > want && want == 0:
		return nil, usagef("%s (%s) takes no names, got %q", given[0], verb, args[0])
	case len(args) > want:
		return nil, usagef("%s (%s): unexpected argument %q (give the names as one list, such as vm1-3,vm5)", given[0], verb, args[1])
	}
	out := append([]string{verb}, args...)
	switch verb {
	case "create":
		if !changed("size") {
			return nil, usagef("-c (create) needs -s SIZE, such as hacs storage -c %s -s 10G", args[0])
		}
		out = append(out, "--size", v.size)
		if changed("nodes") {
			out = append(out, "--nodes", v.nodes)
		}
		if changed("replicas") {
			out = append(out, "--replicas", strconv.Itoa(v.replicas))
		}
	case "prefer":
		if v.prefer == "" {
			return nil, usagef("-p (prefers) needs the nodes, such as hacs storage -p node2,node1 %s", args[0])
		}
		out = []string{"prefer", v.prefer, args[0]}
	}
	return out, nil
}

// newStorageCmd is `hacs volume` under VHACS's name, taking VHACS's short
// flags as well as the subcommands.
func newStorageCmd() *cobra.Command {
	cmd := newVolumeCmd("storage")
	cmd.Short = "Alias of hacs volume for VHACS users, with VHACS's short flags (-c -s -n -D -l -i -S -A -p)"
	cmd.Long = `hacs storage is hacs volume under VHACS's name: every hacs volume subcommand
works here, and so do VHACS's short flags, one action per command:

  -c NAMES -s SIZE [-n NODES] [-r N]   create (-n: preferred nodes, most preferred first)
  -D NAMES                             destroy
  -l                                   list
  -i NAME                              info
  -S NAMES                             standby (stop serving)
  -A NAMES                             active (serve again)
  -p NODES NAMES                       prefer these nodes

Names accept the VHACS range syntax (vm1-3,vm5) and ALL where several are
allowed.`
	cmd.Example = `  hacs storage -c vm1 -s 10G -n node1,node2
  hacs storage -c vm1-3 -s 20G -r 3
  hacs storage -l
  hacs storage -i vm1 --json
  hacs storage -S vm1-3
  hacs storage -A ALL
  hacs storage -p node2,node1 vm1
  hacs storage -D vm1`
	var v vhacsFlags
	fl := cmd.Flags()
	fl.BoolVarP(&v.create, "create", "c", false, "create volumes NAMES (with -s, and -n, -r)")
	fl.BoolVarP(&v.destroy, "destroy", "D", false, "destroy volumes NAMES")
	fl.BoolVarP(&v.list, "list", "l", false, "list volumes")
	fl.BoolVarP(&v.info, "info", "i", false, "show volume NAME")
	fl.BoolVarP(&v.standby, "standby", "S", false, "stop serving volumes NAMES")
	fl.BoolVarP(&v.active, "active", "A", false, "serve volumes NAMES again")
	fl.StringVarP(&v.prefer, "prefers", "p", "", "set the preferred nodes NODES of volumes NAMES")
	fl.StringVarP(&v.size, "size", "s", "", "with -c: size, such as 10G")
	fl.StringVarP(&v.nodes, "nodes", "n", "", "with -c: preferred nodes, most preferred first")
	fl.IntVarP(&v.replicas, "replicas", "r", 2, "with -c: number of replicas")
	cmd.Args = cobra.ArbitraryArgs
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		argv, err := v.toArgs(args, cmd.Flags().Changed)
		if err != nil {
			return err
		}
		if argv == nil {
			if len(args) > 0 {
				return unknownSubcommand(cmd, args[0])
			}
			return cmd.Help()
		}
		sub, rest, err := cmd.Find(argv)
		if err != nil || sub == cmd {
			return usagef("hacs storage: no volume command for %v", argv)
		}
		if err := sub.ParseFlags(rest); err != nil {
			return asUsage(err)
		}
		pos := sub.Flags().Args()
		if err := sub.ValidateArgs(pos); err != nil {
			return err
		}
		if err := sub.ValidateRequiredFlags(); err != nil {
			return asUsage(err)
		}
		sub.SetContext(cmd.Context())
		return sub.RunE(sub, pos)
	}
	return cmd
}
