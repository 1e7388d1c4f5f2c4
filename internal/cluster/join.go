package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// joinRequest is what a new node sends to POST /v1/join.
type joinRequest struct {
	Token     string `json:"token"`
	Name      string `json:"name"`
	NodeID    string `json:"node_id"`
	Version   string `json:"version"`
	Schema    int    `json:"schema"`
	Roles     []Role `json:"roles"`
	APIAddr   string `json:"api_addr"`
	PeerURL   string `json:"peer_url,omitempty"`
	ClientURL string `json:"client_url,omitempty"`
	// CSR is the joining node's certificate request (PEM); its key never
	// leaves the node.
	CSR string `json:"csr,omitempty"`
}

// joinResponse admits the node.
type joinResponse struct {
	ClusterID      string   `json:"cluster_id"`
	Voter          bool     `json:"voter"`
	MemberID       uint64   `json:"member_id,omitempty,string"`
	InitialCluster string   `json:"initial_cluster,omitempty"`
	Endpoints      []string `json:"endpoints"`
	Message        string   `json:"message"`
	// Cert is the node certificate the cluster CA issued (PEM), CRL the
	// current revocation list.
	Cert string `json:"cert,omitempty"`
	CRL  []byte `json:"crl,omitempty"` // DER
}

// httpError carries an HTTP status with a message for the user.
type httpError struct {
	code int
	msg  string
}

func (e *httpError) Error() string { return e.msg }

func errStatus(code int, format string, a ...any) error {
	return &httpError{code: code, msg: fmt.Sprintf(format, a...)}
}

func (n *Node) prepareJoin(ctx context.Context) error {
	id := n.ident
	if n.cfg.Join == "" {
		return fmt.Errorf("the join of this node (%s) to cluster %s was interrupted: run the agent again with --join HOST:PORT --token TOKEN to complete it, or remove %s to start afresh", id.Name, id.ClusterID, n.cfg.DataDir)
	}
	tok, err := ParseToken(n.cfg.Token)
	if err != nil {
		return err
	}
	if id != nil {
		if id.ClusterID != tok.ClusterID {
			return fmt.Errorf("data directory %s holds an interrupted join to cluster %s, but the token is for cluster %s: use another --data-dir, or remove %s", n.cfg.DataDir, id.ClusterID, tok.ClusterID, n.cfg.DataDir)
		}
		if n.cfg.Name != "" && n.cfg.Name != id.Name {
			return fmt.Errorf("data directory %s holds an interrupted join of node %s, not %s: start with --name %s, or use another --data-dir", n.cfg.DataDir, id.Name, n.cfg.Name, id.Name)
		}
	} else {
		name := n.cfg.Name
		if name == "" {
			name = defaultName()
		}
		id = &identity{ClusterID: tok.ClusterID, NodeID: randomHex(8), Name: name, Schema: SchemaVersion, CreatedAt: time.Now().UTC(), Joining: true, Insecure: n.cfg.Insecure}
	}
	n.ident = id
	n.apiListen = n.pick(n.cfg.APIAddr, id.APIAddr, DefaultAPIAddr)
	n.peerListen = n.pick(n.cfg.PeerListen, id.PeerListen, DefaultPeerListen)
	n.clientListen = n.pick(n.cfg.ClientListen, id.ClientListen, DefaultClientListen)
	peer, client, err := n.etcdURLs(id.Insecure)
	if err != nil {
		return err
	}
	id.PeerURL, id.ClientURL = peer, client
	id.APIAddr, id.PeerListen, id.ClientListen = n.apiListen, n.peerListen, n.clientListen
	if err := id.save(n.cfg.DataDir); err != nil {
		return err
	}
	req := joinRequest{
		Token: n.cfg.Token, Name: id.Name, NodeID: id.NodeID, Version: n.cfg.Version, Schema: SchemaVersion,
		Roles: n.cfg.Roles, APIAddr: n.apiAddr, PeerURL: id.PeerURL, ClientURL: id.ClientURL,
	}
	var hc *http.Client
	if !id.Insecure {
		if hc, req.CSR, err = n.prepareJoinTLS(ctx, tok); err != nil {
			var refused *joinRefused
			if errors.As(err, &refused) {
				os.Remove(filepath.Join(n.cfg.DataDir, identityFile))
			}
			return err
		}
	}
	resp, err := n.requestJoin(ctx, req, hc)
	if err == nil && !id.Insecure {
		err = n.installJoinCert(resp)
	}
	if err != nil {
		var refused *joinRefused
		if errors.As(err, &refused) {
			// nothing was added to the cluster: leave no identity behind
			os.Remove(filepath.Join(n.cfg.DataDir, identityFile))
		}
		return err
	}
	id.Voter, id.MemberID, id.InitialCluster = resp.Voter, resp.MemberID, resp.InitialCluster
	id.Endpoints = resp.Endpoints
	if !resp.Voter {
		id.PeerURL, id.ClientURL = "", ""
	}
	id.Joining = false
	n.log.Info("admitted to the cluster", "cluster", id.ClusterID, "node", id.Name, "voter", resp.Voter, "msg", resp.Message)
	return id.save(n.cfg.DataDir)
}

