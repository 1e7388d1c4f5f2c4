package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/hacs/hacs/internal/cluster"
	"github.com/hacs/hacs/internal/fsutil"
)

// clusterAuthCmd manages API tokens: hacs cluster auth token create|list|revoke.
func clusterAuthCmd(f *apiFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "auth",
		Short: "API tokens and their roles (admin, operator, read-only); export client certificates",
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
	cmd.AddCommand(tok, clientCertCmd(f))
	return cmd
}

// clientCertCmd manages the export client certificates: hacs cluster auth
// client-cert create|list|revoke.
func clientCertCmd(f *apiFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "client-cert",
		Short: "Certificates that let a host (qemu, nbdinfo, nbdcopy) open the volume exports",
		Long: `In a cluster that runs with TLS (the default), a volume's NBD export admits
only clients that present a certificate of the cluster over TLS: a node's, or
an export client certificate made here. Give one to every host that opens
volumes directly (a VM host's qemu, nbdinfo, nbdcopy); hacs volume attach on
a node uses the node's own certificate.

create makes the key on this machine (it is never sent anywhere), has the
cluster CA sign a client-only certificate for it, and writes DIR/ca-cert.pem,
DIR/client-cert.pem and DIR/client-key.pem (0600): the layout of nbdinfo's
and nbdcopy's tls-certificates=DIR and qemu's
tls-creds-x509,dir=DIR,endpoint=client. The certificate opens volume exports
and nothing else (not the replication links, not etcd, not the API).

revoke NAME refuses the certificate(s) of that name from the next TLS
handshake on, on every node. A volume created with --tls allowed or off
admits anyone who reaches its port, certificate or not (see docs/SECURITY.md).`,
	}
	var out, ttl string
	create := &cobra.Command{
		Use:   "create NAME [--out DIR] [--ttl 8760h]",
		Short: "Make a key here and have the cluster sign an export client certificate for it",
		Example: `  hacs cluster auth client-cert create vmhost1 --out /etc/hacs/vmhost1
  nbdinfo 'nbds://10.0.0.1:10809/vm1?tls-certificates=/etc/hacs/vmhost1'
  qemu-system-x86_64 -object tls-creds-x509,id=tls0,dir=/etc/hacs/vmhost1,endpoint=client \
    -drive driver=nbd,host=10.0.0.1,port=10809,export=vm1,tls-creds=tls0,format=raw ...`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			dir := out
			if dir == "" {
				dir = name
			}
			var d time.Duration
			if ttl != "" {
				var err error
				if d, err = time.ParseDuration(ttl); err != nil || d <= 0 {
					return usagef("--ttl %q: want a duration such as 8760h (a year) or 720h", ttl)
				}
			}
			files := []string{filepath.Join(dir, cluster.ClientCAFile), filepath.Join(dir, cluster.ClientCertFile), filepath.Join(dir, cluster.ClientKeyFile)}
			for _, p := range files[1:] {
				if _, err := os.Stat(p); err == nil {
					return fmt.Errorf("%s exists: choose another --out directory, or remove it first", p)
				}
			}
			keyPEM, csr, err := cluster.NewClientKey(name)
			if err != nil {
				return err
			}
			body := map[string]string{"name": name, "csr": string(csr)}
			if d > 0 {
				body["ttl"] = d.String()
			}
			var resp cluster.ClientCertResponse
			ctx, cancel := context.WithTimeout(cmd.Context(), 20*time.Second)
			defer cancel()
			if err := f.client().do(ctx, "POST", "/v1/auth/client-certs", body, &resp); err != nil {
				return err
			}
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return err
			}
			for i, b := range [][]byte{[]byte(resp.CA), []byte(resp.Cert), keyPEM} {
				if err := fsutil.WriteFileAtomic(files[i], b, 0o600); err != nil {
					return fmt.Errorf("writing %s: %w", files[i], err)
				}
			}
			if f.asJSON {
				return printJSON(cmd.OutOrStdout(), map[string]any{"certificate": resp.ClientCert, "dir": dir})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "export client certificate %s (serial %s, valid until %s) written to %s\n", name, resp.Serial, resp.NotAfter.Format(time.RFC3339), dir)
			fmt.Fprintf(cmd.OutOrStdout(), "use it with: nbdinfo 'nbds://HOST:PORT/VOLUME?tls-certificates=%s'\n", dir)
			return nil
		},
	}
	create.Flags().StringVar(&out, "out", "", "directory to write ca-cert.pem, client-cert.pem and client-key.pem to (default ./NAME)")
	create.Flags().StringVar(&ttl, "ttl", "", "validity (default 8760h: a year)")
	list := &cobra.Command{
		Use:     "list",
		Short:   "List the export client certificates (valid, expired and revoked)",
		Example: "  hacs cluster auth client-cert list",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var certs []cluster.ClientCert
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			if err := f.client().do(ctx, "GET", "/v1/auth/client-certs", nil, &certs); err != nil {
				return err
			}
			now := time.Now()
			return f.print(cmd, certs, func(w io.Writer) {
				fmt.Fprintln(w, "NAME\tSERIAL\tSTATE\tEXPIRES\tCREATED BY")
				for _, c := range certs {
					state := "valid"
					switch {
					case c.RevokedAt != nil:
						state = "revoked by " + c.RevokedBy
					case c.Expired(now):
						state = "expired"
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", c.Name, c.Serial, state, c.NotAfter.Format(time.RFC3339), c.CreatedBy)
				}
			})
		},
	}
	revoke := &cobra.Command{
		Use:     "revoke NAME",
		Short:   "Revoke an export client certificate (refused from the next TLS handshake on)",
		Example: "  hacs cluster auth client-cert revoke vmhost1",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var done []cluster.ClientCert
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			if err := f.client().do(ctx, "DELETE", "/v1/auth/client-certs/"+args[0], nil, &done); err != nil {
				return err
			}
			for _, c := range done {
				fmt.Fprintf(cmd.OutOrStdout(), "export client certificate %s (serial %s) revoked\n", c.Name, c.Serial)
			}
			return nil
		},
	}
	cmd.AddCommand(create, list, revoke)
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
