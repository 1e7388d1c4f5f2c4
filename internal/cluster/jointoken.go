package cluster

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Join tokens.
//
// Every join token is short-lived (default 1 hour, at most a week) and
// admits one node unless made for more: the one a new cluster's first node
// prints (and writes to its DATA_DIR/join-token), and those made with `hacs
// cluster token create` (POST /v1/join-tokens) or `hacs cluster token`. A
// second join with a used-up token is refused ("already used"), unless it is
// the same node repeating an interrupted join; so is a join after expiry.
// A token looks like hacs1.<cluster>.<secret> and is stored by an id derived
// from the secret, with the secret's SHA-256 only. The cluster's own secret
// (KeyJoinSecret) admits no one.

// PrefixJoinTokens holds the short-lived join tokens:
// /hacs/auth/join/<id> -> JoinToken.
const PrefixJoinTokens = Prefix + "auth/join/"

// DefaultJoinTokenTTL is how long a created join token is valid.
const DefaultJoinTokenTTL = time.Hour

// JoinToken is the stored record of a short-lived join token.
type JoinToken struct {
	ID      string    `json:"id"`
	Key     string    `json:"key"` // hex SHA-256 of the secret (also the key of the CA's MAC)
	Expires time.Time `json:"expires"`
	Uses    int       `json:"uses"` // joins left
	UsedBy  []string  `json:"used_by,omitempty"`
	// UsedKeys: node id -> hex SHA-256 of the public key its certificate
	// request carried; a repeated join of that node must bring the same key.
	UsedKeys  map[string]string `json:"used_keys,omitempty"`
	CreatedAt time.Time         `json:"created_at"`
	CreatedBy string            `json:"created_by"`
	// RevokedAt, if set, is when an admin revoked the token (RevokedBy):
	// it admits no node any more.
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
	RevokedBy string     `json:"revoked_by,omitempty"`
}