// requestJoin runs the handshake with the member at --join, retrying while
// the cluster is busy (another join in progress) up to JoinTimeout.
func (n *Node) requestJoin(ctx context.Context, req joinRequest, hc *http.Client) (*joinResponse, error) {
	body, _ := json.Marshal(req)
	url := "http://" + n.cfg.Join + "/v1/join"
	if hc != nil {
		url = "https://" + n.cfg.Join + "/v1/join"
	} else {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	deadline := time.Now().Add(n.cfg.JoinTimeout)
	unreachable := 0
	maybeSent := false // a request may have reached the member
	for {
		hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		hreq.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(hreq)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			unreachable++
			var op *net.OpError
			if !errors.As(err, &op) || op.Op != "dial" {
				maybeSent = true
			}
			if unreachable >= 10 || time.Now().After(deadline) {
				err = fmt.Errorf("cannot reach the hacs agent at %s (--join): %v: is an agent running there, and is %s its --api address?", n.cfg.Join, err, n.cfg.Join)
				if maybeSent {
					return nil, err
				}
				return nil, &joinRefused{err}
			}
			time.Sleep(500 * time.Millisecond)
			continue
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			var jr joinResponse
			if err := json.Unmarshal(b, &jr); err != nil {
				return nil, fmt.Errorf("bad join response from %s: %v", n.cfg.Join, err)
			}
			return &jr, nil
		}
		msg := APIErrorMessage(b)
		if resp.StatusCode == http.StatusServiceUnavailable {
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("the cluster did not admit this node within %v: %s", n.cfg.JoinTimeout, msg)
			}
			n.log.Info("join: cluster busy, retrying", "reason", msg)
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Second):
			}
			continue
		}
		if resp.StatusCode == http.StatusNotFound && msg == "" {
			return nil, &joinRefused{fmt.Errorf("%s (--join) does not answer the hacs join API: is it the --api address of a hacs agent?", n.cfg.Join)}
		}
		return nil, &joinRefused{fmt.Errorf("joining the cluster through %s was refused: %s", n.cfg.Join, msg)}
	}
}

// joinRefused is a definite refusal: the cluster was not changed.
type joinRefused struct{ error }

func (e *joinRefused) Unwrap() error { return e.error }

