package cluster

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Keys of the cluster PKI in the store.
const (
	// KeyCA holds the cluster CA (certificate and key, JSON caRecord).
	KeyCA = Prefix + "pki/ca"
	// PrefixCerts lists the certificates issued to each node:
	// /hacs/pki/certs/<node id>/<serial hex> -> expiry (RFC 3339).
	PrefixCerts = Prefix + "pki/certs/"
)

type caRecord struct {
	Cert string `json:"cert"`
	Key  string `json:"key"`
	// Chain: intermediates sent with the certificates this CA signs (the
	// cross-signed certificate of a rotated-in CA by its predecessor)
	Chain string `json:"chain,omitempty"`
}

func certKey(nodeID string, serial *big.Int) string {
	return fmt.Sprintf("%s%s/%x", PrefixCerts, nodeID, serial)
}

// Secure reports whether this node runs with the cluster PKI (TLS on every
// link); false only for clusters created with --insecure.
func (n *Node) Secure() bool { return n.creds != nil }

// Scheme is the URL scheme of the agents' API: https, or http for an
// --insecure cluster.
func (n *Node) Scheme() string {
	if n.creds != nil {
		return "https"
	}
	return "http"
}

// TLSClientConfig is the TLS configuration to reach other nodes (the node
// certificate as client certificate; the cluster CA as the only root; the
// revocation list checked). Nil for an --insecure cluster.
func (n *Node) TLSClientConfig() *tls.Config {
	if n.creds == nil {
		return nil
	}
	return n.creds.ClientConfig()
}

// TLSServerConfig is the TLS configuration of a listener of this node:
// with requireClient only nodes of this cluster may connect. Nil for an
// --insecure cluster.
func (n *Node) TLSServerConfig(requireClient bool) *tls.Config {
	if n.creds == nil {
		return nil
	}
	return n.creds.ServerConfig(requireClient)
}

// HTTPClient is an HTTP client for other nodes' APIs (mutual TLS with the
// node certificate in a secure cluster). Use it with Scheme().
func (n *Node) HTTPClient() *http.Client {
	n.httpOnce.Do(func() {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = n.TLSClientConfig()
		if n.creds != nil {
			// tracked: cut if the other node's certificate is revoked
			tr.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
				return n.dialTLS(ctx, network, addr, "API client")
			}
		}
		n.httpCli = &http.Client{Transport: tr}
	})
	return n.httpCli
}

// setupCreds loads the TLS files of the data directory, and wires logging
// and revocation into them.
func (n *Node) setupCreds() error {
	c, err := loadCreds(n.cfg.DataDir)
	if err != nil {
		return fmt.Errorf("%w: the TLS files of this node (%s) are missing or broken; restore them, or remove %s and join the cluster again as a new node", err, TLSFiles(n.cfg.DataDir).Dir, n.cfg.DataDir)
	}
	c.onRefused = func(what string, err error) {
		n.log.Warn("TLS: refused a "+what+" certificate", "err", err)
	}
	c.revoked = n.isRevokedSerial
	n.creds = c
	return nil
}

// isRevokedSerial is the revocation check of every TLS handshake of this
// node's own listeners and clients: the certificates issued to removed
// nodes.
func (n *Node) isRevokedSerial(serial *big.Int) bool {
	n.revMu.RLock()
	defer n.revMu.RUnlock()
	_, ok := n.revoked[serial.String()]
	return ok
}

