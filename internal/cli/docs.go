package cli

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
)

// WriteReference writes the command reference (docs/CLI.md) from the
// command tree itself: usage, description, examples and flags of every
// visible command.
func WriteReference(w io.Writer) {
	fmt.Fprintln(w, "# hacs command reference")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Generated from the command tree by `go test ./internal/cli -run TestReference -update`; every command also has `--help`.")
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Hidden || c.Name() == "help" || c.Name() == "completion" {
			return
		}
		if c.Runnable() || c.HasAvailableSubCommands() {
			fmt.Fprintf(w, "\n## %s\n\n%s\n", c.CommandPath(), c.Short)
			if c.Long != "" {
				fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(c.Long))
			}
			fmt.Fprintf(w, "\n```\n%s\n```\n", c.UseLine())
			if c.Aliases != nil {
				fmt.Fprintf(w, "\nAliases: %s\n", strings.Join(c.Aliases, ", "))
			}
			if c.Example != "" {
				fmt.Fprintf(w, "\nExamples:\n\n```\n%s\n```\n", strings.TrimRight(c.Example, "\n"))
			}
			if fl := c.LocalFlags().FlagUsages(); strings.TrimSpace(fl) != "" {
				fmt.Fprintf(w, "\nFlags:\n\n```\n%s```\n", fl)
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRoot())
}
