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