// createPKI creates the cluster CA and this (first) node's certificate.
func (n *Node) createPKI(clusterID, nodeID, name string, hosts []string) error {
	p := TLSFiles(n.cfg.DataDir)
	caPEM, caKey, err := newCA(clusterID)
	if err != nil {
		return err
	}
	a, err := parseCA(caPEM, caKey)
	if err != nil {
		return err
	}
	keyPEM, csr, err := newNodeKey(name)
	if err != nil {
		return err
	}
	cert, err := a.sign(csr, clusterID, nodeID, name, hosts, NodeCertValidity)
	if err != nil {
		return err
	}
	crl, err := a.crl(nil)
	if err != nil {
		return err
	}
	for _, f := range []struct {
		path string
		b    []byte
	}{{p.CAKey, caKey}, {p.CACert, caPEM}, {p.Key, keyPEM}, {p.Cert, cert}, {p.CRL, crl}} {
		if err := writeTLSFile(f.path, f.b); err != nil {
			return fmt.Errorf("writing %s: %w", f.path, err)
		}
	}
	n.newCA = &caRecord{Cert: string(caPEM), Key: string(caKey)}
	if n.newAdminClient, err = newAdminClientCert(a, clusterID, "cluster creation on node "+name); err != nil {
		return fmt.Errorf("the administrator's export client certificate: %w", err)
	}
	return nil
}

// loadCA reads the cluster CA (with its key) from the store.
func (n *Node) loadCA(ctx context.Context, cli *clientv3.Client) (*ca, error) {
	r, err := cli.Get(ctx, KeyCA)
	if err != nil {
		return nil, err
	}
	if len(r.Kvs) == 0 {
		return nil, errors.New("the cluster store holds no CA (a cluster created with --insecure?)")
	}
	var rec caRecord
	if err := json.Unmarshal(r.Kvs[0].Value, &rec); err != nil {
		return nil, fmt.Errorf("the cluster CA record is corrupt: %w", err)
	}
	a, err := parseCA([]byte(rec.Cert), []byte(rec.Key))
	if err != nil {
		return nil, err
	}
	a.chain = []byte(rec.Chain)
	return a, nil
}

// joinCA is the answer of GET /v1/join/ca: the cluster CA certificate and
// its MAC under the join secret (caMAC).
type joinCA struct {
	ClusterID string `json:"cluster_id"`
	CA        string `json:"ca"`
	MAC       string `json:"mac"`
}

func (n *Node) handleJoinCA(w http.ResponseWriter, r *http.Request) {
	cli := n.Client()
	if cli == nil || n.creds == nil {
		writeError(w, errStatus(http.StatusServiceUnavailable, "the agent at %s is not connected to its cluster right now: retry, or --join another member", n.apiAddr))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	key, err := n.joinMACKey(ctx, cli, r.URL.Query().Get("id"))
	if err != nil {
		writeError(w, errStatus(http.StatusServiceUnavailable, "%v", err))
		return
	}
	// what this node trusts: during a CA rotation, the old and the new CA
	caPEM, err := os.ReadFile(n.creds.paths.CACert)
	if err != nil {
		caPEM = n.creds.ca.certPEM
	}
	writeJSON(w, http.StatusOK, joinCA{ClusterID: n.ClusterID(), CA: string(caPEM), MAC: caMAC(key, caPEM)})
}

// fetchJoinCA asks the member at --join for the cluster CA and checks that
// it comes from the holder of the join secret, before anything secret is
// sent: a man in the middle cannot answer with its own CA.
func (n *Node) fetchJoinCA(ctx context.Context, tok Token) ([]byte, error) {
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	deadline := time.Now().Add(n.cfg.JoinTimeout)
	unreachable := 0
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+n.cfg.Join+"/v1/join/ca?id="+joinTokenID(tok.Secret), nil)
		if err != nil {
			return nil, err
		}
		resp, err := hc.Do(req)
		if err != nil {
			if strings.Contains(err.Error(), "server gave HTTP response to HTTPS client") {
				return nil, &joinRefused{fmt.Errorf("the agent at %s (--join) speaks plain HTTP: its cluster was created with --insecure; start this node with --insecure too", n.cfg.Join)}
			}
			unreachable++
			if unreachable >= 10 || time.Now().After(deadline) || ctx.Err() != nil {
				return nil, &joinRefused{fmt.Errorf("cannot reach the hacs agent at %s (--join): %v: is an agent running there, and is %s its --api address?", n.cfg.Join, err, n.cfg.Join)}
			}
			time.Sleep(500 * time.Millisecond)
			continue
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if resp.StatusCode == http.StatusServiceUnavailable && time.Now().Before(deadline) {
			time.Sleep(time.Second)
			continue
		}
		if resp.StatusCode != http.StatusOK {
			return nil, &joinRefused{fmt.Errorf("the agent at %s (--join) did not give its cluster CA: %s", n.cfg.Join, APIErrorMessage(b))}
		}
		var jc joinCA
		if err := json.Unmarshal(b, &jc); err != nil {
			return nil, &joinRefused{fmt.Errorf("bad CA answer from %s: %v", n.cfg.Join, err)}
		}
		if jc.ClusterID != tok.ClusterID {
			return nil, &joinRefused{fmt.Errorf("joining the cluster through %s was refused: the token is for cluster %s, but the agent at %s belongs to cluster %s: use this cluster's token, or --join a member of cluster %s", n.cfg.Join, tok.ClusterID, n.cfg.Join, jc.ClusterID, tok.ClusterID)}
		}
		if jc.MAC != caMAC(joinKey(tok.Secret), []byte(jc.CA)) {
			return nil, &joinRefused{fmt.Errorf("joining the cluster through %s was refused: wrong join token for cluster %s: the cluster CA that %s shows is not authenticated by this token's secret; it may be mistyped; make a new one with `hacs cluster token create` on a member (if the token is right, something between this node and %s impersonates the cluster)", n.cfg.Join, tok.ClusterID, n.cfg.Join, n.cfg.Join)}
		}
		if _, err := parseCA([]byte(jc.CA), nil); err != nil {
			return nil, &joinRefused{err}
		}
		return []byte(jc.CA), nil
	}
}