// joinKey is the hex SHA-256 of a join secret: what the store keeps, and
// the key of the CA's MAC a joining node checks.
func joinKey(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

// joinTokenID names a join token in the store (not the secret).
func joinTokenID(secret string) string {
	h := sha256.Sum256([]byte("hacs-join-id\n" + secret))
	return hex.EncodeToString(h[:8])
}

// CreateJoinToken creates a join token valid for ttl and uses joins.
func (n *Node) CreateJoinToken(ctx context.Context, ttl time.Duration, uses int, by string) (Token, JoinToken, error) {
	if err := checkJoinTokenShape(ttl, uses); err != nil {
		return Token{}, JoinToken{}, errStatus(http.StatusBadRequest, "%v", err)
	}
	cli := n.Client()
	if cli == nil {
		return Token{}, JoinToken{}, ErrNotServing
	}
	secret, rec := newJoinToken(ttl, uses, by)
	b, _ := json.Marshal(rec)
	if _, err := cli.Put(ctx, PrefixJoinTokens+rec.ID, string(b)); err != nil {
		return Token{}, JoinToken{}, errStatus(http.StatusServiceUnavailable, "%v", err)
	}
	n.emit(Event{Kind: EventJoinTokenCreated, Message: fmt.Sprintf("join token %s created by %s (valid until %s, %d join(s))", rec.ID, by, rec.Expires.Format(time.RFC3339), uses), Fields: map[string]string{"token": rec.ID, "by": by}})
	rec.Key = ""
	return Token{ClusterID: n.ClusterID(), Secret: secret}, rec, nil
}

// checkJoinTokenShape bounds a join token's validity and number of joins.
func checkJoinTokenShape(ttl time.Duration, uses int) error {
	if ttl <= 0 || ttl > 7*24*time.Hour {
		return fmt.Errorf("ttl %v: want a duration up to 168h", ttl)
	}
	if uses < 1 || uses > 1000 {
		return fmt.Errorf("uses %d: want 1 to 1000", uses)
	}
	return nil
}

// newJoinToken makes a join token's secret and its record (to be stored
// under PrefixJoinTokens+rec.ID).
func newJoinToken(ttl time.Duration, uses int, by string) (secret string, rec JoinToken) {
	secret = newSecret()
	now := time.Now().UTC()
	return secret, JoinToken{ID: joinTokenID(secret), Key: joinKey(secret), Expires: now.Add(ttl), Uses: uses, CreatedAt: now, CreatedBy: by}
}

// EventJoinTokenCreated records a new join token.
const EventJoinTokenCreated = "join-token-created"

// joinAuth is what admitted a join: the cluster secret, or a join token
// whose record must be updated in the node's registration transaction.
type joinAuth struct {
	key    string // PrefixJoinTokens key ("" for the cluster secret)
	modRev int64
	rec    JoinToken
}

// csrKeyHash is the hex SHA-256 of the public key of a PEM certificate
// request ("" when there is none or it does not parse).
func csrKeyHash(csrPEM string) string {
	b, _ := pem.Decode([]byte(csrPEM))
	if b == nil {
		return ""
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return ""
	}
	h := sha256.Sum256(csr.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(h[:])
}

// checkJoinSecret admits the secret of a join request for node nodeID,
// whose certificate request has the key keyHash (csrKeyHash; "" in a
// cluster without TLS).
func (n *Node) checkJoinSecret(ctx context.Context, cli *clientv3.Client, secret, nodeID, keyHash string) (*joinAuth, error) {
	cid := n.ClusterID()
	wrong := errStatus(http.StatusForbidden, "wrong join token for cluster %s: no such token (join tokens are made by the first node at cluster creation, by `hacs cluster token create` and by `hacs cluster token` on a member)", cid)
	key := PrefixJoinTokens + joinTokenID(secret)
	r, err := cli.Get(ctx, key)
	if err != nil {
		return nil, errStatus(http.StatusServiceUnavailable, "reading the join token: %v", err)
	}
	if len(r.Kvs) == 0 {
		return nil, wrong
	}
	var rec JoinToken
	if err := json.Unmarshal(r.Kvs[0].Value, &rec); err != nil || subtle.ConstantTimeCompare([]byte(rec.Key), []byte(joinKey(secret))) != 1 {
		return nil, wrong
	}
	if rec.RevokedAt != nil {
		// before the repeated-join check: a revoked token admits no one
		return nil, errStatus(http.StatusForbidden, "join token %s was revoked at %s by %s: it admits no node; ask an admin of the cluster for a new one (`hacs cluster token create` on a member)", rec.ID, rec.RevokedAt.Format(time.RFC3339), rec.RevokedBy)
	}
	if slices.Contains(rec.UsedBy, nodeID) && rec.UsedKeys[nodeID] == keyHash && (keyHash != "" || n.creds == nil) {
		// the same node repeating an interrupted join: it proves it with
		// the key it joined with (its id alone is no secret: every
		// certificate it presents names it)
		return &joinAuth{}, nil
	}
	if time.Now().After(rec.Expires) {
		return nil, errStatus(http.StatusForbidden, "join token %s expired at %s: join tokens are short-lived; create a new one with `hacs cluster token create` on a member", rec.ID, rec.Expires.Format(time.RFC3339))
	}
	if rec.Uses <= 0 {
		return nil, errStatus(http.StatusForbidden, "join token %s was already used (by node id %v): a join token admits one node only, a replay is refused; create a new one with `hacs cluster token create` on a member", rec.ID, rec.UsedBy)
	}
	return &joinAuth{key: key, modRev: r.Kvs[0].ModRevision, rec: rec}, nil
}

// consume returns the transaction parts that use the token up, recording
// the node and its key.
func (a *joinAuth) consume(nodeID, keyHash string) ([]clientv3.Cmp, []clientv3.Op) {
	if a == nil || a.key == "" {
		return nil, nil
	}
	rec := a.rec
	rec.Uses--
	rec.UsedBy = append(slices.Clone(rec.UsedBy), nodeID)
	rec.UsedKeys = maps.Clone(rec.UsedKeys)
	if rec.UsedKeys == nil {
		rec.UsedKeys = map[string]string{}
	}
	rec.UsedKeys[nodeID] = keyHash
	b, _ := json.Marshal(rec)
	return []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(a.key), "=", a.modRev)}, []clientv3.Op{clientv3.OpPut(a.key, string(b))}
}

