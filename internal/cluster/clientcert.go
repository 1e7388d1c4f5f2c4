package cluster

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Export client certificates (docs/SECURITY.md).
//
// Besides its nodes, the cluster CA signs certificates for the clients of
// the volume exports (a VM host's qemu, nbdinfo, nbdcopy): `hacs cluster
// auth client-cert create NAME`. Such a certificate is valid for TLS client
// authentication only (no server use), carries no host name or address,
// and names its holder with the URI hacs://CLUSTER/client/NAME, where a
// node certificate has hacs://CLUSTER/node/ID. It opens the volume exports
// and nothing else: every place that needs a node (the replication links,
// etcd's peer and client ports, the agents' API as a node, the node-only
// API routes) checks for a node certificate (requireNode), and etcd, which
// cannot run that check, accepts only certificates with the host name
// "localhost", which every node certificate has and no client certificate
// has (nodeOnlyHostname).
//
// The key of a client certificate is made where it is used (by the CLI)
// and never sent: the API signs a certificate request. The cluster records
// each certificate (name, serial, expiry, who created it) under
// PrefixClientCerts; a revoked one stays there, marked, and its serial is
// on the revocation list of every node (and in DATA_DIR/tls/revoked.crl)
// until it expires.

// PrefixClientCerts holds the export client certificates:
// /hacs/pki/clients/<name>/<serial hex> -> ClientCert.
const PrefixClientCerts = Prefix + "pki/clients/"

// DefaultClientCertValidity is how long an export client certificate is
// valid unless asked otherwise.
const DefaultClientCertValidity = 365 * 24 * time.Hour

// nodeOnlyHostname is the host name every node certificate has (sign adds
// it) and no export client certificate has: etcd's listeners, which cannot
// look at the certificate's URI, let in only certificates valid for it.
const nodeOnlyHostname = "localhost"

// Files of an x509 client directory, laid out as nbdinfo's and nbdcopy's
// tls-certificates=DIR and qemu's tls-creds-x509,dir=DIR,endpoint=client
// expect.
const (
	ClientCAFile   = "ca-cert.pem"
	ClientCertFile = "client-cert.pem"
	ClientKeyFile  = "client-key.pem"
)

// AdminClientDir is the directory in the data directory of the node that
// created the cluster holding the administrator's client credentials: the
// CLI's (ca.crt, token) and the export client certificate "admin"
// (ca-cert.pem, client-cert.pem, client-key.pem). Copy it to
// ~/.config/hacs on the administrator's machine.
const AdminClientDir = "admin-client"

// CertKind is what a certificate of the cluster CA stands for.
type CertKind int

const (
	// CertOther is not a certificate of a hacs cluster.
	CertOther CertKind = iota
	// CertNode is a node's certificate: hacs://CLUSTER/node/ID.
	CertNode
	// CertExportClient is an export client's: hacs://CLUSTER/client/NAME.
	CertExportClient
)

func (k CertKind) String() string {
	switch k {
	case CertNode:
		return "node certificate"
	case CertExportClient:
		return "export client certificate"
	}
	return "certificate of no hacs cluster"
}

// CertIdentity reads what a (verified) certificate identifies: its kind,
// cluster and name (the node id, or the client's name).
func CertIdentity(cert *x509.Certificate) (kind CertKind, clusterID, name string) {
	for _, u := range cert.URIs {
		if u.Scheme != "hacs" || u.Host == "" {
			continue
		}
		if id, ok := strings.CutPrefix(u.Path, "/node/"); ok && id != "" {
			return CertNode, u.Host, id
		}
		if id, ok := strings.CutPrefix(u.Path, "/client/"); ok && id != "" {
			return CertExportClient, u.Host, id
		}
	}
	return CertOther, "", ""
}

// clientCertURI names an export client in its certificate.
func clientCertURI(clusterID, name string) string {
	return "hacs://" + clusterID + "/client/" + name
}

// describeCert names a certificate for an error message.
func describeCert(cert *x509.Certificate) string {
	kind, cid, name := CertIdentity(cert)
	switch kind {
	case CertNode:
		return fmt.Sprintf("the node certificate of %q (cluster %s)", cert.Subject.CommonName, cid)
	case CertExportClient:
		return fmt.Sprintf("the export client certificate %q (cluster %s)", name, cid)
	}
	return fmt.Sprintf("the certificate of %q", cert.Subject.CommonName)
}