// joinTLSClient verifies the member at --join against the cluster CA.
func joinTLSClient(caPEM []byte) (*http.Client, error) {
	tc, err := CATLSConfig(caPEM)
	if err != nil {
		return nil, err
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}, nil
}

// CATLSConfig is the TLS configuration of a client of the agents' API
// without a node certificate (the CLI): the server must present a node
// certificate the cluster CA (caPEM) signed. Host names are not checked:
// every certificate of the cluster's CA is one of its nodes.
func CATLSConfig(caPEM []byte) (*tls.Config, error) {
	a, err := parseCA(caPEM, nil)
	if err != nil {
		return nil, err
	}
	c := &tlsCreds{ca: a}
	if pool, n := poolFromPEM(caPEM); n > 1 {
		c.trust.Store(pool) // a bundle: during a CA rotation
	}
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // verified below against the cluster CA
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			leaf, err := c.verify(raw, x509.ExtKeyUsageServerAuth)
			if err == nil {
				if kind, _, name := CertIdentity(leaf); kind == CertExportClient {
					// (it has no server usage either: explicit anyway)
					err = fmt.Errorf("the export client certificate %q is no agent's: the agents of this cluster present node certificates", name)
				}
			}
			return err
		},
	}, nil
}

// issueJoinCert signs a joining node's certificate request and records the
// certificate; with it goes the current revocation list.
func (n *Node) issueJoinCert(ctx context.Context, cli *clientv3.Client, req joinRequest) (cert string, crl []byte, err error) {
	a, err := n.loadCA(ctx, cli)
	if err != nil {
		return "", nil, errStatus(http.StatusServiceUnavailable, "%v", err)
	}
	hosts := hostsOf(req.APIAddr, req.PeerURL, req.ClientURL)
	c, err := a.sign([]byte(req.CSR), n.ClusterID(), req.NodeID, req.Name, hosts, NodeCertValidity)
	if err != nil {
		return "", nil, errStatus(http.StatusBadRequest, "signing the node certificate: %v", err)
	}
	serial, exp, _ := certSerial(c)
	if _, err := cli.Put(ctx, certKey(req.NodeID, serial), exp.UTC().Format(time.RFC3339)); err != nil {
		return "", nil, errStatus(http.StatusServiceUnavailable, "recording the node certificate: %v", err)
	}
	l, err := n.revokedSerials(ctx, cli)
	if err != nil {
		return "", nil, errStatus(http.StatusServiceUnavailable, "%v", err)
	}
	cb, err := a.crl(l)
	if err != nil {
		return "", nil, err
	}
	return string(c), cb, nil
}

