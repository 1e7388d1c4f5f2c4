package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// The link to an external etcd (--etcd-endpoints) and the cluster PKI on
// such a store (docs/SECURITY.md "External etcd").
//
// The link is secured with the store's own credentials, the ones etcdctl
// takes: --etcd-cacert (the CA of the etcd servers), --etcd-cert and
// --etcd-key (a client certificate the store accepts). hacs does not
// manage them; every node has them, remembered in its node.json.
//
// Above the store a cluster on an external etcd is secured like one with
// the embedded etcd: the node that creates the cluster record also creates
// the cluster CA and the admin API token (in the same create-if-absent
// transaction); every other node, holding the store credentials, reads the
// CA from the store and certifies its own key (enrollExternal): the store
// credentials take the place of the join token.

// StoreTLSFiles are the client credentials of an external etcd (PEM files;
// etcdctl's --cacert, --cert and --key).
type StoreTLSFiles struct {
	CACert string `json:"etcd_cacert,omitempty"`
	Cert   string `json:"etcd_cert,omitempty"`
	Key    string `json:"etcd_key,omitempty"`
}

func (f StoreTLSFiles) empty() bool { return f == StoreTLSFiles{} }

// merge returns f with the files given in g replacing its own.
func (f StoreTLSFiles) merge(g StoreTLSFiles) StoreTLSFiles {
	if g.CACert != "" {
		f.CACert = g.CACert
	}
	if g.Cert != "" {
		f.Cert = g.Cert
	}
	if g.Key != "" {
		f.Key = g.Key
	}
	return f
}

// absolute makes the paths absolute (they are remembered for restarts).
func (f StoreTLSFiles) absolute() (StoreTLSFiles, error) {
	for _, p := range []*string{&f.CACert, &f.Cert, &f.Key} {
		if *p == "" {
			continue
		}
		a, err := filepath.Abs(*p)
		if err != nil {
			return f, err
		}
		*p = a
	}
	return f, nil
}

// storeTLSConfig checks the store credentials against the endpoints and
// returns the TLS configuration of the store client (nil for plain http://
// endpoints). The client certificate is reread when its files change, so
// that an operator can replace it without restarting the agent.
func storeTLSConfig(endpoints []string, f StoreTLSFiles) (*tls.Config, error) {
	https, plain := 0, 0
	for _, e := range endpoints {
		switch {
		case strings.HasPrefix(e, "https://"):
			https++
		case strings.HasPrefix(e, "http://"):
			plain++
		default:
			return nil, fmt.Errorf("--etcd-endpoints %s: want http://HOST:PORT or https://HOST:PORT", e)
		}
	}
	if https > 0 && plain > 0 {
		return nil, fmt.Errorf("--etcd-endpoints %s mixes https:// and http:// endpoints: an etcd cluster serves its clients either with TLS or without", strings.Join(endpoints, ","))
	}
	if (f.Cert == "") != (f.Key == "") {
		return nil, errors.New("--etcd-cert and --etcd-key go together: the client certificate the external etcd accepts, and its key")
	}
	if plain > 0 {
		if !f.empty() {
			return nil, fmt.Errorf("--etcd-cacert, --etcd-cert and --etcd-key are for an etcd served over TLS, but --etcd-endpoints %s are plain http://: give the https:// endpoints of the store", strings.Join(endpoints, ","))
		}
		return nil, nil
	}
	if f.CACert == "" {
		return nil, fmt.Errorf("--etcd-endpoints %s are https://, but no --etcd-cacert was given: give the CA certificate that signed the etcd servers' certificates (etcdctl's --cacert)", strings.Join(endpoints, ","))
	}
	caPEM, err := os.ReadFile(f.CACert)
	if err != nil {
		return nil, fmt.Errorf("--etcd-cacert: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("--etcd-cacert %s holds no PEM certificate: give the CA certificate of the etcd servers", f.CACert)
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}
	if f.Cert != "" {
		cc := &storeClientCert{cert: f.Cert, key: f.Key}
		if _, err := cc.load(); err != nil {
			return nil, err
		}
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return cc.load()
		}
	}
	return tc, nil
}

