package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestRolesChangeApply(t *testing.T) {
	sv := []Role{RoleStorage, RoleVHost}
	cases := []struct {
		cur    []Role
		change RolesChange
		want   []Role
		err    string
	}{
		{sv, RolesChange{Remove: []Role{"storage"}}, []Role{RoleVHost}, ""},
		{[]Role{RoleVHost}, RolesChange{Add: []Role{"STORAGE"}}, sv, ""},
		{sv, RolesChange{Set: []Role{"vhost"}}, []Role{RoleVHost}, ""},
		{sv, RolesChange{Add: []Role{"vhost"}}, sv, ""},
		{[]Role{RoleVHost}, RolesChange{Add: []Role{"storage"}, Remove: []Role{"vhost"}}, []Role{RoleStorage}, ""},
		{sv, RolesChange{Remove: []Role{"storage", "vhost"}}, nil, "at least one role"},
		{sv, RolesChange{Add: []Role{"disk"}}, nil, `unknown role "disk"`},
		{sv, RolesChange{Set: []Role{"vhost"}, Add: []Role{"storage"}}, nil, "not both"},
		{sv, RolesChange{}, nil, "no change"},
		{sv, RolesChange{Set: []Role{"witness"}}, nil, "witness role is fixed"},
		{[]Role{RoleWitness}, RolesChange{Set: []Role{"storage"}}, nil, "witness role is fixed"},
		{sv, RolesChange{Add: []Role{"witness"}}, nil, "cannot be combined"},
	}
	for _, c := range cases {
		got, err := c.change.apply(c.cur)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%v %+v: err %v, want %q", c.cur, c.change, err, c.err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("%v %+v: %v %v, want %v", c.cur, c.change, got, err, c.want)
		}
	}
}

// TestNodeRolesAndToken: roles changed through the API are written to the
// node's record, logged with who changed them, kept across a restart
// without --roles and reset by one with --roles; the join token is served
// on the local socket only.
func TestNodeRolesAndToken(t *testing.T) {
	n, cfg := startSoloNode(t, "solo")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	api := n.Scheme() + "://" + n.APIAddr()

	post := func(path, body string) (int, map[string]any) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, "POST", api+path, strings.NewReader(body))
		req.Header.Set(ActorHeader, "alice@desk")
		resp, err := n.HTTPClient().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	if code, out := post("/v1/nodes/solo/roles", `{"remove": ["storage"]}`); code != 200 || out["roles"].([]any)[0] != "vhost" {
		t.Fatalf("remove storage: %d %v", code, out)
	}
	waitCond(t, 5*time.Second, func() bool {
		me, _ := n.Members().Node("solo")
		return slices.Equal(me.Roles, []Role{RoleVHost})
	})
	for _, bad := range []struct {
		path, body string
		code       int
	}{
		{"/v1/nodes/solo/roles", `{"remove": ["vhost"]}`, 400},
		{"/v1/nodes/solo/roles", `{"add": ["gpu"]}`, 400},
		{"/v1/nodes/solo/roles", `{"rolez": ["vhost"]}`, 400},
		{"/v1/nodes/solo/roles", `{"add": ["witness"]}`, 400},
		{"/v1/nodes/nobody/roles", `{"add": ["storage"]}`, 404},
	} {
		if code, out := post(bad.path, bad.body); code != bad.code || out["error"] == "" {
			t.Errorf("%s %s: %d %v, want %d with an error", bad.path, bad.body, code, out, bad.code)
		}
	}
	// the change is in the event log with its author
	waitCond(t, 5*time.Second, func() bool {
		evs, _, err := ListEvents(ctx, n.Client(), EventFilter{Kind: EventNodeRoles})
		return err == nil && len(evs) == 1 && evs[0].Fields["by"] == "alice@desk via node solo (from 127.0.0.1)" &&
			strings.Contains(evs[0].Message, "from storage,vhost to vhost")
	})
	// standby is recorded with its author too
	if code, _ := post("/v1/nodes/solo/standby", `{"standby": true}`); code != 200 {
		t.Fatalf("standby: %d", code)
	}
	waitCond(t, 5*time.Second, func() bool {
		evs, _, err := ListEvents(ctx, n.Client(), EventFilter{Kind: EventNodeStandby})
		return err == nil && len(evs) == 1 && evs[0].Fields["by"] == "alice@desk via node solo (from 127.0.0.1)"
	})

	// the token: refused over TCP, answered on the socket
	resp, err := n.HTTPClient().Get(api + "/v1/token")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("token over TCP: %d", resp.StatusCode)
	}
	sock := filepath.Join(cfg.DataDir, APISocket)
	uc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err = uc.Get("http://agent/v1/token")
	if err != nil {
		t.Fatal(err)
	}
	var tok struct{ Token, Cluster string }
	json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()
	if _, err := ParseToken(tok.Token); err != nil || tok.Cluster != n.ClusterID() {
		t.Fatalf("token %+v: %v", tok, err)
	}

	// a restart without --roles keeps the roles set; one with --roles resets them
	restart := func(roles []Role) *Node {
		t.Helper()
		cfg2 := cfg
		cfg2.PeerListen, cfg2.ClientListen = "", ""
		cfg2.Roles = roles
		return startNode(t, cfg2)
	}
	rolesAfter := func(n *Node) []Role {
		t.Helper()
		var me NodeInfo
		waitCond(t, 5*time.Second, func() bool {
			m := n.Members()
			me, _ = m.Node("solo")
			return m.Rev >= n.registeredRev && me.Online
		})
		return me.Roles
	}
	n.Stop(ctx)
	n = restart(nil)
	if r := rolesAfter(n); !slices.Equal(r, []Role{RoleVHost}) {
		t.Fatalf("roles after a restart without --roles: %v", r)
	}
	n.Stop(ctx)
	n = restart([]Role{RoleStorage})
	if r := rolesAfter(n); !slices.Equal(r, []Role{RoleStorage}) {
		t.Fatalf("roles after a restart with --roles storage: %v", r)
	}
	// ChangeRoles called directly (not through the API) logs the node itself
	if _, err := n.ChangeRoles(ctx, "solo", RolesChange{Add: []Role{RoleVHost}}); err != nil {
		t.Fatal(err)
	}
	var he *httpError
	if _, err := n.ChangeRoles(ctx, "ghost", RolesChange{Add: []Role{RoleVHost}}); !errors.As(err, &he) || he.code != 404 {
		t.Fatalf("unknown node: %v", err)
	}
}