// admitJoin is the member's side of the handshake.
func (n *Node) admitJoin(ctx context.Context, req joinRequest) (*joinResponse, error) {
	cli := n.Client()
	if cli == nil || !n.IsServing() {
		return nil, errStatus(http.StatusServiceUnavailable, "the agent at %s is not connected to a quorum of its cluster right now: retry, or --join another member", n.apiAddr)
	}
	tok, err := ParseToken(req.Token)
	if err != nil {
		return nil, errStatus(http.StatusBadRequest, "%v", err)
	}
	cid := n.ClusterID()
	if tok.ClusterID != cid {
		return nil, errStatus(http.StatusForbidden, "the token is for cluster %s, but the agent at %s belongs to cluster %s: use a token of this cluster (`hacs cluster token create` on one of its members), or --join a member of cluster %s", tok.ClusterID, n.apiAddr, cid, tok.ClusterID)
	}
	if n.ident.External && n.creds != nil {
		return nil, errStatus(http.StatusConflict, "cluster %s runs on an external etcd: a new node does not join through a member; start it with --etcd-endpoints %s and the store's client credentials (--etcd-cacert, --etcd-cert, --etcd-key): it gets its node certificate from the cluster CA there", cid, strings.Join(n.ident.Endpoints, ","))
	}
	keyHash := csrKeyHash(req.CSR)
	auth, err := n.checkJoinSecret(ctx, cli, tok.Secret, req.NodeID, keyHash)
	if err != nil {
		return nil, err
	}
	if req.Schema != SchemaVersion {
		return nil, errStatus(http.StatusConflict, "version mismatch: the joining node runs hacs %s (key schema %d), this cluster runs hacs %s (key schema %d): install hacs %s on the joining node", req.Version, req.Schema, n.cfg.Version, SchemaVersion, n.cfg.Version)
	}
	if err := ValidName("node", req.Name); err != nil {
		return nil, errStatus(http.StatusBadRequest, "%v", err)
	}
	if !clusterIDRE.MatchString(req.NodeID) {
		return nil, errStatus(http.StatusBadRequest, "invalid node id %q", req.NodeID)
	}
	roles, err := ParseRoles(joinRoles(req.Roles))
	if err != nil {
		return nil, errStatus(http.StatusBadRequest, "%v", err)
	}
	rr, err := cli.Get(ctx, RemovedKey(req.NodeID))
	if err != nil {
		return nil, errStatus(http.StatusServiceUnavailable, "%v", err)
	}
	if len(rr.Kvs) > 0 {
		return nil, errStatus(http.StatusGone, "node id %s was removed from the cluster and can never rejoin: remove the joining node's data directory and join again as a new node", req.NodeID)
	}
	key := NodeConfigKey(req.Name)
	cr, err := cli.Get(ctx, key)
	if err != nil {
		return nil, errStatus(http.StatusServiceUnavailable, "%v", err)
	}
	var modRev int64
	var old NodeConfig
	if len(cr.Kvs) > 0 {
		modRev = cr.Kvs[0].ModRevision
		json.Unmarshal(cr.Kvs[0].Value, &old)
		if old.ID != req.NodeID {
			return nil, errStatus(http.StatusConflict, "the cluster already has a node named %s (id %s): give the joining node another --name, or first remove the old node with `hacs node remove %s`", req.Name, old.ID, req.Name)
		}
	}
	n.mu.Lock()
	info := n.info
	n.mu.Unlock()

	resp := &joinResponse{ClusterID: cid}
	if info.External {
		resp.Endpoints = cli.Endpoints()
		resp.Message = "joined as a client of the external etcd cluster"
	} else {
		ml, err := cli.MemberList(ctx)
		if err != nil {
			return nil, errStatus(http.StatusServiceUnavailable, "listing etcd members: %v", err)
		}
		members := ml.Members
		var mine *memberRef
		voters, learners := 0, 0
		for _, m := range members {
			if m.IsLearner {
				learners++
			} else {
				voters++
			}
			if req.PeerURL != "" && slices.Contains(m.PeerURLs, req.PeerURL) {
				if m.Name != "" && m.Name != req.Name {
					return nil, errStatus(http.StatusConflict, "peer URL %s is already used by etcd member %s: give the joining node another --peer-listen address", req.PeerURL, m.Name)
				}
				mine = &memberRef{id: m.ID}
			}
		}
		switch {
		case mine != nil:
			resp.Voter, resp.MemberID = true, mine.id
		case req.PeerURL != "" && voters+learners < info.Voters:
			ar, err := cli.MemberAddAsLearner(ctx, []string{req.PeerURL})
			if errors.Is(err, rpctypes.ErrTooManyLearners) {
				return nil, errStatus(http.StatusServiceUnavailable, "another node is joining the cluster right now (voters join one at a time)")
			}
			if err != nil {
				return nil, errStatus(http.StatusServiceUnavailable, "adding the etcd member: %v", err)
			}
			resp.Voter, resp.MemberID = true, ar.Member.ID
			members = ar.Members
			n.log.Info("join: added etcd learner", "name", req.Name, "member", fmt.Sprintf("%x", ar.Member.ID), "peer", req.PeerURL)
		}
		var ic []string
		for _, m := range members {
			name := m.Name
			if m.ID == resp.MemberID && resp.Voter {
				name = req.Name
			} else if name == "" {
				name = fmt.Sprintf("m%x", m.ID)
			}
			for _, u := range m.PeerURLs {
				ic = append(ic, name+"="+u)
			}
		}
		if resp.Voter {
			resp.InitialCluster = strings.Join(ic, ",")
			resp.Message = fmt.Sprintf("joined as a voting etcd member (learner until in sync); the cluster wants %d voters", info.Voters)
		} else {
			resp.Message = fmt.Sprintf("joined as a non-voting etcd client: the cluster already has its %d voters", info.Voters)
			if slices.Contains(roles, RoleWitness) {
				resp.Message += "; WARNING: a witness only helps when it votes"
			}
		}
		resp.Endpoints = voterEndpoints(&clientv3.MemberListResponse{Members: members})
	}
	if n.creds != nil {
		if req.CSR == "" {
			return nil, errStatus(http.StatusBadRequest, "this cluster runs with TLS: the joining node sent no certificate request (was it started with --insecure? drop that flag)")
		}
		if resp.Cert, resp.CRL, err = n.issueJoinCert(ctx, cli, req); err != nil {
			return nil, err
		}
	}
	cfg := NodeConfig{
		ID: req.NodeID, Name: req.Name, Roles: roles, APIAddr: req.APIAddr, Voter: resp.Voter, MemberID: resp.MemberID,
		Version: req.Version, Schema: req.Schema, JoinedAt: old.JoinedAt,
	}
	if resp.Voter {
		cfg.PeerURL, cfg.ClientURL = req.PeerURL, req.ClientURL
	}
	if cfg.JoinedAt.IsZero() {
		cfg.JoinedAt = time.Now().UTC()
	}
	b, _ := json.Marshal(cfg)
	cmps, ops := auth.consume(req.NodeID, keyHash)
	tr, err := cli.Txn(ctx).If(append([]clientv3.Cmp{
		clientv3.Compare(clientv3.ModRevision(key), "=", modRev),
		clientv3.Compare(clientv3.CreateRevision(RemovedKey(req.NodeID)), "=", 0),
	}, cmps...)...).Then(append([]clientv3.Op{clientv3.OpPut(key, string(b))}, ops...)...).Commit()
	if err != nil {
		return nil, errStatus(http.StatusServiceUnavailable, "registering the node: %v", err)
	}
	if !tr.Succeeded {
		return nil, errStatus(http.StatusServiceUnavailable, "the node record changed while joining; retrying")
	}
	if len(cr.Kvs) == 0 {
		n.emit(Event{Kind: EventNodeJoined, Message: fmt.Sprintf("node %s joined through %s (roles %v, voter %v)", req.Name, n.ident.Name, roles, resp.Voter), Fields: map[string]string{"joined": req.Name}})
	}
	return resp, nil
}

