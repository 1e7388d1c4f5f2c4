package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/hacs/hacs/internal/cluster"
)

// clusterRotateCACmd starts, follows and finishes a rotation of the
// cluster CA.
func clusterRotateCACmd(f *apiFlags) *cobra.Command {
	var finish, status, noWait bool
	var caOut string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "rotate-ca",
		Short: "Replace the cluster CA without downtime (staged; --status, --finish)",
		Long: `Replace the cluster certificate authority without interrupting any link.

Without flags, start a rotation: a new CA is created and published; every
member adds it to what it trusts (both CAs are trusted); once all have done
so, every node has its own key certified by the new CA and uses that
certificate from its next TLS handshake on, sent with a certificate of the
new CA signed by the old one, so that whoever still trusts only the old CA
accepts it. The command waits until every member runs a certificate of the
new CA (unless --no-wait).

Then give the new CA to the clients (--ca-out writes the bundle of both CAs
now, and the new CA after --finish; without --ca-file, $HACS_CA_FILE and
--ca-out, the ca.crt and ca-cert.pem of the client config directory are
updated; see docs/SECURITY.md) and run
--finish: every member stops trusting the old CA, and the certificates
the old CA signed are refused. Every member must take part: start or
remove offline nodes first. --status shows where a rotation stands.`,
		Example: `  hacs cluster rotate-ca --cluster 10.0.0.1:7700 --ca-out ~/.config/hacs/ca.crt
  hacs cluster rotate-ca --status
  hacs cluster rotate-ca --finish --ca-out ~/.config/hacs/ca.crt`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if finish && status {
				return usagef("--finish and --status exclude each other")
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout+15*time.Second)
			defer cancel()
			c, _, err := f.client().pin(ctx)
			if err != nil {
				return err
			}
			var st cluster.CARotationStatus
			switch {
			case status:
				if err := c.do(ctx, "GET", "/v1/pki/rotate", nil, &st); err != nil {
					return err
				}
				return f.print(cmd, st, func(w io.Writer) { printRotation(w, &st) })
			case finish:
				err = c.do(ctx, "POST", "/v1/pki/rotate", map[string]bool{"finish": true}, &st)
			default:
				err = c.do(ctx, "POST", "/v1/pki/rotate", map[string]bool{}, &st)
			}
			if err != nil {
				return err
			}
			want := "reissued"
			if finish {
				want = "finished"
			}
			if !noWait {
				deadline := time.Now().Add(timeout)
				last := ""
				for !rotationDone(&st, want) {
					if line := rotationProgress(&st); line != last && !f.asJSON {
						fmt.Fprintln(cmd.ErrOrStderr(), line)
						last = line
					}
					if time.Now().After(deadline) {
						return fmt.Errorf("not done after %v: %s (see hacs cluster rotate-ca --status)", timeout, st.Next)
					}
					select {
					case <-ctx.Done():
						return ctx.Err()
					case <-time.After(500 * time.Millisecond):
					}
					if err := c.do(ctx, "GET", "/v1/pki/rotate", nil, &st); err != nil {
						return err
					}
				}
			}
			var outs []string
			if caOut != "" {
				outs = append(outs, caOut)
			} else if !noWait && !status && f.caFile == "" && os.Getenv("HACS_CA_FILE") == "" {
				// the CLI's own credentials in the client config
				// directory follow the rotation
				for _, name := range []string{cluster.CACertFile, cluster.ClientCAFile} {
					p := filepath.Join(clientConfigDir(), name)
					if _, err := os.Stat(p); err == nil && clientConfigDir() != "" {
						outs = append(outs, p)
					}
				}
			}
			for _, o := range outs {
				if st.Trust == "" {
					break
				}
				if err := os.WriteFile(o, []byte(st.Trust), 0o644); err != nil {
					return fmt.Errorf("writing the trusted CA certificate(s) to %s: %w", o, err)
				}
			}
			if err := f.print(cmd, st, func(w io.Writer) { printRotation(w, &st) }); err != nil {
				return err
			}
			if len(outs) > 0 && st.Trust != "" && !f.asJSON {
				fmt.Fprintf(cmd.OutOrStdout(), "wrote the trusted CA certificate(s) to %s\n", strings.Join(outs, ", "))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&finish, "finish", false, "finish the rotation: stop trusting the old CA (every member must run a certificate of the new CA)")
	cmd.Flags().BoolVar(&status, "status", false, "show the current (or last) CA rotation")
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "return once the step is started, without waiting for every member")
	cmd.Flags().StringVar(&caOut, "ca-out", "", "write the CA certificate(s) clients should trust now to this file (both CAs during a rotation, the new one after --finish); default: update ca.crt and ca-cert.pem of the client config directory when the CLI uses them")
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "how long to wait for every member")
	return cmd
}

// rotationDone reports whether every member acknowledged step want.
func rotationDone(st *cluster.CARotationStatus, want string) bool {
	if st.Rotation == nil {
		return true
	}
	rank := map[string]int{"trust": 1, "reissued": 2, "finished": 3}
	for _, n := range st.Nodes {
		if rank[n.Ack] < rank[want] {
			return false
		}
	}
	return true
}

func rotationProgress(st *cluster.CARotationStatus) string {
	if st.Rotation == nil {
		return ""
	}
	var parts []string
	for _, n := range st.Nodes {
		a := n.Ack
		if a == "" {
			a = "-"
		}
		parts = append(parts, n.Name+"="+a)
	}
	return fmt.Sprintf("rotation %s: phase %s: %s", st.Rotation.ID, st.Rotation.Phase, strings.Join(parts, " "))
}

func printRotation(w io.Writer, st *cluster.CARotationStatus) {
	r := st.Rotation
	if r == nil {
		fmt.Fprintf(w, "%s\n", st.Next)
		return
	}
	fmt.Fprintf(w, "ROTATION\tPHASE\tSTARTED\tBY\n")
	fmt.Fprintf(w, "%s\t%s\t%s\t%s\n\n", r.ID, r.Phase, r.StartedAt.Format(time.RFC3339), r.StartedBy)
	fmt.Fprintf(w, "NODE\tONLINE\tSTEP DONE\tCERTIFICATE SERIAL\n")
	for _, n := range st.Nodes {
		a := n.Ack
		if a == "" {
			a = "-"
		}
		fmt.Fprintf(w, "%s\t%v\t%s\t%s\n", n.Name, n.Online, a, n.Serial)
	}
	if len(st.OldClientCerts) > 0 {
		fmt.Fprintf(w, "\nexport client certificates of the old CA: %s\n", strings.Join(st.OldClientCerts, ", "))
	}
	fmt.Fprintf(w, "\nnext: %s\n", st.Next)
}