// clusterID is the cluster of this node's own certificate ("" for a
// client without one).
func (c *tlsCreds) clusterID() string {
	if c.paths.Cert == "" {
		return ""
	}
	leaf := c.Leaf()
	if leaf == nil {
		return ""
	}
	_, cid, _ := CertIdentity(leaf)
	return cid
}

// requireNode refuses a verified certificate that is not a node
// certificate of this cluster: the check of every link only nodes may
// use; where says what needs a node ("only nodes of this cluster may
// connect to this port").
func (c *tlsCreds) requireNode(cert *x509.Certificate, where string) error {
	kind, cid, name := CertIdentity(cert)
	switch {
	case kind == CertExportClient:
		return fmt.Errorf("the export client certificate %q (%s) opens volume exports only: %s", name, clientCertURI(cid, name), where)
	case kind != CertNode:
		return fmt.Errorf("%s is not a hacs node certificate (no hacs://CLUSTER/node/ID name): %s", describeCert(cert), where)
	case c.clusterID() != "" && cid != c.clusterID():
		return fmt.Errorf("%s names cluster %s, this is cluster %s: %s", describeCert(cert), cid, c.clusterID(), where)
	}
	return nil
}

// requireExportClient accepts a verified certificate that may open volume
// exports: a node's or an export client's of this cluster.
func (c *tlsCreds) requireExportClient(cert *x509.Certificate) error {
	kind, cid, _ := CertIdentity(cert)
	switch {
	case kind == CertOther:
		return fmt.Errorf("%s is neither a node nor an export client certificate of a hacs cluster: create one with `hacs cluster auth client-cert create NAME`", describeCert(cert))
	case c.clusterID() != "" && cid != c.clusterID():
		return fmt.Errorf("%s names cluster %s, this is cluster %s", describeCert(cert), cid, c.clusterID())
	}
	return nil
}

// exportServerConfig is the TLS configuration of the volume exports: the
// node certificate as server certificate; a client certificate is asked
// for and, when one is presented, it must be a node or export client
// certificate of this cluster, valid and not revoked, or the handshake
// fails. A client without one gets an unauthenticated TLS connection
// (which the exports that need authentication refuse: nbd.Export.ClientAuth).
func (c *tlsCreds) exportServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return c.certificate()
		},
		// no resumption: VerifyPeerCertificate (revocation) is not
		// called on a resumed session (see ServerConfig)
		SessionTicketsDisabled: true,
		ClientAuth:             tls.RequestClientCert,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return nil
			}
			leaf, err := c.verify(raw, x509.ExtKeyUsageClientAuth)
			if err == nil {
				err = c.requireExportClient(leaf)
			}
			if err != nil {
				err = fmt.Errorf("volume export: %w", err)
				c.refused("export client", err)
			}
			return err
		},
	}
}

// ExportTLSServerConfig is the TLS configuration of this node's volume
// exports (see exportServerConfig). Nil for an --insecure cluster.
func (n *Node) ExportTLSServerConfig() *tls.Config {
	if n.creds == nil {
		return nil
	}
	return n.creds.exportServerConfig()
}

// ExportClientTLS is the TLS configuration of an NBD client of this
// cluster's volume exports running on a node: the node certificate as
// client certificate, the server checked like any other node.
func (n *Node) ExportClientTLS() *tls.Config { return n.TLSClientConfig() }