type memberRef struct{ id uint64 }

// promoteLoop promotes this node's etcd learner to a voter once it has
// caught up with the leader.
func (n *Node) promoteLoop() {
	defer n.wg.Done()
	if n.etcd == nil || !n.etcd.Server.IsLearner() {
		return
	}
	ctx := n.lifeCtx
	id := uint64(n.etcd.Server.MemberID())
	for ctx.Err() == nil {
		if !n.etcd.Server.IsLearner() {
			break
		}
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		_, err := n.cli.MemberPromote(cctx, id)
		cancel()
		if err == nil || errors.Is(err, rpctypes.ErrMemberNotLearner) {
			break
		}
		delay := time.Second
		if errors.Is(err, rpctypes.ErrMemberLearnerNotReady) {
			delay = 200 * time.Millisecond
		} else {
			n.log.Debug("promoting the etcd learner", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
	}
	if ctx.Err() != nil {
		return
	}
	n.log.Info("this node is now a voting etcd member")
	n.refreshEndpoints(ctx)
}

// endpointsLoop follows the etcd membership, so that the client (and the
// next start) reach the current voters.
func (n *Node) endpointsLoop() {
	defer n.wg.Done()
	if n.ident.External {
		return
	}
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-n.lifeCtx.Done():
			return
		case <-t.C:
			n.refreshEndpoints(n.lifeCtx)
		}
	}
}

func (n *Node) refreshEndpoints(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	ml, err := n.cli.MemberList(cctx)
	cancel()
	if err != nil {
		return
	}
	eps := voterEndpoints(ml)
	if len(eps) == 0 {
		return
	}
	slices.Sort(eps)
	n.identMu.Lock()
	changed := !slices.Equal(eps, n.ident.Endpoints)
	if changed {
		n.ident.Endpoints = eps
		if err := n.ident.save(n.cfg.DataDir); err != nil {
			n.log.Warn("saving the etcd endpoints", "err", err)
		}
	}
	n.identMu.Unlock()
	if changed || (n.etcd != nil && !slices.Contains(n.cli.Endpoints(), n.ident.ClientURL)) {
		n.cli.SetEndpoints(n.clientEndpoints()...)
		n.log.Debug("etcd endpoints updated", "endpoints", eps)
	}
}
