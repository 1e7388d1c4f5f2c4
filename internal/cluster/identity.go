package cluster

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hacs/hacs/internal/fsutil"
)

// identity is what a node persists in its data directory (node.json): which
// cluster it belongs to and who it is there. It survives restarts, so that a
// restarted agent rejoins as the same node.
type identity struct {
	ClusterID string    `json:"cluster_id"`
	NodeID    string    `json:"node_id"`
	Name      string    `json:"name"`
	Schema    int       `json:"schema"`
	CreatedAt time.Time `json:"created_at"`
	// Creator is set on the node that created the cluster (its etcd member
	// bootstraps a new raft group).
	Creator bool `json:"creator,omitempty"`
	// Joining is set while the join handshake has not completed; a restart
	// then repeats the handshake with the same node id.
	Joining bool `json:"joining,omitempty"`
	// Voter nodes run an embedded etcd member (learner until promoted).
	Voter bool `json:"voter"`
	// EtcdStarted is set once the embedded member has been ready once: from
	// then on its data directory must exist.
	EtcdStarted bool   `json:"etcd_started,omitempty"`
	MemberID    uint64 `json:"member_id,omitempty,string"`
	// External nodes use an external etcd cluster (--etcd-endpoints).
	External bool `json:"external,omitempty"`
	// StoreTLS are the external etcd's client credentials (files).
	StoreTLS StoreTLSFiles `json:"etcd_tls,omitzero"`
	// PeerURL and ClientURL are the etcd URLs this node advertises (voters).
	PeerURL   string `json:"peer_url,omitempty"`
	ClientURL string `json:"client_url,omitempty"`
	// Listen addresses last used, the defaults for the next start.
	APIAddr      string `json:"api_addr,omitempty"`
	PeerListen   string `json:"peer_listen,omitempty"`
	ClientListen string `json:"client_listen,omitempty"`
	// InitialCluster is the etcd initial-cluster string a joining voter
	// starts with (only used until its etcd data directory exists).
	InitialCluster string `json:"initial_cluster,omitempty"`
	// Endpoints are the etcd client URLs last known to reach the cluster.
	Endpoints []string `json:"endpoints"`
	// Removed is set once the node learns it was removed; it never runs
	// again with this data directory.
	// Insecure: the cluster runs without TLS (created with --insecure).
	Insecure  bool      `json:"insecure,omitempty"`
	Removed   bool      `json:"removed,omitempty"`
	RemovedAt time.Time `json:"removed_at,omitzero"`
}

const identityFile = "node.json"

func loadIdentity(dir string) (*identity, error) {
	b, err := os.ReadFile(filepath.Join(dir, identityFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var id identity
	if err := json.Unmarshal(b, &id); err != nil {
		return nil, fmt.Errorf("%s is corrupt (%v): restore it from a backup, or remove the data directory %s and join the cluster again as a new node", filepath.Join(dir, identityFile), err, dir)
	}
	if id.ClusterID == "" || id.NodeID == "" || id.Name == "" {
		return nil, fmt.Errorf("%s is incomplete (no cluster id, node id or name): remove the data directory %s and join the cluster again as a new node", filepath.Join(dir, identityFile), dir)
	}
	return &id, nil
}

func (id *identity) save(dir string) error {
	b, err := json.MarshalIndent(id, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(filepath.Join(dir, identityFile), append(b, '\n'), 0o600)
}

func (id *identity) etcdDir(dir string) string { return filepath.Join(dir, "etcd") }

// lockDataDir takes an exclusive lock on the data directory, so that two
// agents never share one.
func lockDataDir(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("data directory %s: %w", dir, err)
	}
	path := filepath.Join(dir, "lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data directory %s: %w", dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		b, _ := os.ReadFile(path)
		f.Close()
		owner := strings.TrimSpace(string(b))
		if owner == "" {
			owner = "unknown"
		}
		return nil, fmt.Errorf("data directory %s is in use by another hacs agent (pid %s): stop that agent first, or give this one another --data-dir", dir, owner)
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return f, nil
}

// Token is a join token: the cluster id and the token's secret. The first
// node prints one (and writes it to its DATA_DIR/join-token); members make
// more (jointoken.go).
type Token struct {
	ClusterID string
	Secret    string
}

const tokenPrefix = "hacs1."

var (
	clusterIDRE = regexp.MustCompile(`^[0-9a-f]{16}$`)
	secretRE    = regexp.MustCompile(`^[A-Za-z0-9_-]{43}$`)
)

func (t Token) String() string { return tokenPrefix + t.ClusterID + "." + t.Secret }

// ParseToken reads a token printed by `hacs agent`.
func ParseToken(s string) (Token, error) {
	s = strings.TrimSpace(s)
	rest, ok := strings.CutPrefix(s, tokenPrefix)
	id, secret, ok2 := strings.Cut(rest, ".")
	if !ok || !ok2 || !clusterIDRE.MatchString(id) || !secretRE.MatchString(secret) {
		return Token{}, fmt.Errorf("malformed join token %q: a token looks like hacs1.<16 hex digits>.<43 characters>; copy it from the first node's output or from `hacs cluster token create` on a member", s)
	}
	return Token{ClusterID: id, Secret: secret}, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func newSecret() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

const tokenFile = "join-token"

func writeTokenFile(dir string, t Token) error {
	return fsutil.WriteFileAtomic(filepath.Join(dir, tokenFile), []byte(t.String()+"\n"), 0o600)
}
