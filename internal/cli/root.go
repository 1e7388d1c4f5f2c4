// Package cli holds the hacs command tree (cobra): one file per command
// group, each a thin layer over the internal packages that do the work.
package cli

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
)

// Version is set at build time with -ldflags "-X ...cli.Version=...".
var Version = "dev"

// Main runs the command line and returns the process exit code: 0 on
// success, 1 when the operation failed, 2 for a usage error (bad arguments
// or flags). Errors are one message on stderr.
func Main(args []string) int {
	return run(args, os.Stdout, os.Stderr)
}

func run(args []string, stdout, stderr io.Writer) int {
	root := newRoot()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteC()
	if err == nil {
		return 0
	}
	if isUsageError(err) {
		fmt.Fprintf(stderr, "hacs: %v\nRun '%s --help' for usage and examples.\n", err, cmd.CommandPath())
		return 2
	}
	fmt.Fprintln(stderr, "hacs:", err)
	return 1
}

// isUsageError tells mistakes on the command line (exit code 2) from
// failures: ours are marked; cobra's are recognised by their wording; an
// API refusing a request as malformed (400) is one too.
func isUsageError(err error) bool {
	var ue *usageError
	var ae *apiStatusError
	if errors.As(err, &ue) || errors.As(err, &ae) && ae.Code == http.StatusBadRequest {
		return true
	}
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "required flag(s)",
		"flag needs an argument", "invalid argument", "if any flags in the group", "none of the others can be"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

type globalFlags struct {
	logLevel string
}

func newRoot() *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:           "hacs",
		Short:         "High-Availability Cluster Storage: replicated block volumes over NBD",
		Long:          "hacs turns a few Linux servers into replicated, automatically failed-over block storage,\nexported over NBD and managed from one CLI.",
		Version:       Version,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(g.logLevel)); err != nil {
				return fmt.Errorf("--log-level: %q is not one of debug, info, warn, error", g.logLevel)
			}
			slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})))
			return nil
		},
	}
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	root.AddCommand(newServeCmd(), newReplicaCmd(), newPoolCmd(), newAgentCmd(), newClusterCmd(), newNodeCmd(),
		newVolumeCmd("volume"), newStorageCmd(), newEventsCmd(), newDemoCmd(), newFenceCmd(), newResourceCmd(), newConstraintCmd())
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return asUsage(err) })
	preciseArgs(root)
	return root
}

// preciseArgs walks the command tree: argument count errors name what is
// missing or extra (from the command's Use line) and are usage errors, and
// a command group given an unknown subcommand says so instead of printing
// its help.
func preciseArgs(c *cobra.Command) {
	for _, sub := range c.Commands() {
		preciseArgs(sub)
	}
	if c.HasSubCommands() && !c.Runnable() {
		c.Args = cobra.ArbitraryArgs
		c.RunE = func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return cmd.Help()
			}
			return unknownSubcommand(cmd, args[0])
		}
		return
	}
	if c.Args == nil {
		return
	}
	orig := c.Args
	c.Args = func(cmd *cobra.Command, args []string) error {
		if err := orig(cmd, args); err != nil {
			return argCountError(cmd, args, err)
		}
		return nil
	}
}

func unknownSubcommand(cmd *cobra.Command, arg string) error {
	var names []string
	for _, s := range cmd.Commands() {
		if s.IsAvailableCommand() {
			names = append(names, s.Name())
		}
	}
	msg := fmt.Sprintf("unknown command %q for %q", arg, cmd.CommandPath())
	if sug := cmd.SuggestionsFor(arg); len(sug) > 0 {
		msg += fmt.Sprintf(" (did you mean %s?)", strings.Join(sug, " or "))
	}
	return usagef("%s; its commands are %s", msg, strings.Join(names, ", "))
}

// argCountError explains a wrong number of arguments with the names of
// the command's Use line: "missing NAMES", "unexpected argument "x"".
func argCountError(cmd *cobra.Command, args []string, err error) error {
	required, optional, variadic := useArgs(cmd.Use)
	fields := strings.Fields(cmd.Use)
	path := strings.TrimPrefix(cmd.CommandPath(), cmd.Root().Name()+" ")
	usage := cmd.CommandPath()
	if len(fields) > 1 {
		usage += " " + strings.Join(fields[1:], " ")
	}
	switch {
	case len(args) < len(required):
		return usagef("%s: missing %s (usage: %s)", path, strings.Join(required[len(args):], " "), usage)
	case !variadic && len(args) > len(required)+optional:
		return usagef("%s: unexpected argument %q (usage: %s)", path, args[len(required)+optional], usage)
	}
	return usagef("%s: %v (usage: %s)", path, err, usage)
}

// parseSize reads a byte count such as 4096, 512K, 10M, 1G, 2T, 1GiB or
// 1.5G. Units are binary (K = 1024).
func parseSize(s string) (int64, error) {
	orig := s
	s = strings.TrimSpace(strings.ToUpper(s))
	s = strings.TrimSuffix(s, "B")
	s = strings.TrimSuffix(s, "I")
	mult := float64(1)
	if n := len(s); n > 0 {
		switch s[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		case 'P':
			mult = 1 << 50
		}
		if mult != 1 {
			s = s[:n-1]
		}
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || s == "" || strings.ContainsAny(s, "xXpP_") {
		return 0, usagef("invalid size %q: want a number with an optional unit K, M, G, T (binary), such as 10G", orig)
	}
	if v <= 0 || v*mult > 1<<62 {
		return 0, usagef("invalid size %q: must be positive and below 4 EiB", orig)
	}
	n := int64(v * mult)
	if float64(n) != v*mult {
		return 0, usagef("invalid size %q: not a whole number of bytes", orig)
	}
	return n, nil
}

// useArgs reads the positional arguments of a Use line such as
// "create NAMES --size SIZE [--replicas N]" or "events [NAME...]".
func useArgs(use string) (required []string, optional int, variadic bool) {
	fields := strings.Fields(use)
	for i := 1; i < len(fields); i++ {
		w := fields[i]
		switch {
		case strings.HasPrefix(w, "["):
			group := w
			for !strings.HasSuffix(fields[i], "]") && i+1 < len(fields) {
				i++
				group += " " + fields[i]
			}
			if !strings.HasPrefix(group, "[-") {
				optional++
				variadic = variadic || strings.Contains(group, "...")
			}
		case strings.HasPrefix(w, "-"):
			if i+1 < len(fields) && !strings.HasPrefix(fields[i+1], "-") && !strings.HasPrefix(fields[i+1], "[") &&
				!strings.Contains(w, "=") {
				i++ // the flag's value
			}
		case w == strings.ToUpper(w):
			if strings.Contains(w, "...") {
				variadic = true
			}
			required = append(required, strings.TrimSuffix(w, "..."))
		}
	}
	return required, optional, variadic
}