// joinMACKey is the key of the CA's MAC for a join token id: the token's
// secret hash, or the cluster secret's.
func (n *Node) joinMACKey(ctx context.Context, cli *clientv3.Client, id string) (string, error) {
	if id != "" && len(id) == 16 {
		if r, err := cli.Get(ctx, PrefixJoinTokens+id); err == nil && len(r.Kvs) > 0 {
			var rec JoinToken
			if json.Unmarshal(r.Kvs[0].Value, &rec) == nil && rec.Key != "" {
				return rec.Key, nil
			}
		}
	}
	sr, err := cli.Get(ctx, KeyJoinSecret)
	if err != nil || len(sr.Kvs) == 0 {
		return "", fmt.Errorf("reading the join secret: %v", err)
	}
	return joinKey(string(sr.Kvs[0].Value)), nil
}

func (n *Node) handleJoinTokenCreate(w http.ResponseWriter, r *http.Request) {
	var body struct {
		TTL  string `json:"ttl"`
		Uses int    `json:"uses"`
	}
	if r.ContentLength != 0 {
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&body); err != nil {
			writeError(w, errStatus(http.StatusBadRequest, `want a JSON body {"ttl": "1h", "uses": 1}`))
			return
		}
	}
	ttl := DefaultJoinTokenTTL
	if body.TTL != "" {
		d, err := time.ParseDuration(body.TTL)
		if err != nil {
			writeError(w, errStatus(http.StatusBadRequest, "ttl %q: want a duration such as 30m or 2h", body.TTL))
			return
		}
		ttl = d
	}
	if body.Uses == 0 {
		body.Uses = 1
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	tok, rec, err := n.CreateJoinToken(ctx, ttl, body.Uses, actor(r.Context(), "unknown"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"token": tok.String(), "id": rec.ID, "expires": rec.Expires, "uses": rec.Uses})
}

// EventJoinTokenRevoked records a join token revoked before its expiry.
const EventJoinTokenRevoked = "join-token-revoked"

// Join token states (JoinTokenInfo.State).
const (
	JoinTokenValid   = "valid"
	JoinTokenUsed    = "used"
	JoinTokenExpired = "expired"
	JoinTokenRevoked = "revoked"
)

// JoinTokenInfo is what an admin sees of a join token (GET
// /v1/join-tokens): never its secret, nor the secret's hash (the key of
// the CA's MAC a joining node checks).
type JoinTokenInfo struct {
	ID        string     `json:"id"`
	State     string     `json:"state"` // valid, used (up), expired or revoked
	CreatedAt time.Time  `json:"created_at"`
	CreatedBy string     `json:"created_by"`
	Expires   time.Time  `json:"expires"`
	UsesLeft  int        `json:"uses_left"`
	UsedBy    []string   `json:"used_by,omitempty"` // the nodes it admitted: names (ids of nodes no longer members)
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
	RevokedBy string     `json:"revoked_by,omitempty"`
}

// info is the record without its secrets, with its state at now.
func (t JoinToken) info(now time.Time) JoinTokenInfo {
	st := JoinTokenValid
	switch {
	case t.RevokedAt != nil:
		st = JoinTokenRevoked
	case t.Uses <= 0:
		st = JoinTokenUsed
	case now.After(t.Expires):
		st = JoinTokenExpired
	}
	return JoinTokenInfo{ID: t.ID, State: st, CreatedAt: t.CreatedAt, CreatedBy: t.CreatedBy, Expires: t.Expires,
		UsesLeft: max(t.Uses, 0), UsedBy: slices.Clone(t.UsedBy), RevokedAt: t.RevokedAt, RevokedBy: t.RevokedBy}
}

// joinTokenRecords reads every join token record with its key and
// revision, oldest first.
func joinTokenRecords(ctx context.Context, cli *clientv3.Client) ([]JoinToken, []int64, error) {
	r, err := cli.Get(ctx, PrefixJoinTokens, clientv3.WithPrefix())
	if err != nil {
		return nil, nil, errStatus(http.StatusServiceUnavailable, "reading the join tokens: %v", err)
	}
	type kv struct {
		rec JoinToken
		rev int64
	}
	var all []kv
	for _, e := range r.Kvs {
		var rec JoinToken
		if json.Unmarshal(e.Value, &rec) != nil || rec.ID == "" {
			continue
		}
		all = append(all, kv{rec, e.ModRevision})
	}
	slices.SortFunc(all, func(a, b kv) int { return a.rec.CreatedAt.Compare(b.rec.CreatedAt) })
	recs, revs := make([]JoinToken, len(all)), make([]int64, len(all))
	for i, e := range all {
		recs[i], revs[i] = e.rec, e.rev
	}
	return recs, revs, nil
}

