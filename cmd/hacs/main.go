// Command hacs is the High-Availability Cluster Storage tool: the NBD export
// (hacs serve), and, as the project grows, the node agent and the cluster CLI.
package main

import (
	"os"

	"github.com/hacs/hacs/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:]))
}
