package agent

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/hacs/hacs/internal/nbd"
)

func TestParseGrant(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{"vmhost1", "vmhost1", ""},
		{"vm.host_2-a", "vm.host_2-a", ""},
		{"psk:alice", "psk:alice", ""},
		{"psk:Alice@x:y", "psk:Alice@x:y", ""},
		{"VMHOST", "", "not an export client certificate name"},
		{"-x", "", "not an export client certificate name"},
		{"", "", "not an export client certificate name"},
		{"psk:", "", "no pre-shared key identity"},
		{"psk:a b", "", "without spaces or commas"},
		{"psk:a,b", "", "without spaces or commas"},
		{"psk:" + strings.Repeat("a", 129), "", "at most 128 bytes"},
	} {
		got, err := ParseGrant(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseGrant(%q) = %q, %v; want error containing %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseGrant(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestApplyGrants(t *testing.T) {
	for _, tc := range []struct {
		name string
		cur  []string
		req  GrantsRequest
		want []string // nil: every authenticated client
		err  string
	}{
		{"grant restricts a default volume", nil, GrantsRequest{Op: "grant", Clients: []string{"b", "a"}}, []string{"a", "b"}, ""},
		{"grant adds, sorted, no duplicates", []string{"b"}, GrantsRequest{Op: "grant", Clients: []string{"a", "b", "psk:c"}}, []string{"a", "b", "psk:c"}, ""},
		{"grant all returns to the default", []string{"a"}, GrantsRequest{Op: "grant", All: true}, nil, ""},
		{"ungrant one", []string{"a", "b"}, GrantsRequest{Op: "ungrant", Clients: []string{"a"}}, []string{"b"}, ""},
		{"ungrant the last leaves nodes only", []string{"a"}, GrantsRequest{Op: "ungrant", Clients: []string{"a"}}, []string{}, ""},
		{"ungrant all", []string{"a", "b"}, GrantsRequest{Op: "ungrant", All: true}, []string{}, ""},
		{"ungrant all of a default volume", nil, GrantsRequest{Op: "ungrant", All: true}, []string{}, ""},
		{"ungrant a client not granted", []string{"a"}, GrantsRequest{Op: "ungrant", Clients: []string{"x"}}, nil, "client x is not granted volume vm1 (it grants: a)"},
		{"ungrant from a default volume", nil, GrantsRequest{Op: "ungrant", Clients: []string{"a"}}, nil, "grants no client by name"},
		{"unknown op", nil, GrantsRequest{Op: "allow", Clients: []string{"a"}}, nil, `op "allow"`},
		{"clients and all", nil, GrantsRequest{Op: "grant", Clients: []string{"a"}, All: true}, nil, "not both"},
		{"nothing", nil, GrantsRequest{Op: "grant"}, nil, "name the clients"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cur := slices.Clone(tc.cur)
			got, err := applyGrants("vm1", cur, tc.req)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, %v; want error containing %q", got, err, tc.err)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) || (got == nil) != (tc.want == nil) {
				t.Fatalf("got %#v, %v; want %#v", got, err, tc.want)
			}
			if !slices.Equal(cur, tc.cur) {
				t.Fatalf("the current grants were changed in place: %v", cur)
			}
		})
	}
}

// TestGrantsJSON: absent, empty and listed grants survive the store's
// JSON (absent and empty mean different things).
func TestGrantsJSON(t *testing.T) {
	for _, tc := range []struct {
		grants []string
		json   string
	}{
		{nil, ""},
		{[]string{}, `"grants":[]`},
		{[]string{"a", "psk:b"}, `"grants":["a","psk:b"]`},
	} {
		b, err := json.Marshal(Spec{Name: "v", Grants: tc.grants})
		if err != nil {
			t.Fatal(err)
		}
		if tc.json == "" && strings.Contains(string(b), "grants") || tc.json != "" && !strings.Contains(string(b), tc.json) {
			t.Errorf("%#v encoded as %s", tc.grants, b)
		}
		var back Spec
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		if (back.Grants == nil) != (tc.grants == nil) || !slices.Equal(back.Grants, tc.grants) {
			t.Errorf("%#v came back as %#v", tc.grants, back.Grants)
		}
		if grantsKey(back.Grants) != grantsKey(tc.grants) {
			t.Errorf("grantsKey changed across JSON for %#v", tc.grants)
		}
	}
	if grantsKey(nil) == grantsKey([]string{}) {
		t.Fatal("grantsKey does not tell every client from none")
	}
}

func hacsCert(t *testing.T, cn, uri string) *x509.Certificate {
	t.Helper()
	c := &x509.Certificate{Subject: pkix.Name{CommonName: cn}}
	if uri != "" {
		u, err := url.Parse(uri)
		if err != nil {
			t.Fatal(err)
		}
		c.URIs = []*url.URL{u}
	}
	return c
}

func TestGrantCheck(t *testing.T) {
	const cid = "0123456789abcdef"
	node := hacsCert(t, "n2", "hacs://"+cid+"/node/4f2a")
	vmhost1 := hacsCert(t, "export client vmhost1", "hacs://"+cid+"/client/vmhost1")
	vmhost2 := hacsCert(t, "export client vmhost2", "hacs://"+cid+"/client/vmhost2")
	foreign := hacsCert(t, "export client vmhost1", "hacs://fedcba9876543210/client/vmhost1")
	plain := hacsCert(t, "someone", "")
	if grantCheck(cid, "vm1", nil) != nil {
		t.Fatal("a volume without grants has an Authorize")
	}
	for _, tc := range []struct {
		name   string
		grants []string
		peer   nbd.Peer
		err    string // "" = admitted
	}{
		{"granted certificate", []string{"vmhost1"}, nbd.Peer{Cert: vmhost1}, ""},
		{"ungranted certificate", []string{"vmhost1"}, nbd.Peer{Cert: vmhost2}, "client vmhost2 is not granted volume vm1 (an admin grants it with `hacs volume grant vm1 vmhost2`)"},
		{"granted psk identity", []string{"psk:alice"}, nbd.Peer{PSKIdentity: "alice"}, ""},
		{"ungranted psk identity", []string{"psk:alice"}, nbd.Peer{PSKIdentity: "bob"}, "client psk:bob is not granted volume vm1"},
		{"psk identity named like a certificate", []string{"alice"}, nbd.Peer{PSKIdentity: "alice"}, "client psk:alice is not granted"},
		{"certificate named like a psk identity", []string{"psk:vmhost1"}, nbd.Peer{Cert: vmhost1}, "client vmhost1 is not granted"},
		{"node certificate, no grants", []string{}, nbd.Peer{Cert: node}, ""},
		{"node certificate", []string{"vmhost1"}, nbd.Peer{Cert: node}, ""},
		{"nobody granted", []string{}, nbd.Peer{Cert: vmhost1}, "client vmhost1 is not granted"},
		{"another cluster's certificate", []string{"vmhost1"}, nbd.Peer{Cert: foreign}, "of no export client of this cluster"},
		{"a certificate of no hacs cluster", []string{"vmhost1"}, nbd.Peer{Cert: plain}, "of no export client of this cluster"},
		{"unauthenticated", []string{"vmhost1"}, nbd.Peer{}, "not authenticated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := grantCheck(cid, "vm1", tc.grants)(tc.peer)
			if tc.err == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("got %v, want an error containing %q", err, tc.err)
			}
		})
	}
}

func TestGrantsString(t *testing.T) {
	for _, tc := range []struct {
		grants []string
		want   string
	}{
		{nil, "every authenticated client"},
		{[]string{}, "none (the cluster's nodes only)"},
		{[]string{"a", "psk:b"}, "a, psk:b"},
	} {
		if got := GrantsString(tc.grants); got != tc.want {
			t.Errorf("GrantsString(%#v) = %q, want %q", tc.grants, got, tc.want)
		}
	}
}
