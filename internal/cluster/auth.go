package cluster

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// API authentication (docs/SECURITY.md).
//
// In a secure cluster every request to the TCP API is authenticated, then
// checked against the role its path and method need:
//
//   - a node certificate of this cluster (the agents' calls to each other):
//     the node, with the admin role;
//   - "Authorization: Bearer <token>": an API token, with its role (admin,
//     operator or read-only); tokens are stored hashed (SHA-256) under
//     PrefixTokens;
//   - the owner-only Unix socket DATA_DIR/api.sock: the local administrator.
//
// read-only may GET; operator may also change volumes and nodes' state;
// admin may do everything (tokens, removing nodes, roles, fencing).

// AdminTokenFile is the file in the data directory of the node that created
// the cluster holding the first admin API token (0600).
const AdminTokenFile = "admin-token"

// PrefixTokens holds the API tokens: /hacs/auth/tokens/<name> -> APIToken.
const PrefixTokens = Prefix + "auth/tokens/"

// AuthRole is the role of an API token.
type AuthRole string

const (
	AuthAdmin    AuthRole = "admin"
	AuthOperator AuthRole = "operator"
	AuthReadOnly AuthRole = "read-only"
)

func (r AuthRole) rank() int {
	switch r {
	case AuthAdmin:
		return 3
	case AuthOperator:
		return 2
	case AuthReadOnly:
		return 1
	}
	return 0
}

// ParseAuthRole checks a role name.
func ParseAuthRole(s string) (AuthRole, error) {
	r := AuthRole(s)
	if r.rank() == 0 {
		return "", fmt.Errorf("unknown role %q: want admin, operator or read-only", s)
	}
	return r, nil
}

// APIToken is the stored record of an API token (never its secret).
type APIToken struct {
	Name      string    `json:"name"`
	Role      AuthRole  `json:"role"`
	Hash      string    `json:"hash"` // hex SHA-256 of the whole token
	CreatedAt time.Time `json:"created_at"`
	CreatedBy string    `json:"created_by"`
}

const apiTokenPrefix = "hacsapi1."

var tokenNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$`)

// newAPIToken returns a new token for name: hacsapi1.<name>.<secret>.
func newAPIToken(name string) string { return apiTokenPrefix + name + "." + newSecret() }

func hashToken(tok string) string {
	h := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(h[:])
}

// tokenName is the name part of a token ("" when malformed).
func tokenName(tok string) string {
	rest, ok := strings.CutPrefix(tok, apiTokenPrefix)
	if !ok {
		return ""
	}
	name, secret, ok := strings.Cut(rest, ".")
	if !ok || !secretRE.MatchString(secret) || !tokenNameRE.MatchString(name) {
		return ""
	}
	return name
}

// Principal is who sent an API request.
type Principal struct {
	Name string   // "token alice", "node n2", "local socket"
	Role AuthRole // what it may do
	// Node: a node of this cluster (its node certificate). Node-only
	// routes check this, never the name.
	Node bool
}

type principalKey struct{}

// RequestPrincipal is the authenticated sender of r (ok false when the
// cluster runs without authentication).
func RequestPrincipal(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}

// requiredRole is what a request needs.
func requiredRole(method, path string) AuthRole {
	switch {
	case strings.HasPrefix(path, "/v1/auth/"),
		strings.HasPrefix(path, "/v1/fence/") && method != http.MethodGet,
		method == http.MethodDelete && strings.HasPrefix(path, "/v1/nodes/"),
		strings.HasPrefix(path, "/v1/nodes/") && strings.HasSuffix(path, "/roles") && method != http.MethodGet,
		path == "/v1/token", path == "/v1/join-tokens", strings.HasPrefix(path, "/v1/join-tokens/"),
		// a volume's export policy: off or allowed opens it to anyone
		// who reaches the export port
		strings.HasPrefix(path, "/v1/volumes/") && strings.HasSuffix(path, "/tls") && method != http.MethodGet,
		// who may open a volume (grants)
		strings.HasPrefix(path, "/v1/volumes/") && strings.HasSuffix(path, "/grants") && method != http.MethodGet,
		path == "/v1/pki/renew" || path == "/v1/pki/rotate" && method != http.MethodGet:
		return AuthAdmin
	case method == http.MethodGet || method == http.MethodHead:
		return AuthReadOnly
	}
	return AuthOperator
}

// public paths need no authentication: the join handshake (it carries the
// join secret), the dashboard's page and assets.
func publicPath(method, path string) bool {
	if method == http.MethodGet && (path == "/" || strings.HasPrefix(path, "/ui/")) {
		return true // the web dashboard's static files (its API calls carry a token)
	}
	return (method == http.MethodPost && path == "/v1/join") || (method == http.MethodGet && path == "/v1/join/ca")
}

// authHandler authenticates and authorises every request to h.
func (n *Node) authHandler(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, err := n.authenticate(r)
		if err != nil {
			n.log.Warn("API: request refused", "from", r.RemoteAddr, "method", r.Method, "path", r.URL.Path, "err", err)
			w.Header().Set("WWW-Authenticate", `Bearer realm="hacs"`)
			writeError(w, err)
			return
		}
		if p != nil || n.creds == nil {
			authenticatedConn(r) // its connection leaves the limits of APILimits
		}
		if p != nil {
			need := requiredRole(r.Method, r.URL.Path)
			if p.Role.rank() < need.rank() {
				err := errStatus(http.StatusForbidden, "%s has the role %s, but %s %s needs %s: use a token with more rights (`hacs cluster auth token create NAME --role %s` by an admin)", p.Name, p.Role, r.Method, r.URL.Path, need, need)
				n.log.Warn("API: request refused", "from", r.RemoteAddr, "by", p.Name, "err", err)
				writeError(w, err)
				return
			}
			r = r.WithContext(context.WithValue(r.Context(), principalKey{}, *p))
		}
		if publicPath(r.Method, r.URL.Path) || answersLocally(r) {
			h.ServeHTTP(w, r)
			return
		}
		// a node without quorum answers at once rather than when its
		// caller gives up (every caller alike: tokens, nodes, the local
		// socket), also when it loses its quorum while the request runs
		if err := n.NoQuorumError(); err != nil {
			n.log.Debug("API: request refused: no quorum", "from", r.RemoteAddr, "method", r.Method, "path", r.URL.Path)
			writeError(w, err)
			return
		}
		n.withQuorum(h, w, r)
	})
}

// authenticate returns the sender of r, nil when no authentication
// applies (an --insecure cluster, a public path).
func (n *Node) authenticate(r *http.Request) (*Principal, error) {
	if _, local := r.Context().Value(http.LocalAddrContextKey).(*net.UnixAddr); local {
		return &Principal{Name: "local socket", Role: AuthAdmin}, nil
	}
	if n.creds == nil || publicPath(r.Method, r.URL.Path) {
		return nil, nil
	}
	clientCert := ""
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		// verified at the handshake (chain, expiry, revocation, a node
		// certificate: the API listener refuses others)
		c := r.TLS.PeerCertificates[0]
		kind, cid, name := CertIdentity(c)
		switch {
		case kind == CertNode && cid == n.ClusterID():
			return &Principal{Name: "node " + c.Subject.CommonName, Role: AuthAdmin, Node: true}, nil
		case kind == CertExportClient:
			// never a node, never a user of the API
			clientCert = name
		}
	}
	h := r.Header.Get("Authorization")
	if h == "" && clientCert != "" {
		return nil, errStatus(http.StatusUnauthorized, "the export client certificate %q opens volume exports only: it is not a node and not an API credential; send an API token (\"Authorization: Bearer TOKEN\")", clientCert)
	}
	if h == "" {
		return nil, errStatus(http.StatusUnauthorized, "this API needs a token: send \"Authorization: Bearer TOKEN\" (the hacs CLI reads it from --token-file, $HACS_TOKEN, $HACS_TOKEN_FILE or ~/.config/hacs/token; the first admin token is in DATA_DIR/%s of the node that created the cluster)", AdminTokenFile)
	}
	tok, ok := strings.CutPrefix(h, "Bearer ")
	tok = strings.TrimSpace(tok)
	name := tokenName(tok)
	if !ok || name == "" {
		return nil, errStatus(http.StatusUnauthorized, "malformed API token: a token looks like %s<name>.<43 characters>", apiTokenPrefix)
	}
	rec, err := n.lookupToken(r.Context(), name)
	if err != nil {
		return nil, err
	}
	if rec == nil || subtle.ConstantTimeCompare([]byte(rec.Hash), []byte(hashToken(tok))) != 1 {
		return nil, errStatus(http.StatusUnauthorized, "unknown or revoked API token %q: ask an admin for a valid one (`hacs cluster auth token list`)", name)
	}
	return &Principal{Name: "token " + rec.Name, Role: rec.Role}, nil
}

func (n *Node) lookupToken(ctx context.Context, name string) (*APIToken, error) {
	if c := n.tokensCache.Load(); c != nil {
		s, _ := c.Snapshot()
		if s.Synced && !s.Stale {
			// a miss may be a token created a moment ago: ask the store
			if kv, ok := s.KVs[PrefixTokens+name]; ok {
				var t APIToken
				if err := json.Unmarshal(kv.Value, &t); err != nil {
					return nil, nil
				}
				return &t, nil
			}
		}
	}
	cli := n.Client()
	if cli == nil {
		return nil, errStatus(http.StatusServiceUnavailable, "this node is not connected to its cluster yet: it cannot check API tokens")
	}
	if n.quorumLost() {
		return nil, n.noQuorumError("it cannot check the API token")
	}
	// bounded well below what a caller waits: a node that loses its quorum
	// knows it (quorumLost) only after its lease and its raft leader are
	// gone
	cctx, cancel := context.WithTimeout(ctx, storeCheckTimeout)
	defer cancel()
	resp, err := cli.Get(cctx, PrefixTokens+name)
	if err != nil {
		if ctx.Err() == nil && cctx.Err() != nil {
			return nil, n.noQuorumError(fmt.Sprintf("checking the API token took over %v", storeCheckTimeout))
		}
		return nil, errStatus(http.StatusServiceUnavailable, "checking the API token: %v", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	var t APIToken
	if err := json.Unmarshal(resp.Kvs[0].Value, &t); err != nil {
		return nil, nil
	}
	return &t, nil
}

// CreateToken creates an API token with role; the token is returned once
// and never stored (only its hash).
func (n *Node) CreateToken(ctx context.Context, name string, role AuthRole, by string) (string, error) {
	if !tokenNameRE.MatchString(name) {
		return "", errStatus(http.StatusBadRequest, "invalid token name %q: use 1 to 63 lower-case letters, digits, '.', '_' or '-'", name)
	}
	if role.rank() == 0 {
		return "", errStatus(http.StatusBadRequest, "unknown role %q: want admin, operator or read-only", role)
	}
	cli := n.Client()
	if cli == nil {
		return "", ErrNotServing
	}
	tok := newAPIToken(name)
	rec := APIToken{Name: name, Role: role, Hash: hashToken(tok), CreatedAt: time.Now().UTC(), CreatedBy: by}
	b, _ := json.Marshal(rec)
	key := PrefixTokens + name
	tr, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).Then(clientv3.OpPut(key, string(b))).Commit()
	if err != nil {
		return "", err
	}
	if !tr.Succeeded {
		return "", errStatus(http.StatusConflict, "a token named %s exists: revoke it first, or choose another name", name)
	}
	n.emit(Event{Kind: EventTokenCreated, Message: fmt.Sprintf("API token %s (role %s) created by %s", name, role, by), Fields: map[string]string{"token": name, "role": string(role), "by": by}})
	return tok, nil
}

// Events of the API tokens.
const (
	EventTokenCreated = "token-created"
	EventTokenRevoked = "token-revoked"
)

func (n *Node) handleTokenCreate(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Name string   `json:"name"`
		Role AuthRole `json:"role"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&body); err != nil {
		writeError(w, errStatus(http.StatusBadRequest, `want a JSON body {"name": "NAME", "role": "admin|operator|read-only"}`))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	tok, err := n.CreateToken(ctx, body.Name, body.Role, actor(r.Context(), "unknown"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"name": body.Name, "role": string(body.Role), "token": tok})
}