// storeClientCert is the client certificate of the store link, reloaded
// when its files change.
type storeClientCert struct {
	cert, key string
	mu        sync.Mutex
	cur       *tls.Certificate
	stamp     string
}

func (c *storeClientCert) load() (*tls.Certificate, error) {
	stamp := ""
	for _, p := range []string{c.cert, c.key} {
		st, err := os.Stat(p)
		if err != nil {
			stamp += "?"
			continue
		}
		stamp += fmt.Sprintf("%d.%d;", st.ModTime().UnixNano(), st.Size())
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur != nil && stamp == c.stamp {
		return c.cur, nil
	}
	cert, err := loadStoreKeyPair(c.cert, c.key)
	if err != nil {
		if c.cur != nil {
			return c.cur, nil // being replaced: keep the one that worked
		}
		return nil, err
	}
	c.cur, c.stamp = cert, stamp
	return cert, nil
}

func loadStoreKeyPair(certFile, keyFile string) (*tls.Certificate, error) {
	if _, err := os.ReadFile(certFile); err != nil {
		return nil, fmt.Errorf("--etcd-cert: %w", err)
	}
	if _, err := os.ReadFile(keyFile); err != nil {
		return nil, fmt.Errorf("--etcd-key: %w", err)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		if strings.Contains(err.Error(), "does not match") {
			return nil, fmt.Errorf("--etcd-cert %s and --etcd-key %s do not belong together (%v): give the key of that certificate", certFile, keyFile, err)
		}
		return nil, fmt.Errorf("--etcd-cert %s / --etcd-key %s: %w", certFile, keyFile, err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err == nil {
		if time.Now().After(leaf.NotAfter) {
			return nil, fmt.Errorf("--etcd-cert %s expired on %s: the external etcd will refuse it; give a current client certificate", certFile, leaf.NotAfter.UTC().Format(time.RFC3339))
		}
		cert.Leaf = leaf
	}
	return &cert, nil
}

// storeLinkError explains a failure to talk to the external etcd that
// retrying does not cure (nil when it may be passing: the store down, a
// network problem).
func storeLinkError(endpoints []string, f StoreTLSFiles, err error) error {
	if err == nil {
		return nil
	}
	s := err.Error()
	eps := strings.Join(endpoints, ",")
	switch {
	case strings.Contains(s, "certificate required") || strings.Contains(s, "bad certificate") ||
		strings.Contains(s, "unknown certificate authority") || strings.Contains(s, "certificate revoked") ||
		strings.Contains(s, "expired certificate") || strings.Contains(s, "unsupported certificate"):
		if f.Cert == "" {
			return fmt.Errorf("the external etcd at %s refused this node: it requires a client certificate, and none was given: give --etcd-cert and --etcd-key (a client certificate of the store, as for etcdctl) (%v)", eps, err)
		}
		return fmt.Errorf("the external etcd at %s refused this node's client certificate %s: it is not one the store accepts (another CA, expired or revoked?): give --etcd-cert and --etcd-key of a client of this store (%v)", eps, f.Cert, err)
	case strings.Contains(s, "x509: certificate signed by unknown authority") || strings.Contains(s, "certificate is not valid for") ||
		strings.Contains(s, "x509: certificate is valid for") || strings.Contains(s, "doesn't contain any IP SANs"):
		return fmt.Errorf("the external etcd at %s presented a server certificate that --etcd-cacert %s does not verify (wrong CA file, or the endpoint's name is not in the certificate): %v", eps, f.CACert, err)
	case strings.Contains(s, "first record does not look like a TLS handshake"):
		return fmt.Errorf("the external etcd at %s does not speak TLS: use http:// endpoints for it (and no --etcd-cacert/--etcd-cert/--etcd-key), or enable TLS on the store (%v)", eps, err)
	case strings.Contains(s, "user name is empty") || strings.Contains(s, "permission denied") || strings.Contains(s, "invalid auth token"):
		return fmt.Errorf("the external etcd at %s refused access (etcd authentication): the client certificate's common name must be an etcd user with read and write access to the /hacs/ prefix (%v)", eps, err)
	}
	return nil
}

// probeStore finds out why the external etcd cannot be used when its
// client only says that its deadline passed (it retries refused
// handshakes): a TLS handshake of its own shows a refused client
// certificate or a server certificate the CA does not verify. nil when
// the handshakes go through (or cannot be made: the store may be down).
func probeStore(ctx context.Context, endpoints []string, tc *tls.Config, f StoreTLSFiles) error {
	if tc == nil {
		return nil
	}
	for _, ep := range endpoints {
		u, err := url.Parse(ep)
		if err != nil || u.Host == "" {
			continue
		}
		cfg := tc.Clone()
		cfg.NextProtos = []string{"h2"}
		if cfg.ServerName == "" {
			cfg.ServerName = u.Hostname()
		}
		d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 2 * time.Second}, Config: cfg}
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		conn, err := d.DialContext(cctx, "tcp", u.Host)
		cancel()
		if err == nil {
			// with TLS 1.3 the server refuses a client certificate after
			// the handshake; an accepted gRPC client hears its settings
			conn.SetReadDeadline(time.Now().Add(2 * time.Second))
			_, err = conn.Read(make([]byte, 1))
			conn.Close()
		}
		if e := storeLinkError(endpoints, f, err); e != nil {
			return e
		}
	}
	return nil
}

// storeTLS is the TLS configuration of this node's store client: the
// external etcd's credentials, or the node certificate for the embedded
// etcd.
func (n *Node) storeTLS() *tls.Config {
	if n.ident != nil && n.ident.External {
		return n.extTLS
	}
	return n.TLSClientConfig()
}

// setupStoreLink checks the external etcd's endpoints and credentials (of
// the flags, or remembered in node.json) and remembers them.
func (n *Node) setupStoreLink() error {
	id := n.ident
	f, err := id.StoreTLS.merge(n.cfg.EtcdTLS).absolute()
	if err != nil {
		return err
	}
	tc, err := storeTLSConfig(id.Endpoints, f)
	if err != nil {
		return err
	}
	id.StoreTLS, n.extTLS = f, tc
	if tc == nil {
		n.log.Warn("the link to the external etcd is NOT encrypted (http:// endpoints): whoever can see its traffic reads the cluster's records and credentials; serve the store over TLS and give --etcd-endpoints https://... with --etcd-cacert, --etcd-cert and --etcd-key", "endpoints", strings.Join(id.Endpoints, ","))
	}
	return nil
}

// bootstrapExternal brings a new node of a secure cluster on an external
// etcd to its certificate: it creates the cluster (record, CA, admin
// token) if the store holds none, and otherwise enrolls in the one there.
func (n *Node) bootstrapExternal(ctx context.Context) error {
	eps := n.ident.Endpoints
	cli, err := newClient(eps, n.extTLS)
	if err != nil {
		return fmt.Errorf("connecting to the external etcd at %s: %w", strings.Join(eps, ","), err)
	}
	defer cli.Close()
	// a refused certificate is known at once (the store client would
	// only report its deadline)
	if e := probeStore(ctx, eps, n.extTLS, n.ident.StoreTLS); e != nil {
		return e
	}
	deadline := time.Now().Add(n.cfg.JoinTimeout)
	var lastErr error
	for {
		lastErr = n.bootstrapExternalOnce(ctx, cli)
		if lastErr == nil {
			return nil
		}
		if errors.Is(lastErr, errLostCreate) {
			n.log.Info(lastErr.Error())
			continue
		}
		var perm permanentError
		if errors.As(lastErr, &perm) {
			return perm.err
		}
		if e := storeLinkError(eps, n.ident.StoreTLS, lastErr); e != nil {
			return e
		}
		if e := probeStore(ctx, eps, n.extTLS, n.ident.StoreTLS); e != nil {
			return e
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cannot use the external etcd at %s (--etcd-endpoints) within %v: %v: is it running, and are these its client URLs?", strings.Join(eps, ","), n.cfg.JoinTimeout, lastErr)
		}
		n.log.Info("waiting for the external etcd", "endpoints", strings.Join(eps, ","), "err", lastErr)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// errLostCreate: another node created the cluster first.
var errLostCreate = errors.New("another node created the cluster at the same time; enrolling in it")

func (n *Node) bootstrapExternalOnce(ctx context.Context, cli *clientv3.Client) error {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := cli.Get(cctx, KeyClusterInfo)
	if err != nil {
		return err
	}
	if len(resp.Kvs) > 0 {
		var info ClusterInfo
		if err := json.Unmarshal(resp.Kvs[0].Value, &info); err != nil {
			return permanent(fmt.Errorf("the cluster identity record %s is corrupt: %w", KeyClusterInfo, err))
		}
		return n.enrollExternal(cctx, cli, info)
	}
	// no cluster yet: create it, with its CA
	id := n.ident
	id.ClusterID = randomHex(8)
	if err := n.createPKI(id.ClusterID, id.NodeID, id.Name, n.certHosts()); err != nil {
		return permanent(fmt.Errorf("creating the cluster CA: %w", err))
	}
	created, err := n.createClusterRecord(cctx, cli, id.ClusterID)
	if err != nil || !created {
		// someone else was first (or we do not know): start afresh
		os.RemoveAll(TLSFiles(n.cfg.DataDir).Dir)
		id.ClusterID, n.newCA, n.newAdminClient = "", nil, nil
		if err == nil {
			err = errLostCreate
		}
		return err
	}
	return id.save(n.cfg.DataDir)
}

// enrollExternal gives a new node of a cluster on an external etcd its
// certificate: the CA from the store certifies a key made here (the key
// never leaves this node); the certificate is recorded like one a join
// issues, so that removing the node revokes it.
func (n *Node) enrollExternal(ctx context.Context, cli *clientv3.Client, info ClusterInfo) error {
	id := n.ident
	if info.Schema != SchemaVersion {
		return permanent(fmt.Errorf("cluster %s uses key schema %d (created by hacs %s), this agent (hacs %s) uses schema %d: run the same hacs version on every node", info.ID, info.Schema, info.Version, n.cfg.Version, SchemaVersion))
	}
	r, err := cli.Get(ctx, KeyCA, clientv3.WithCountOnly())
	if err != nil {
		return err
	}
	if r.Count == 0 {
		return permanent(fmt.Errorf("cluster %s on the external etcd at %s runs without TLS and API authentication (it was created with --insecure, or by a hacs without the cluster PKI): start this node with --insecure to join it as it is, or create a new cluster on another store (or prefix) to have TLS", info.ID, strings.Join(id.Endpoints, ",")))
	}
	a, err := n.loadCA(ctx, cli)
	if err != nil {
		return err
	}
	keyPEM, csr, err := newNodeKey(id.Name)
	if err != nil {
		return permanent(err)
	}
	cert, err := a.sign(csr, info.ID, id.NodeID, id.Name, n.certHosts(), NodeCertValidity)
	if err != nil {
		return permanent(fmt.Errorf("certifying this node's key with the cluster CA: %w", err))
	}
	serial, exp, _ := certSerial(cert)
	if _, err := cli.Put(ctx, certKey(id.NodeID, serial), exp.UTC().Format(time.RFC3339)); err != nil {
		return err
	}
	n.ident.ClusterID = info.ID // revokedSerials and friends read it
	l, err := n.revokedSerials(ctx, cli)
	if err != nil {
		n.ident.ClusterID = ""
		return err
	}
	crl, err := a.crl(l)
	if err != nil {
		return permanent(err)
	}
	p := TLSFiles(n.cfg.DataDir)
	for _, f := range []struct {
		path string
		b    []byte
	}{{p.CACert, a.certPEM}, {p.Key, keyPEM}, {p.Cert, cert}, {p.CRL, crl}} {
		if err := writeTLSFile(f.path, f.b); err != nil {
			return permanent(fmt.Errorf("writing %s: %w", f.path, err))
		}
	}
	n.log.Info("enrolled in the cluster on the external etcd: node certificate issued by the cluster CA", "cluster", info.ID, "serial", fmt.Sprintf("%x", serial))
	return id.save(n.cfg.DataDir)
}
