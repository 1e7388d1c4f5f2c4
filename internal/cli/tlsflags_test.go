package cli

import (
	"os"
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
	psk := filepath.Join(dir, "keys.psk")
	if err := os.WriteFile(psk, []byte("alice:000102030405060708090a0b0c0d0e0f\nbob:0f0e0d0c0b0a09080706050403020100\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	badPSK := filepath.Join(dir, "bad.psk")
	if err := os.WriteFile(badPSK, []byte("alice:not-hex\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		f       tlsServerFlags
		want    nbd.TLSPolicy
		tls     bool
		psk     int // identities loaded
		wantErr string
	}{
		{"nothing", tlsServerFlags{}, nbd.TLSOff, false, 0, ""},
		{"off", tlsServerFlags{mode: "off"}, nbd.TLSOff, false, 0, ""},
		{"certificate alone turns it on", tlsServerFlags{dir: srv}, nbd.TLSAllowed, true, 0, ""},
		{"require", tlsServerFlags{mode: "require", dir: srv}, nbd.TLSRequired, true, 0, ""},
		{"files", tlsServerFlags{mode: "on", cert: filepath.Join(srv, "server-cert.pem"), key: filepath.Join(srv, "server-key.pem")}, nbd.TLSAllowed, true, 0, ""},
		{"mtls", tlsServerFlags{mode: "on", dir: srv, verifyPeer: true}, nbd.TLSAllowed, true, 0, ""},
		{"on without certificate", tlsServerFlags{mode: "on"}, 0, false, 0, "needs a certificate"},
		{"off with certificate", tlsServerFlags{mode: "off", dir: srv}, 0, false, 0, "certificate or pre-shared key options given"},
		{"bad mode", tlsServerFlags{mode: "maybe"}, 0, false, 0, "unknown TLS policy"},
		{"empty dir", tlsServerFlags{mode: "on", dir: dir}, 0, false, 0, "no server-cert.pem"},
		{"verify without CA", tlsServerFlags{mode: "on", cert: filepath.Join(srv, "server-cert.pem"), key: filepath.Join(srv, "server-key.pem"), verifyPeer: true}, 0, false, 0, "needs the CA"},
		{"psk alone turns it on", tlsServerFlags{psk: psk}, nbd.TLSAllowed, false, 2, ""},
		{"psk require", tlsServerFlags{mode: "require", psk: psk}, nbd.TLSRequired, false, 2, ""},
		{"psk and certificate", tlsServerFlags{mode: "require", psk: psk, dir: srv}, nbd.TLSRequired, true, 2, ""},
		{"psk off", tlsServerFlags{mode: "off", psk: psk}, 0, false, 0, "pre-shared key options given"},
		{"psk missing file", tlsServerFlags{mode: "on", psk: filepath.Join(dir, "none.psk")}, 0, false, 0, "--tls-psk"},
		{"psk bad file", tlsServerFlags{mode: "on", psk: badPSK}, 0, false, 0, "bad.psk"},
		{"psk with verify-peer", tlsServerFlags{mode: "on", psk: psk, verifyPeer: true}, 0, false, 0, "needs certificates"},
		{"cert without key", tlsServerFlags{mode: "on", cert: filepath.Join(srv, "server-cert.pem")}, 0, false, 0, "both"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, keys, policy, err := tc.f.config()
			if !checkErr(t, err, tc.wantErr) {
				return
			}
			if policy != tc.want || (cfg != nil) != tc.tls || len(keys) != tc.psk {
				t.Fatalf("policy %v config %v keys %d, want %v %v %d", policy, cfg != nil, len(keys), tc.want, tc.tls, tc.psk)
			}
		})
	}
}

func TestTLSClientPSKFlags(t *testing.T) {
	dir := t.TempDir()
	two := filepath.Join(dir, "two.psk")
	one := filepath.Join(dir, "one.psk")
	if err := os.WriteFile(two, []byte("alice:000102030405060708090a0b0c0d0e0f\nbob:0f0e0d0c0b0a09080706050403020100\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(one, []byte("carol:000102030405060708090a0b0c0d0e0f\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		f        tlsClientFlags
		identity string // "" = no PSK configuration
		wantErr  string
	}{
		{"nothing", tlsClientFlags{}, "", ""},
		{"only identity", tlsClientFlags{psk: one}, "carol", ""},
		{"chosen", tlsClientFlags{psk: two, user: "bob"}, "bob", ""},
		{"must choose", tlsClientFlags{psk: two}, "", "choose one with --tls-username"},
		{"unknown user", tlsClientFlags{psk: two, user: "eve"}, "", "no such identity"},
		{"user without file", tlsClientFlags{user: "bob"}, "", "needs --tls-psk"},
		{"with certificates", tlsClientFlags{psk: one, ca: "x.pem"}, "", "exclusive"},
		{"missing file", tlsClientFlags{psk: filepath.Join(dir, "none")}, "", "--tls-psk"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := tc.f.pskConfig()
			if !checkErr(t, err, tc.wantErr) {
				return
			}
			if got := ""; cfg != nil {
				got = cfg.Identity
				if got != tc.identity {
					t.Fatalf("identity %q, want %q", got, tc.identity)
				}
			} else if tc.identity != "" {
				t.Fatalf("no PSK configuration, want identity %q", tc.identity)
			}
		})
	}
}

// checkErr fails the test unless err contains want or, where want is "",
// err is nil; it tells whether the test case goes on (no error wanted).
func checkErr(t *testing.T, err error, want string) bool {
	t.Helper()
	if want != "" {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("err %v, want %q", err, want)
		}
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return true
}