func (n *Node) handleTokenList(w http.ResponseWriter, r *http.Request) {
	cli := n.Client()
	if cli == nil {
		writeError(w, ErrNotServing)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, PrefixTokens, clientv3.WithPrefix())
	if err != nil {
		writeError(w, errStatus(http.StatusServiceUnavailable, "%v", err))
		return
	}
	out := []APIToken{}
	for _, kv := range resp.Kvs {
		var t APIToken
		if json.Unmarshal(kv.Value, &t) == nil {
			t.Hash = ""
			out = append(out, t)
		}
	}
	slices.SortFunc(out, func(a, b APIToken) int { return strings.Compare(a.Name, b.Name) })
	writeJSON(w, http.StatusOK, out)
}

func (n *Node) handleTokenRevoke(w http.ResponseWriter, r *http.Request) {
	cli := n.Client()
	if cli == nil {
		writeError(w, ErrNotServing)
		return
	}
	name := r.PathValue("name")
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	resp, err := cli.Delete(ctx, PrefixTokens+name)
	if err != nil {
		writeError(w, errStatus(http.StatusServiceUnavailable, "%v", err))
		return
	}
	if resp.Deleted == 0 {
		writeError(w, errStatus(http.StatusNotFound, "no API token named %s", name))
		return
	}
	by := actor(r.Context(), "unknown")
	n.emit(Event{Kind: EventTokenRevoked, Message: fmt.Sprintf("API token %s revoked by %s", name, by), Fields: map[string]string{"token": name, "by": by}})
	writeJSON(w, http.StatusOK, map[string]string{"revoked": name})
}