// ClientCert is the record of an export client certificate.
type ClientCert struct {
	Name      string     `json:"name"`
	Serial    string     `json:"serial"` // hex
	NotAfter  time.Time  `json:"not_after"`
	CreatedAt time.Time  `json:"created_at"`
	CreatedBy string     `json:"created_by"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
	RevokedBy string     `json:"revoked_by,omitempty"`
}

// Expired reports whether the certificate is past its validity.
func (c ClientCert) Expired(now time.Time) bool { return now.After(c.NotAfter) }

func clientCertKey(name, serialHex string) string {
	return PrefixClientCerts + name + "/" + serialHex
}

// NewClientKey makes the key of an export client certificate and the
// certificate request to send (the key stays with the caller).
func NewClientKey(name string) (keyPEM, csrPEM []byte, err error) {
	return newNodeKey(name)
}

// signClient issues an export client certificate for the key of csrPEM:
// client authentication only, no host names, the hacs://CLUSTER/client/NAME
// URI. Only the key comes from the request.
func (a *ca) signClient(csrPEM []byte, clusterID, name string, validity time.Duration) ([]byte, error) {
	csr, err := a.request(csrPEM)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(clientCertURI(clusterID, name))
	if err != nil {
		return nil, err
	}
	now := time.Now()
	notAfter := now.Add(validity)
	if notAfter.After(a.cert.NotAfter) {
		notAfter = a.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: "export client " + name, Organization: []string{"hacs"}, OrganizationalUnit: []string{"cluster " + clusterID}},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{u},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, csr.PublicKey, a.key)
	if err != nil {
		return nil, err
	}
	return pemEncode("CERTIFICATE", der), nil
}

// Events of the export client certificates.
const (
	EventClientCertCreated = "client-cert-created"
	EventClientCertRevoked = "client-cert-revoked"
)

// IssueClientCert signs an export client certificate for the request
// csrPEM and records it; it returns the certificate and the cluster CA
// certificate (PEM).
func (n *Node) IssueClientCert(ctx context.Context, name string, csrPEM []byte, validity time.Duration, by string) (certPEM, caPEM []byte, rec ClientCert, err error) {
	if n.creds == nil {
		return nil, nil, rec, errStatus(http.StatusBadRequest, "this cluster runs without TLS (--insecure): it has no certificate authority")
	}
	if err := ValidClientCertName(name); err != nil {
		return nil, nil, rec, errStatus(http.StatusBadRequest, "%v", err)
	}
	if validity <= 0 {
		validity = DefaultClientCertValidity
	}
	if validity < time.Minute {
		return nil, nil, rec, errStatus(http.StatusBadRequest, "validity %s is too short (at least a minute)", validity)
	}
	cli := n.Client()
	if cli == nil {
		return nil, nil, rec, ErrNotServing
	}
	existing, err := n.clientCerts(ctx, cli)
	if err != nil {
		return nil, nil, rec, errStatus(http.StatusServiceUnavailable, "%v", err)
	}
	now := time.Now()
	for _, c := range existing {
		if c.Name == name && c.RevokedAt == nil && !c.Expired(now) {
			return nil, nil, rec, errStatus(http.StatusConflict, "an export client certificate named %s exists (serial %s, valid until %s): revoke it first (`hacs cluster auth client-cert revoke %s`), or choose another name", name, c.Serial, c.NotAfter.Format(time.RFC3339), name)
		}
	}
	a, err := n.loadCA(ctx, cli)
	if err != nil {
		return nil, nil, rec, errStatus(http.StatusServiceUnavailable, "%v", err)
	}
	certPEM, err = a.signClient(csrPEM, n.ClusterID(), name, validity)
	if err != nil {
		return nil, nil, rec, errStatus(http.StatusBadRequest, "signing the client certificate: %v", err)
	}
	serial, exp, err := certSerial(certPEM)
	if err != nil {
		return nil, nil, rec, err
	}
	rec = ClientCert{Name: name, Serial: fmt.Sprintf("%x", serial), NotAfter: exp.UTC(), CreatedAt: now.UTC(), CreatedBy: by}
	b, _ := json.Marshal(rec)
	key := clientCertKey(name, rec.Serial)
	tr, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).Then(clientv3.OpPut(key, string(b))).Commit()
	if err != nil {
		return nil, nil, rec, errStatus(http.StatusServiceUnavailable, "recording the client certificate: %v", err)
	}
	if !tr.Succeeded {
		return nil, nil, rec, errStatus(http.StatusConflict, "serial %s is taken: try again", rec.Serial)
	}
	n.emit(Event{Kind: EventClientCertCreated, Message: fmt.Sprintf("export client certificate %s (serial %s, valid until %s) created by %s", name, rec.Serial, rec.NotAfter.Format(time.RFC3339), by),
		Fields: map[string]string{"client": name, "serial": rec.Serial, "by": by}})
	return certPEM, a.certPEM, rec, nil
}

// ValidClientCertName checks the name of an export client certificate.
func ValidClientCertName(name string) error {
	if !tokenNameRE.MatchString(name) {
		return fmt.Errorf("invalid client certificate name %q: use 1 to 63 lower-case letters, digits, '.', '_' or '-'", name)
	}
	return nil
}

// ClientCertRecorded reports whether the cluster ever issued an export
// client certificate named name (revoked or expired ones count: a new
// certificate may be issued under the name).
func (n *Node) ClientCertRecorded(ctx context.Context, name string) (bool, error) {
	cli := n.Client()
	if cli == nil {
		return false, errStatus(http.StatusServiceUnavailable, "%v", ErrNotServing)
	}
	resp, err := cli.Get(ctx, PrefixClientCerts+name+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return false, errStatus(http.StatusServiceUnavailable, "reading the export client certificates: %v", err)
	}
	return resp.Count > 0, nil
}

// clientCerts lists the recorded export client certificates, by name then
// creation.
func (n *Node) clientCerts(ctx context.Context, cli *clientv3.Client) ([]ClientCert, error) {
	resp, err := cli.Get(ctx, PrefixClientCerts, clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	out := []ClientCert{}
	for _, kv := range resp.Kvs {
		var c ClientCert
		if json.Unmarshal(kv.Value, &c) == nil {
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(a, b ClientCert) int {
		if c := strings.Compare(a.Name, b.Name); c != 0 {
			return c
		}
		return a.CreatedAt.Compare(b.CreatedAt)
	})
	return out, nil
}

// RevokeClientCert revokes every certificate issued under name: each node
// refuses them from its next TLS handshake on.
func (n *Node) RevokeClientCert(ctx context.Context, name, by string) ([]ClientCert, error) {
	cli := n.Client()
	if cli == nil {
		return nil, ErrNotServing
	}
	resp, err := cli.Get(ctx, PrefixClientCerts+name+"/", clientv3.WithPrefix())
	if err != nil {
		return nil, errStatus(http.StatusServiceUnavailable, "%v", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, errStatus(http.StatusNotFound, "no export client certificate named %s (`hacs cluster auth client-cert list`)", name)
	}
	now := time.Now().UTC()
	var done []ClientCert
	for _, kv := range resp.Kvs {
		var c ClientCert
		if json.Unmarshal(kv.Value, &c) != nil || c.RevokedAt != nil {
			continue
		}
		c.RevokedAt, c.RevokedBy = &now, by
		b, _ := json.Marshal(c)
		tr, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(string(kv.Key)), "=", kv.ModRevision)).Then(clientv3.OpPut(string(kv.Key), string(b))).Commit()
		if err != nil {
			return done, errStatus(http.StatusServiceUnavailable, "%v", err)
		}
		if tr.Succeeded {
			done = append(done, c)
		}
	}
	if len(done) == 0 {
		return nil, errStatus(http.StatusConflict, "the export client certificate %s is revoked already", name)
	}
	serials := make([]string, len(done))
	for i, c := range done {
		serials[i] = c.Serial
	}
	n.emit(Event{Kind: EventClientCertRevoked, Message: fmt.Sprintf("export client certificate %s (serial %s) revoked by %s", name, strings.Join(serials, ", "), by),
		Fields: map[string]string{"client": name, "serial": strings.Join(serials, ","), "by": by}})
	// this node refuses it right away (the others as soon as they see the
	// change)
	if err := n.refreshRevocations(ctx); err != nil {
		n.log.Warn("refreshing the certificate revocation list", "err", err)
	}
	return done, nil
}

// revokedClientSerials are the serials of the revoked export client
// certificates that have not expired yet.
func (n *Node) revokedClientSerials(ctx context.Context, cli *clientv3.Client) ([]*big.Int, error) {
	all, err := n.clientCerts(ctx, cli)
	if err != nil {
		return nil, err
	}
	var out []*big.Int
	for _, c := range all {
		if c.RevokedAt == nil {
			continue
		}
		if v, ok := new(big.Int).SetString(c.Serial, 16); ok {
			out = append(out, v)
		}
	}
	return out, nil
}

// clientCertRequest is the body of POST /v1/auth/client-certs.
type clientCertRequest struct {
	Name string `json:"name"`
	CSR  string `json:"csr"`
	// TTL is the validity ("8760h"; default a year).
	TTL string `json:"ttl,omitempty"`
}

// ClientCertResponse is the answer of POST /v1/auth/client-certs.
type ClientCertResponse struct {
	ClientCert
	Cert string `json:"cert"` // PEM
	CA   string `json:"ca"`   // the cluster CA certificate, PEM
}

func (n *Node) handleClientCertCreate(w http.ResponseWriter, r *http.Request) {
	var body clientCertRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&body); err != nil {
		writeError(w, errStatus(http.StatusBadRequest, `want a JSON body {"name": "NAME", "csr": "PEM certificate request", "ttl": "8760h"}`))
		return
	}
	var ttl time.Duration
	if body.TTL != "" {
		d, err := time.ParseDuration(body.TTL)
		if err != nil {
			writeError(w, errStatus(http.StatusBadRequest, "ttl %q: %v", body.TTL, err))
			return
		}
		ttl = d
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	cert, caPEM, rec, err := n.IssueClientCert(ctx, body.Name, []byte(body.CSR), ttl, actor(r.Context(), "unknown"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, ClientCertResponse{ClientCert: rec, Cert: string(cert), CA: string(caPEM)})
}

func (n *Node) handleClientCertList(w http.ResponseWriter, r *http.Request) {
	cli := n.Client()
	if cli == nil {
		writeError(w, ErrNotServing)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	out, err := n.clientCerts(ctx, cli)
	if err != nil {
		writeError(w, errStatus(http.StatusServiceUnavailable, "%v", err))
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (n *Node) handleClientCertRevoke(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	done, err := n.RevokeClientCert(ctx, r.PathValue("name"), actor(r.Context(), "unknown"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, done)
}

// adminClientCert is the export client certificate "admin" made with the
// cluster (written to DATA_DIR/admin-client once the cluster exists).
type adminClientCert struct {
	rec             ClientCert
	keyPEM, certPEM []byte
	caPEM           []byte
}

// newAdminClientCert issues the administrator's export client certificate
// with a new cluster's CA.
func newAdminClientCert(a *ca, clusterID, by string) (*adminClientCert, error) {
	keyPEM, csr, err := NewClientKey("admin")
	if err != nil {
		return nil, err
	}
	cert, err := a.signClient(csr, clusterID, "admin", DefaultClientCertValidity)
	if err != nil {
		return nil, err
	}
	serial, exp, err := certSerial(cert)
	if err != nil {
		return nil, err
	}
	return &adminClientCert{
		rec:    ClientCert{Name: "admin", Serial: fmt.Sprintf("%x", serial), NotAfter: exp.UTC(), CreatedAt: time.Now().UTC(), CreatedBy: by},
		keyPEM: keyPEM, certPEM: cert, caPEM: a.certPEM,
	}, nil
}

// writeAdminClientDir writes DATA_DIR/admin-client: a complete client
// configuration directory (the CLI's ca.crt and token, and the x509 client
// files of nbdinfo, nbdcopy and qemu).
func writeAdminClientDir(dataDir string, ac *adminClientCert, token string) error {
	d := filepath.Join(dataDir, AdminClientDir)
	if err := os.MkdirAll(d, 0o700); err != nil {
		return err
	}
	files := []struct {
		name string
		b    []byte
	}{{CACertFile, ac.caPEM}, {ClientCAFile, ac.caPEM}, {ClientCertFile, ac.certPEM}, {ClientKeyFile, ac.keyPEM}}
	if token != "" {
		files = append(files, struct {
			name string
			b    []byte
		}{"token", []byte(token + "\n")})
	}
	for _, f := range files {
		if err := writeTLSFile(filepath.Join(d, f.name), f.b); err != nil {
			return fmt.Errorf("writing %s: %w", filepath.Join(d, f.name), err)
		}
	}
	return nil
}
