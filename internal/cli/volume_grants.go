package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/hacs/hacs/internal/agent"
)

// splitClients reads client names given as arguments, each possibly a
// comma-separated list, checking each (agent.ParseGrant).
func splitClients(args []string) ([]string, error) {
	var out []string
	for _, a := range args {
		for _, c := range strings.Split(a, ",") {
			if c = strings.TrimSpace(c); c == "" {
				continue
			}
			g, err := agent.ParseGrant(c)
			if err != nil {
				return nil, usagef("%v", err)
			}
			out = append(out, g)
		}
	}
	return out, nil
}

// volGrantCmd is hacs volume grant and ungrant.
func volGrantCmd(f *volumeFlags, op string) *cobra.Command {
	var all bool
	c := &cobra.Command{Args: cobra.MinimumNArgs(1)}
	switch op {
	case "grant":
		c.Use = "grant NAMES [CLIENTS...]"
		c.Short = "Let export clients open volumes (per-volume grants; admin)"
		c.Long = `Name the export clients that may open volumes: export client certificates
of the cluster by their name (hacs cluster auth client-cert create NAME) and
pre-shared key identities as psk:IDENTITY. Once a volume has grants, only the
granted clients and the cluster's own nodes (their node certificates:
replication, hacs volume attach --data-dir) open it; every other client is
refused by the primary with "client X is not granted volume Y". A volume
without grants (the default) admits every authenticated client of the
cluster; --all returns a volume to that default. Grants need authenticated
TLS: a volume with tls allowed or off cannot have them. Needs the admin role;
the change is recorded in the event log with who made it.`
		c.Example = `  hacs volume grant vm1 vmhost1
  hacs volume grant vm1-3 vmhost1,vmhost2 psk:backup
  hacs volume grant vm1 --all      # every authenticated client again`
	default:
		c.Use = "ungrant NAMES [CLIENTS...]"
		c.Short = "Take back export clients' grants on volumes; their open connections are cut (admin)"
		c.Long = `Remove export clients from volumes' grants (see hacs volume grant). The
primary cuts at once the open connections of a client no longer granted and
refuses its next ones; the other clients keep theirs. --all removes every
grant: only the cluster's nodes may open the volume then. A volume without
grants (every authenticated client may open it) has none to remove: grant the
clients that may instead. Needs the admin role.`
		c.Example = `  hacs volume ungrant vm1 vmhost2
  hacs volume ungrant vm1 psk:backup
  hacs volume ungrant vm1 --all    # only the cluster's nodes`
	}
	c.Flags().BoolVar(&all, "all", false, map[string]string{
		"grant":   "grant every authenticated client of the cluster (the default; removes the volume's grants list)",
		"ungrant": "remove every grant: only the cluster's nodes may open the volume",
	}[op])
	c.RunE = func(cmd *cobra.Command, args []string) error {
		clients, err := splitClients(args[1:])
		if err != nil {
			return err
		}
		if all == (len(clients) > 0) {
			return usagef("name the clients to %s (client certificate names, psk:IDENTITY), or --all", op)
		}
		names, err := f.names(cmd.Context(), args[0])
		if err != nil {
			return err
		}
		return eachName(cmd, names, func(name string) error {
			var spec agent.Spec
			req := agent.GrantsRequest{Op: op, Clients: clients, All: all}
			if err := f.client().do(cmd.Context(), "POST", "/v1/volumes/"+name+"/grants", req, &spec); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: granted to %s\n", name, agent.GrantsString(spec.Grants))
			return nil
		})
	}
	return c
}
