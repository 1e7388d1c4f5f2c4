// Package cli holds the hacs command tree (cobra): one file per command
// group, each a thin layer over the internal packages that do the work.
package cli

import (
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// Version is set at build time with -ldflags "-X ...cli.Version=...".
var Version = "dev"

// Main runs the command line and returns the process exit code.
func Main(args []string) int {
	root := newRoot()
	root.SetArgs(args)
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "hacs:", err)
		return 1
	}
	return 0
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
	root.AddCommand(newServeCmd(), newReplicaCmd(), newPoolCmd(), newAgentCmd(), newVolumeCmd("volume"), newDemoCmd())
	return root
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
	var v float64
	if _, err := fmt.Sscanf(s, "%g", &v); err != nil || s == "" {
		return 0, fmt.Errorf("invalid size %q: want a number with an optional unit K, M, G, T (binary)", orig)
	}
	if v <= 0 || v*mult > 1<<62 {
		return 0, fmt.Errorf("invalid size %q: must be positive and below 4 EiB", orig)
	}
	n := int64(v * mult)
	if float64(n) != v*mult {
		return 0, fmt.Errorf("invalid size %q: not a whole number of bytes", orig)
	}
	return n, nil
}
