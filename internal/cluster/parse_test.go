package cluster

import (
	"strings"
	"testing"
	"time"
)

func TestClusterParseToken(t *testing.T) {
	tok := Token{ClusterID: randomHex(8), Secret: newSecret()}
	got, err := ParseToken(" " + tok.String() + "\n")
	if err != nil || got != tok {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	for _, bad := range []string{"", "hacs1.", "hacs2." + tok.ClusterID + "." + tok.Secret, "hacs1.XYZ." + tok.Secret, "hacs1." + tok.ClusterID + ".short", tok.ClusterID + "." + tok.Secret} {
		if _, err := ParseToken(bad); err == nil || !strings.Contains(err.Error(), "malformed join token") {
			t.Errorf("ParseToken(%q): %v", bad, err)
		}
	}
}

func TestClusterParseRolesLabels(t *testing.T) {
	r, err := ParseRoles("vhost, storage,storage")
	if err != nil || len(r) != 2 || r[0] != RoleStorage || r[1] != RoleVHost {
		t.Fatalf("roles %v %v", r, err)
	}
	for _, bad := range []string{"", "disk", "witness,vhost"} {
		if _, err := ParseRoles(bad); err == nil {
			t.Errorf("roles %q accepted", bad)
		}
	}
	l, err := ParseLabels([]string{"zone=a,rack=r1", "zone=b"})
	if err != nil || l["zone"] != "b" || l["rack"] != "r1" {
		t.Fatalf("labels %v %v", l, err)
	}
	for _, bad := range []string{"zone", "=a", "Zone=a", "zone=a b"} {
		if _, err := ParseLabels([]string{bad}); err == nil {
			t.Errorf("label %q accepted", bad)
		}
	}
	for _, good := range []string{"n1", "node-1", "a.b_c", "x"} {
		if err := ValidName("node", good); err != nil {
			t.Errorf("%q: %v", good, err)
		}
	}
	for _, bad := range []string{"", "-a", "a-", "A", "a/b", strings.Repeat("a", 64)} {
		if err := ValidName("node", bad); err == nil {
			t.Errorf("name %q accepted", bad)
		}
	}
}

func TestClusterConfigDefaults(t *testing.T) {
	c := Config{DataDir: "/x"}
	if err := c.setDefaults(); err != nil {
		t.Fatal(err)
	}
	if c.LeaseTTL != 2*time.Second || c.SafetyMargin != 500*time.Millisecond || c.KeepAliveInterval != 250*time.Millisecond || c.Voters != 3 {
		t.Fatalf("defaults %+v", c)
	}
	bad := []Config{
		{},
		{DataDir: "/x", LeaseTTL: 1500 * time.Millisecond},
		{DataDir: "/x", Voters: 4},
		{DataDir: "/x", Join: "h:1"},
		{DataDir: "/x", Join: "nohost", Token: "t"},
		{DataDir: "/x", LeaseTTL: time.Second, EtcdElectionTimeout: time.Second},
		{DataDir: "/x", Name: "Bad Name"},
		{DataDir: "/x", Join: "h:1", Token: "t", EtcdEndpoints: []string{"http://e:2379"}},
	}
	for i, c := range bad {
		if err := c.setDefaults(); err == nil {
			t.Errorf("config %d accepted: %+v", i, c)
		}
	}
}
