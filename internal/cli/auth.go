package cli

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/hacs/hacs/internal/cluster"
)

// clusterAuthCmd manages API tokens: hacs cluster auth token create|list|revoke.
func clusterAuthCmd(f *apiFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "auth",
		Short: "API tokens and their roles (admin, operator, read-only)",
		Long: `Manage the API tokens of a cluster that runs with TLS (the default).

Every request to an agent's API is authenticated: by an API token
("Authorization: Bearer TOKEN"), by a node certificate (the agents' own
calls), or by the agent's owner-only local socket (--data-dir). A token has a
role: read-only may look, operator may also change volumes and nodes' state,
admin may do everything (tokens, removing nodes, roles, fencing).

The CLI reads its token from --token-file, $HACS_TOKEN, $HACS_TOKEN_FILE or
the file "token" in its config directory ($HACS_CONFIG_DIR, default
~/.config/hacs), and checks the agents against the cluster CA certificate from
--ca-file, $HACS_CA_FILE or "ca.crt" in that directory. The first admin token
is in DATA_DIR/admin-token on the node that created the cluster. Tokens are
stored hashed: a token is shown once, when it is created.`,
	}
	tok := &cobra.Command{Use: "token", Short: "Create, list and revoke API tokens"}
	var role string
	create := &cobra.Command{
		Use:     "create NAME --role admin|operator|read-only",
		Short:   "Create an API token (printed once; store it 0600, e.g. in ~/.config/hacs/token)",
		Example: "  hacs cluster auth token create grafana --role read-only > grafana.token",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := cluster.ParseAuthRole(role); err != nil {
				return usagef("--role: %v", err)
			}
			var out struct {
				Name  string `json:"name"`
				Role  string `json:"role"`
				Token string `json:"token"`
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			if err := f.client().do(ctx, "POST", "/v1/auth/tokens", map[string]string{"name": args[0], "role": role}, &out); err != nil {
				return err
			}
			if f.asJSON {
				return printJSON(cmd.OutOrStdout(), out)
			}
			fmt.Fprintln(cmd.OutOrStdout(), out.Token)
			return nil
		},
	}
	create.Flags().StringVar(&role, "role", "", "admin, operator or read-only (required)")
	create.MarkFlagRequired("role")
	list := &cobra.Command{
		Use:     "list",
		Short:   "List the API tokens (names, roles, who created them; never the secrets)",
		Example: "  hacs cluster auth token list --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var out []cluster.APIToken
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			if err := f.client().do(ctx, "GET", "/v1/auth/tokens", nil, &out); err != nil {
				return err
			}
			return f.print(cmd, out, func(w io.Writer) {
				fmt.Fprintln(w, "NAME\tROLE\tCREATED\tBY")
				for _, t := range out {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", t.Name, t.Role, t.CreatedAt.Format(time.RFC3339), t.CreatedBy)
				}
			})
		},
	}
	revoke := &cobra.Command{
		Use:     "revoke NAME",
		Short:   "Revoke an API token (refused from the next request on)",
		Example: "  hacs cluster auth token revoke grafana",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			if err := f.client().do(ctx, "DELETE", "/v1/auth/tokens/"+args[0], nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "token %s revoked\n", args[0])
			return nil
		},
	}
	tok.AddCommand(create, list, revoke)
	cmd.AddCommand(tok)
	return cmd
}

// clusterRotateCmd renews every node's certificate.
func clusterRotateCmd(f *apiFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "rotate-certs",
		Short: "Renew the certificate of every online node now (no restart, no downtime)",
		Long: `Ask every online node to renew its certificate: each makes a certificate
request for its own key (which never leaves it), has it signed by the cluster
CA and uses the new certificate from its next TLS handshake on. Connections
already open are not interrupted. Nodes also renew on their own once two
thirds of a certificate's validity (90 days) have passed.`,
		Example: "  hacs cluster rotate-certs --cluster 10.0.0.1:7700",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 60*time.Second)
			defer cancel()
			c, _, err := f.client().pin(ctx)
			if err != nil {
				return err
			}
			var m cluster.Membership
			if err := c.do(ctx, "GET", "/v1/nodes", nil, &m); err != nil {
				return err
			}
			failed := 0
			for _, n := range m.Nodes {
				if !n.Online {
					fmt.Fprintf(cmd.OutOrStdout(), "%s: offline, skipped (it renews when it runs again)\n", n.Name)
					continue
				}
				var out map[string]string
				if err := c.one(n.APIAddr).do(ctx, "POST", "/v1/pki/renew", nil, &out); err != nil {
					fmt.Fprintf(cmd.OutOrStdout(), "%s: FAILED: %v\n", n.Name, err)
					failed++
					continue
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: new certificate %s, valid until %s\n", n.Name, out["serial"], out["expires"])
			}
			if failed > 0 {
				return fmt.Errorf("%d node(s) could not renew their certificate", failed)
			}
			return nil
		},
	}
}