// JoinTokens lists the cluster's join tokens (valid, used, expired and
// revoked), oldest first, without their secrets.
func (n *Node) JoinTokens(ctx context.Context) ([]JoinTokenInfo, error) {
	cli := n.Client()
	if cli == nil {
		return nil, ErrNotServing
	}
	recs, _, err := joinTokenRecords(ctx, cli)
	if err != nil {
		return nil, err
	}
	names := map[string]string{}
	for _, m := range n.Members().Nodes {
		names[m.ID] = m.Name
	}
	now := time.Now()
	out := make([]JoinTokenInfo, 0, len(recs))
	for _, r := range recs {
		ti := r.info(now)
		for i, id := range ti.UsedBy {
			if name := names[id]; name != "" {
				ti.UsedBy[i] = name
			}
		}
		out = append(out, ti)
	}
	return out, nil
}

// RevokeJoinToken revokes the join token whose id is id, or starts with id
// (at least 4 characters, matching one token only): from now on it admits
// no node, not even one repeating an interrupted join. already reports a
// token that was revoked before (nothing changes then).
func (n *Node) RevokeJoinToken(ctx context.Context, id, by string) (info JoinTokenInfo, already bool, err error) {
	cli := n.Client()
	if cli == nil {
		return JoinTokenInfo{}, false, ErrNotServing
	}
	id = strings.ToLower(strings.TrimSpace(id))
	if len(id) < 4 {
		return JoinTokenInfo{}, false, errStatus(http.StatusBadRequest, "join token id %q: give the id (or at least its first 4 characters) that `hacs cluster token list` shows", id)
	}
	for attempt := 0; attempt < 5; attempt++ {
		recs, revs, err := joinTokenRecords(ctx, cli)
		if err != nil {
			return JoinTokenInfo{}, false, err
		}
		var match []int
		for i, r := range recs {
			if r.ID == id {
				match = []int{i}
				break
			}
			if strings.HasPrefix(r.ID, id) {
				match = append(match, i)
			}
		}
		switch len(match) {
		case 0:
			return JoinTokenInfo{}, false, errStatus(http.StatusNotFound, "no join token %s (see `hacs cluster token list`)", id)
		case 1:
		default:
			ids := make([]string, len(match))
			for i, m := range match {
				ids[i] = recs[m].ID
			}
			return JoinTokenInfo{}, false, errStatus(http.StatusConflict, "%q matches %d join tokens (%s): give more of the id", id, len(match), strings.Join(ids, ", "))
		}
		rec, rev := recs[match[0]], revs[match[0]]
		if rec.RevokedAt != nil {
			return rec.info(time.Now()), true, nil
		}
		now := time.Now().UTC()
		rec.RevokedAt, rec.RevokedBy = &now, by
		b, _ := json.Marshal(rec)
		key := PrefixJoinTokens + rec.ID
		// against a join using the token at the same moment: one of the
		// two transactions wins, the other sees the new record
		tr, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).Then(clientv3.OpPut(key, string(b))).Commit()
		if err != nil {
			return JoinTokenInfo{}, false, errStatus(http.StatusServiceUnavailable, "revoking join token %s: %v", rec.ID, err)
		}
		if !tr.Succeeded {
			continue
		}
		info := rec.info(now)
		n.emit(Event{Kind: EventJoinTokenRevoked, Message: fmt.Sprintf("join token %s revoked by %s (created by %s, %d join(s) left, valid until %s)", rec.ID, by, rec.CreatedBy, info.UsesLeft, rec.Expires.Format(time.RFC3339)), Fields: map[string]string{"token": rec.ID, "by": by}})
		return info, false, nil
	}
	return JoinTokenInfo{}, false, errStatus(http.StatusServiceUnavailable, "join token %s kept changing while being revoked; try again", id)
}

func (n *Node) handleJoinTokenList(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	out, err := n.JoinTokens(ctx)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (n *Node) handleJoinTokenRevoke(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	info, already, err := n.RevokeJoinToken(ctx, r.PathValue("id"), actor(r.Context(), "unknown"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"token": info, "already_revoked": already})
}

// JoinTokenID is the id under which the cluster stores the join token t
// (what `hacs cluster token list` shows; not a secret).
func (t Token) JoinTokenID() string { return joinTokenID(t.Secret) }