// revokedSerials are the serials of the certificates issued to removed
// nodes.
func (n *Node) revokedSerials(ctx context.Context, cli *clientv3.Client) ([]*big.Int, error) {
	rr, err := cli.Get(ctx, PrefixRemoved, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, err
	}
	var out []*big.Int
	for _, kv := range rr.Kvs {
		id := strings.TrimPrefix(string(kv.Key), PrefixRemoved)
		cr, err := cli.Get(ctx, PrefixCerts+id+"/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			return nil, err
		}
		for _, c := range cr.Kvs {
			s := string(c.Key[strings.LastIndexByte(string(c.Key), '/')+1:])
			if v, ok := new(big.Int).SetString(s, 16); ok {
				out = append(out, v)
			}
		}
	}
	clients, err := n.revokedClientSerials(ctx, cli) // revoked export client certificates
	if err != nil {
		return nil, err
	}
	return append(out, clients...), nil
}

// revocationLoop keeps the revocation list current: in memory for this
// node's own TLS checks, and in DATA_DIR/tls/revoked.crl for the embedded
// etcd's listeners (read at every connection).
func (n *Node) revocationLoop() {
	defer n.wg.Done()
	if n.creds == nil {
		return
	}
	ctx := n.lifeCtx
	cli := n.cli
	for {
		wctx, cancel := context.WithCancel(ctx)
		wch := cli.Watch(clientv3.WithRequireLeader(wctx), PrefixRemoved, clientv3.WithPrefix())
		cch := cli.Watch(clientv3.WithRequireLeader(wctx), PrefixClientCerts, clientv3.WithPrefix())
		if err := n.refreshRevocations(ctx); err != nil && ctx.Err() == nil {
			n.log.Debug("refreshing the certificate revocation list", "err", err)
		}
		t := time.NewTimer(30 * time.Second)
	inner:
		for {
			select {
			case <-ctx.Done():
				cancel()
				t.Stop()
				return
			case _, ok := <-wch:
				if !ok {
					break inner
				}
				if err := n.refreshRevocations(ctx); err != nil && ctx.Err() == nil {
					n.log.Warn("refreshing the certificate revocation list", "err", err)
				}
			case _, ok := <-cch: // export client certificates revoked
				if !ok {
					break inner
				}
				if err := n.refreshRevocations(ctx); err != nil && ctx.Err() == nil {
					n.log.Warn("refreshing the certificate revocation list", "err", err)
				}
			case <-t.C:
				break inner
			}
		}
		cancel()
		t.Stop()
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (n *Node) refreshRevocations(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	l, err := n.revokedSerials(cctx, n.cli)
	if err != nil {
		return err
	}
	retired, err := n.retiredSerials(cctx, n.cli)
	if err != nil {
		return err
	}
	set := map[string]struct{}{}
	for _, s := range l {
		set[s.String()] = struct{}{}
	}
	n.revMu.Lock()
	added := addedSerials(n.revoked, set)
	changed := added || len(set) != len(n.revoked) || len(retired) != n.retired
	n.revoked = set
	n.retired = len(retired)
	n.revMu.Unlock()
	if added {
		// connections already open with a certificate revoked now
		n.cutRevoked()
	}
	if !changed {
		return nil
	}
	a, err := n.loadCA(cctx, n.cli)
	if err != nil {
		return err
	}
	crl, err := a.crl(append(l, retired...))
	if err != nil {
		return err
	}
	n.log.Info("certificate revocation list updated", "revoked", len(l), "old_ca", len(retired))
	return writeTLSFile(n.creds.paths.CRL, crl)
}

// renewLoop renews this node's certificate once two thirds of its validity
// have passed (the new one is used from the next handshake on: no
// restart, no dropped connection).
func (n *Node) renewLoop() {
	defer n.wg.Done()
	if n.creds == nil {
		return
	}
	for {
		leaf := n.creds.Leaf()
		wait := time.Hour
		if leaf != nil {
			life := leaf.NotAfter.Sub(leaf.NotBefore)
			wait = min(time.Until(leaf.NotBefore.Add(life*2/3)), 12*time.Hour)
		}
		if wait <= 0 {
			if err := n.RenewCertificate(n.lifeCtx); err != nil {
				n.log.Warn("renewing the node certificate (retrying in a minute)", "err", err)
				wait = time.Minute
			} else {
				continue
			}
		}
		select {
		case <-n.lifeCtx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// RenewCertificate issues this node a new certificate for its own key and
// installs it; the old one stays valid until it expires (or the node is
// removed).
func (n *Node) RenewCertificate(ctx context.Context) error {
	if n.creds == nil {
		return errors.New("this cluster runs without TLS (--insecure)")
	}
	cli := n.Client()
	if cli == nil {
		return ErrNotServing
	}
	n.renewMu.Lock()
	defer n.renewMu.Unlock()
	keyPEM, err := os.ReadFile(n.creds.paths.Key)
	if err != nil {
		return err
	}
	csr, err := csrFromKey(n.ident.Name, keyPEM)
	if err != nil {
		return err
	}
	a, err := n.loadCA(ctx, cli)
	if err != nil {
		return err
	}
	n.identMu.Lock()
	hosts := hostsOf(n.apiAddr, n.ident.PeerURL, n.ident.ClientURL)
	n.identMu.Unlock()
	cert, err := a.sign(csr, n.ClusterID(), n.ident.NodeID, n.ident.Name, hosts, NodeCertValidity)
	if err != nil {
		return err
	}
	serial, exp, _ := certSerial(cert)
	tr, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(RemovedKey(n.ident.NodeID)), "=", 0)).
		Then(clientv3.OpPut(certKey(n.ident.NodeID, serial), exp.UTC().Format(time.RFC3339))).Commit()
	if err != nil {
		return err
	}
	if !tr.Succeeded {
		return n.removedError()
	}
	if err := writeTLSFile(n.creds.paths.Cert, cert); err != nil {
		return err
	}
	n.log.Info("node certificate renewed", "serial", fmt.Sprintf("%x", serial), "expires", exp.UTC().Format(time.RFC3339))
	n.emit(Event{Kind: EventCertRenewed, Message: fmt.Sprintf("node %s renewed its certificate (serial %x, expires %s)", n.ident.Name, serial, exp.UTC().Format(time.RFC3339))})
	return nil
}

// EventCertRenewed records a node certificate renewal.
const EventCertRenewed = "cert-renewed"

// sniffListener logs connections that speak plaintext to a TLS port
// (the TLS layer answers them with an error).
type sniffListener struct {
	net.Listener
	log  *slog.Logger
	what string
}

func (l sniffListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &sniffConn{Conn: c, r: bufio.NewReader(c), log: l.log, what: l.what}, nil
}

type sniffConn struct {
	net.Conn
	r    *bufio.Reader
	once sync.Once
	log  *slog.Logger
	what string
}

func (c *sniffConn) Read(p []byte) (int, error) {
	c.once.Do(func() {
		// under the caller's deadline (net/http's TLS handshake
		// timeout): lifting it here let a client that sent one byte
		// and stalled hold its connection forever
		b, err := c.r.Peek(1)
		if err == nil && b[0] != 0x16 { // not a TLS handshake record
			c.log.Warn("refused a plaintext connection to the TLS-only "+c.what+" port: use https:// (the CLI does, with the cluster CA)", "from", c.RemoteAddr().String())
		}
	})
	return c.r.Read(p)
}

// tlsErrorLog routes the HTTP server's TLS handshake errors to the log.
func tlsErrorLog(l *slog.Logger) *log.Logger {
	return slog.NewLogLogger(l.Handler(), slog.LevelWarn)
}

// prepareJoinTLS fetches and checks the cluster CA, and makes (or reuses,
// for an interrupted join) this node's key and its certificate request.
func (n *Node) prepareJoinTLS(ctx context.Context, tok Token) (*http.Client, string, error) {
	p := TLSFiles(n.cfg.DataDir)
	caPEM, err := n.fetchJoinCA(ctx, tok)
	if err != nil {
		return nil, "", err
	}
	if err := writeTLSFile(p.CACert, caPEM); err != nil {
		return nil, "", err
	}
	keyPEM, err := os.ReadFile(p.Key)
	var csr []byte
	if err == nil {
		csr, err = csrFromKey(n.ident.Name, keyPEM)
	}
	if err != nil {
		keyPEM, csr, err = newNodeKey(n.ident.Name)
		if err != nil {
			return nil, "", err
		}
		if err := writeTLSFile(p.Key, keyPEM); err != nil {
			return nil, "", err
		}
	}
	hc, err := joinTLSClient(caPEM)
	if err != nil {
		return nil, "", err
	}
	return hc, string(csr), nil
}

// installJoinCert writes the certificate and revocation list the cluster
// gave this node.
func (n *Node) installJoinCert(resp *joinResponse) error {
	p := TLSFiles(n.cfg.DataDir)
	if resp.Cert == "" || len(resp.CRL) == 0 {
		return errors.New("the cluster admitted this node but sent no certificate: is the member at --join an older hacs?")
	}
	if err := writeTLSFile(p.Cert, []byte(resp.Cert)); err != nil {
		return err
	}
	return writeTLSFile(p.CRL, resp.CRL)
}

// probeRevoked finds out whether the members refuse this node's
// certificate although it is valid: then it was revoked, which happens
// when the node is removed from the cluster.
func (n *Node) probeRevoked(ctx context.Context, endpoints []string) error {
	leaf := n.creds.Leaf()
	if leaf == nil || time.Now().After(leaf.NotAfter) {
		return nil
	}
	refused := 0
	for _, ep := range endpoints {
		addr := trimScheme(ep)
		d := &net.Dialer{Timeout: 2 * time.Second}
		cfg := n.creds.ClientConfig()
		cfg.NextProtos = []string{"h2"}
		conn, err := tls.DialWithDialer(d, "tcp", addr, cfg)
		if err != nil {
			if strings.Contains(err.Error(), "bad certificate") || strings.Contains(err.Error(), "revoked") {
				refused++
			}
			continue
		}
		conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		b := make([]byte, 1)
		_, err = conn.Read(b)
		conn.Close()
		// a gRPC server speaks first (its HTTP/2 settings); a refused
		// client is disconnected right after the handshake
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			refused++
		}
	}
	if refused > 0 && refused == len(endpoints) {
		return fmt.Errorf("%w: every member refuses its certificate (serial %x), which the cluster revoked when it removed this node (%s, id %s); to bring this machine back, remove %s and join again as a new node with --join and --token", ErrRemoved, leaf.SerialNumber, n.ident.Name, n.ident.NodeID, n.cfg.DataDir)
	}
	return nil
}

// handleRenew renews this node's certificate now (POST /v1/pki/renew).
func (n *Node) handleRenew(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	if err := n.RenewCertificate(ctx); err != nil {
		writeError(w, err)
		return
	}
	leaf := n.creds.Leaf()
	writeJSON(w, http.StatusOK, map[string]string{"node": n.ident.Name, "serial": fmt.Sprintf("%x", leaf.SerialNumber), "expires": leaf.NotAfter.UTC().Format(time.RFC3339)})
}
