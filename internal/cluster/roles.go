package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Administrative changes made through the API, with who made them:
//
//	POST /v1/nodes/{name}/roles   {"roles": [...]} | {"add": [...], "remove": [...]}
//	GET  /v1/token                the join token (only on the local API socket)

// EventNodeRoles records a change of a node's roles.
const EventNodeRoles = "node-roles"

// ActorHeader names who sends an API request ("user@host"); the CLI sets
// it, and administrative changes are recorded in the event log with it.
const ActorHeader = "X-Hacs-Actor"

type actorKey struct{}

// withActor records in the request's context who sent it: the ActorHeader
// (sanitised) and where from.
func withActor(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		who := strings.Map(func(r rune) rune {
			if unicode.IsPrint(r) && r != '"' {
				return r
			}
			return -1
		}, r.Header.Get(ActorHeader))
		if len(who) > 64 {
			who = who[:64]
		}
		if p, ok := RequestPrincipal(r.Context()); ok && p.Name != "local socket" {
			// authenticated: the header is only a claim, trusted from
			// nodes alone (an agent forwarding its client's request)
			if p.Node && who != "" {
				who += " via " + p.Name
			} else {
				who = p.Name
			}
		}
		from := "the local socket"
		if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
			from = host
		}
		if who == "" {
			who = "client at " + from
		} else {
			who += " (from " + from + ")"
		}
		h(w, r.WithContext(context.WithValue(r.Context(), actorKey{}, who)))
	}
}

// WithActor is withActor for the handlers of other packages (the resource
// manager's volume API): every state-changing handler is wrapped with it.
func WithActor(h http.HandlerFunc) http.HandlerFunc { return withActor(h) }

// Actor returns who made the request behind ctx (def when unknown): the one
// place that names who changed something.
func Actor(ctx context.Context, def string) string { return actor(ctx, def) }

// actor returns who made the request behind ctx (def when unknown).
func actor(ctx context.Context, def string) string {
	if s, ok := ctx.Value(actorKey{}).(string); ok && s != "" {
		return s
	}
	if p, ok := RequestPrincipal(ctx); ok {
		return p.Name
	}
	return def
}

// RolesChange changes a node's roles: Set replaces them, Add and Remove
// edit them (Set excludes the other two).
type RolesChange struct {
	Set    []Role `json:"roles,omitempty"`
	Add    []Role `json:"add,omitempty"`
	Remove []Role `json:"remove,omitempty"`
}

func (c RolesChange) apply(cur []Role) ([]Role, error) {
	if len(c.Set) > 0 && (len(c.Add) > 0 || len(c.Remove) > 0) {
		return nil, errors.New(`give either "roles" (the new set) or "add"/"remove", not both`)
	}
	if len(c.Set) == 0 && len(c.Add) == 0 && len(c.Remove) == 0 {
		return nil, errors.New(`no change: give "roles", "add" or "remove"`)
	}
	for _, list := range [][]Role{c.Set, c.Add, c.Remove} {
		if len(list) > 0 {
			if _, err := ParseRoles(joinRoles(list)); err != nil && !strings.Contains(err.Error(), "cannot be combined") {
				return nil, err
			}
		}
	}
	next := slices.Clone(cur)
	if len(c.Set) > 0 {
		next = slices.Clone(c.Set)
	}
	for _, r := range c.Add {
		if r = Role(strings.ToLower(string(r))); !slices.Contains(next, r) {
			next = append(next, r)
		}
	}
	next = slices.DeleteFunc(next, func(r Role) bool {
		return slices.ContainsFunc(c.Remove, func(x Role) bool { return strings.EqualFold(string(x), string(r)) })
	})
	if len(next) == 0 {
		return nil, errors.New("a node needs at least one role: storage, vhost or witness")
	}
	roles, err := ParseRoles(joinRoles(next))
	if err != nil {
		return nil, err
	}
	if slices.Contains(cur, RoleWitness) != slices.Contains(roles, RoleWitness) {
		return nil, errors.New("the witness role is fixed when the agent starts (a witness never coordinates and holds nothing): restart the node's agent with or without --roles witness instead")
	}
	return roles, nil
}

// ChangeRoles changes the roles in a node's record (a conditional
// transaction on the record's revision, retried on a concurrent change) and
// returns the new roles. The node keeps them across restarts unless its
// agent is started with --roles.
func (n *Node) ChangeRoles(ctx context.Context, name string, change RolesChange) ([]Role, error) {
	cli := n.Client()
	if cli == nil {
		return nil, errStatus(http.StatusServiceUnavailable, "%v", ErrNotServing)
	}
	key := NodeConfigKey(name)
	for {
		r, err := cli.Get(ctx, key)
		if err != nil {
			return nil, errStatus(http.StatusServiceUnavailable, "reading node %s: %v", name, err)
		}
		if len(r.Kvs) == 0 {
			return nil, errStatus(http.StatusNotFound, "no node named %s in the cluster", name)
		}
		var c NodeConfig
		if err := json.Unmarshal(r.Kvs[0].Value, &c); err != nil {
			return nil, fmt.Errorf("node record %s is corrupt: %w", key, err)
		}
		roles, err := change.apply(c.Roles)
		if err != nil {
			return nil, errStatus(http.StatusBadRequest, "node %s: %v", name, err)
		}
		if slices.Equal(roles, c.Roles) {
			return roles, nil
		}
		old := c.Roles
		c.Roles = roles
		b, _ := json.Marshal(c)
		tr, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", r.Kvs[0].ModRevision)).
			Then(clientv3.OpPut(key, string(b))).Commit()
		if err != nil {
			return nil, errStatus(http.StatusServiceUnavailable, "writing node %s: %v", name, err)
		}
		if !tr.Succeeded {
			continue // changed concurrently (a restart, another admin): again
		}
		by := actor(ctx, n.ident.Name)
		n.emit(Event{Kind: EventNodeRoles, Message: fmt.Sprintf("roles of node %s changed from %s to %s by %s", name, joinRoles(old), joinRoles(roles), by),
			Fields: map[string]string{"subject": name, "by": by, "roles": joinRoles(roles)}})
		return roles, nil
	}
}

func (n *Node) handleRoles(w http.ResponseWriter, r *http.Request) {
	var change RolesChange
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<16))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&change); err != nil {
		writeError(w, errStatus(http.StatusBadRequest, `bad request body (%v): want {"roles": [...]} or {"add": [...], "remove": [...]}`, err))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	roles, err := n.ChangeRoles(ctx, r.PathValue("name"), change)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"name": r.PathValue("name"), "roles": roles})
}

// handleToken makes a join token (DefaultJoinTokenTTL, one node) for
// local clients of the API socket only (DATA_DIR/api.sock, mode 0600): the
// root of a member may add nodes without an API token.
func (n *Node) handleToken(w http.ResponseWriter, r *http.Request) {
	if _, local := r.Context().Value(http.LocalAddrContextKey).(*net.UnixAddr); !local {
		writeError(w, errStatus(http.StatusForbidden, "join tokens are given out without an API token only on the agent's local API socket: on a member, run `hacs cluster token --data-dir DATA_DIR`, or use `hacs cluster token create` with an admin API token"))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	tok, rec, err := n.CreateJoinToken(ctx, DefaultJoinTokenTTL, 1, actor(r.Context(), "local socket"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"cluster": tok.ClusterID, "token": tok.String(), "id": rec.ID, "expires": rec.Expires, "uses": rec.Uses})
}
