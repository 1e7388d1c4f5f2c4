package cli

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/hacs/hacs/internal/nbd"
	"github.com/hacs/hacs/internal/nbd/tlstest"
)

func TestTLSServerFlags(t *testing.T) {
	dir := t.TempDir()
	ca, err := tlstest.NewCA("ca")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ca.Issue("server", tlstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := tlstest.WriteDir(filepath.Join(dir, "srv"), ca.CertPEM, "server", pair); err != nil {
		t.Fatal(err)
	}
	srv := filepath.Join(dir, "srv")
	for _, tc := range []struct {
		name    string
		f       tlsServerFlags
		want    nbd.TLSPolicy
		tls     bool
		wantErr string
	}{
		{"nothing", tlsServerFlags{}, nbd.TLSOff, false, ""},
		{"off", tlsServerFlags{mode: "off"}, nbd.TLSOff, false, ""},
		{"certificate alone turns it on", tlsServerFlags{dir: srv}, nbd.TLSAllowed, true, ""},
		{"require", tlsServerFlags{mode: "require", dir: srv}, nbd.TLSRequired, true, ""},
		{"files", tlsServerFlags{mode: "on", cert: filepath.Join(srv, "server-cert.pem"), key: filepath.Join(srv, "server-key.pem")}, nbd.TLSAllowed, true, ""},
		{"mtls", tlsServerFlags{mode: "on", dir: srv, verifyPeer: true}, nbd.TLSAllowed, true, ""},
		{"on without certificate", tlsServerFlags{mode: "on"}, 0, false, "needs a certificate"},
		{"off with certificate", tlsServerFlags{mode: "off", dir: srv}, 0, false, "certificate options given"},
		{"bad mode", tlsServerFlags{mode: "maybe"}, 0, false, "unknown TLS policy"},
		{"empty dir", tlsServerFlags{mode: "on", dir: dir}, 0, false, "no server-cert.pem"},
		{"verify without CA", tlsServerFlags{mode: "on", cert: filepath.Join(srv, "server-cert.pem"), key: filepath.Join(srv, "server-key.pem"), verifyPeer: true}, 0, false, "needs the CA"},
		{"cert without key", tlsServerFlags{mode: "on", cert: filepath.Join(srv, "server-cert.pem")}, 0, false, "both"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, policy, err := tc.f.config()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if policy != tc.want || (cfg != nil) != tc.tls {
				t.Fatalf("policy %v config %v, want %v %v", policy, cfg != nil, tc.want, tc.tls)
			}
		})
	}
}
