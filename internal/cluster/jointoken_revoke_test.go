package cluster

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestJoinTokenListRevoke: an admin lists the join tokens (ids, states,
// who made them; never a secret nor its hash) and revokes one before its
// expiry; a node joining with it is refused saying so, the revocation is
// an event naming who made it, and roles below admin may do neither.
func TestJoinTokenListRevoke(t *testing.T) {
	if testConfig(t, "x").Insecure {
		t.Skip("no API tokens without TLS")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := testConfig(t, "t1")
	cfg.Voters = 1
	n := startNode(t, cfg)
	api := "https://" + n.APIAddr()
	hc := caClient(t, cfg.DataDir, nil)
	b, err := os.ReadFile(filepath.Join(cfg.DataDir, AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	admin := strings.TrimSpace(string(b))
	op, err := n.CreateToken(ctx, "ops", AuthOperator, "test")
	if err != nil {
		t.Fatal(err)
	}
	ro, err := n.CreateToken(ctx, "viewer", AuthReadOnly, "test")
	if err != nil {
		t.Fatal(err)
	}
	victim, vrec, err := n.CreateJoinToken(ctx, time.Hour, 3, "alice")
	if err != nil {
		t.Fatal(err)
	}
	other, orec, err := n.CreateJoinToken(ctx, time.Hour, 1, "bob")
	if err != nil {
		t.Fatal(err)
	}

	// the list: every token (the first node's too), no secret, no hash
	code, body := apiCall(t, hc, "GET", api+"/v1/join-tokens", admin, "")
	if code != 200 {
		t.Fatalf("list: %d %s", code, body)
	}
	for _, secret := range []string{victim.Secret, other.Secret, joinKey(victim.Secret), joinKey(other.Secret)} {
		if strings.Contains(body, secret) {
			t.Fatalf("the list shows a secret or its hash:\n%s", body)
		}
	}
	var list []JoinTokenInfo
	if err := json.Unmarshal([]byte(body), &list); err != nil {
		t.Fatalf("list: %v\n%s", err, body)
	}
	byID := map[string]JoinTokenInfo{}
	for _, ti := range list {
		byID[ti.ID] = ti
	}
	if len(list) != 3 || byID[vrec.ID].State != JoinTokenValid || byID[vrec.ID].UsesLeft != 3 || byID[vrec.ID].CreatedBy != "alice" || byID[orec.ID].CreatedBy != "bob" {
		t.Fatalf("list: %+v", list)
	}
	if victim.JoinTokenID() != vrec.ID {
		t.Fatalf("JoinTokenID %s, stored as %s", victim.JoinTokenID(), vrec.ID)
	}

	// roles below admin may neither list nor revoke
	for _, tok := range []string{op, ro} {
		if code, msg := apiCall(t, hc, "GET", api+"/v1/join-tokens", tok, ""); code != 403 || !strings.Contains(msg, "needs admin") {
			t.Fatalf("list with a non-admin token: %d %s", code, msg)
		}
		if code, msg := apiCall(t, hc, "DELETE", api+"/v1/join-tokens/"+vrec.ID, tok, ""); code != 403 || !strings.Contains(msg, "needs admin") {
			t.Fatalf("revoke with a non-admin token: %d %s", code, msg)
		}
	}
	if code, msg := apiCall(t, hc, "DELETE", api+"/v1/join-tokens/"+vrec.ID, "", ""); code != 401 {
		t.Fatalf("revoke without a token: %d %s", code, msg)
	}
	// bad ids
	for _, c := range []struct {
		id   string
		code int
		want string
	}{
		{"ab", 400, "at least its first 4 characters"},
		{"zzzzzzzz", 404, "no join token zzzzzzzz"},
	} {
		if code, msg := apiCall(t, hc, "DELETE", api+"/v1/join-tokens/"+c.id, admin, ""); code != c.code || !strings.Contains(msg, c.want) {
			t.Fatalf("revoke %q: %d %s", c.id, code, msg)
		}
	}

	// revoke by a prefix of the id
	code, body = apiCall(t, hc, "DELETE", api+"/v1/join-tokens/"+vrec.ID[:6], admin, "")
	if code != 200 {
		t.Fatalf("revoke: %d %s", code, body)
	}
	var rv struct {
		Token   JoinTokenInfo `json:"token"`
		Already bool          `json:"already_revoked"`
	}
	json.Unmarshal([]byte(body), &rv)
	if rv.Token.ID != vrec.ID || rv.Token.State != JoinTokenRevoked || rv.Already || rv.Token.RevokedBy == "" {
		t.Fatalf("revoke answered %s", body)
	}
	// again: nothing changes
	code, body = apiCall(t, hc, "DELETE", api+"/v1/join-tokens/"+vrec.ID, admin, "")
	json.Unmarshal([]byte(body), &rv)
	if code != 200 || !rv.Already {
		t.Fatalf("second revoke: %d %s", code, body)
	}
	// events are written by the node's event writer, a moment later
	var evs []Event
	waitCond(t, 10*time.Second, func() bool {
		evs, _, err = ListEvents(ctx, n.Client(), EventFilter{Kind: EventJoinTokenRevoked})
		return err == nil && len(evs) > 0
	})
	if err != nil || len(evs) != 1 || evs[0].Fields["token"] != vrec.ID || evs[0].Fields["by"] != rv.Token.RevokedBy || !strings.Contains(evs[0].Fields["by"], "admin") {
		t.Fatalf("revocation events: %+v %v", evs, err)
	}
	t.Logf("event: %s", evs[0].Message)
	infos, err := n.JoinTokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, ti := range infos {
		want := JoinTokenValid
		if ti.ID == vrec.ID {
			want = JoinTokenRevoked
		}
		if ti.State != want {
			t.Fatalf("token %s (by %s) is %s, want %s", ti.ID, ti.CreatedBy, ti.State, want)
		}
	}

	// a node joining with the revoked token is refused, saying why, and
	// leaves nothing behind
	cfg2 := testConfig(t, "t2")
	cfg2.Join, cfg2.Token, cfg2.JoinTimeout = n.APIAddr(), victim.String(), 5*time.Second
	n2, err := New(cfg2)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := n2.Start(ctx); err == nil {
		n2.Stop(ctx)
		t.Fatal("a node joined with a revoked token")
	} else if !strings.Contains(err.Error(), "join token "+vrec.ID+" was revoked at") || !strings.Contains(err.Error(), "by "+rv.Token.RevokedBy) {
		t.Fatalf("join with a revoked token: %v", err)
	} else {
		t.Logf("join with a revoked token, refused in %v: %v", time.Since(start).Round(time.Millisecond), err)
	}
	if _, ok := n.Members().Node("t2"); ok {
		t.Fatal("the refused node is registered")
	}
}
