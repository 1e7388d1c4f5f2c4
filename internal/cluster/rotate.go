package cluster

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// CA rotation without downtime (docs/SECURITY.md "Rotating the CA").
//
// The rotation is staged so that no link ever breaks:
//
//  1. trust: an admin starts it; a new CA is created (a new key) together
//     with a cross certificate: the new CA's name and key signed by the old
//     CA. Both are published in KeyCARotation. Every member adds the new CA
//     to what it trusts (DATA_DIR/tls/ca.crt becomes the bundle old+new,
//     and the node's own verifiers take it at once) and acknowledges.
//  2. reissue: once every member trusts both, the DC makes the new CA the
//     signing CA (KeyCA, with the cross certificate as chain). Every node
//     then has its key certified by the new CA (a certificate request for
//     its own key; keys never leave their node) and sends
//     leaf + cross certificate from its next handshake on. A verifier that
//     still trusts only the old CA (an embedded etcd started before the
//     rotation: it reads its CA file only at start) accepts the new
//     certificates through the cross certificate.
//  3. finished: once every member runs a certificate of the new CA, an
//     admin finishes the rotation: every member drops the old CA from its
//     trust (ca.crt holds the new CA only), and the certificates recorded
//     before the switch go into the revocation list that the embedded etcd
//     reads at every connection.

// Keys of a CA rotation in the store.
const (
	// KeyCARotation holds the current or last CA rotation (CARotation).
	KeyCARotation = Prefix + "pki/rotation"
	// PrefixCARotationAcks: /hacs/pki/rotation-acks/<node id> -> rotationAck.
	PrefixCARotationAcks = Prefix + "pki/rotation-acks/"
	// PrefixEtcdTrust: /hacs/pki/etcd-trust/<node id> -> etcdTrust: the
	// CAs the node's embedded etcd was started with (it keeps them until
	// its next start).
	PrefixEtcdTrust = Prefix + "pki/etcd-trust/"
)

// etcdTrust is what an embedded etcd member trusts (SHA-256 of each CA
// certificate, hex).
type etcdTrust struct {
	CAs []string  `json:"cas"`
	At  time.Time `json:"started_at"`
}

// caDigests are the SHA-256 of the certificates in a PEM bundle.
func caDigests(b []byte) []string {
	var out []string
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out
		}
		if blk.Type == "CERTIFICATE" {
			d := sha256.Sum256(blk.Bytes)
			out = append(out, hex.EncodeToString(d[:]))
		}
	}
}

// publishEtcdTrust records what this node's embedded etcd trusts.
func (n *Node) publishEtcdTrust(ctx context.Context) error {
	if n.etcd == nil || len(n.etcdTrustPEM) == 0 {
		return nil
	}
	b, _ := json.Marshal(etcdTrust{CAs: caDigests(n.etcdTrustPEM), At: time.Now().UTC()})
	_, err := n.cli.Put(ctx, PrefixEtcdTrust+n.ident.NodeID, string(b))
	return err
}

// checkEtcdTrust refuses a new rotation while the embedded etcd of a
// voter still trusts only an older CA than the current one: the next
// re-issue would break its peer links (the cross certificate chains the
// new CA to the current one only).
func (n *Node) checkEtcdTrust(ctx context.Context, cli *clientv3.Client, current *ca) error {
	if n.ident.External {
		return nil
	}
	sum := sha256.Sum256(current.cert.Raw)
	want := hex.EncodeToString(sum[:])
	for _, m := range n.Members().Nodes {
		if !m.Voter {
			continue
		}
		r, err := cli.Get(ctx, PrefixEtcdTrust+m.ID)
		if err != nil {
			return err
		}
		var et etcdTrust
		if len(r.Kvs) == 0 || json.Unmarshal(r.Kvs[0].Value, &et) != nil {
			return errStatus(http.StatusConflict, "node %s has not reported which CAs its embedded etcd trusts (an agent of an earlier hacs?): restart it with this version first", m.Name)
		}
		if !slices.Contains(et.CAs, want) {
			return errStatus(http.StatusConflict, "the embedded etcd of node %s was started (%s) before the current CA was trusted, and keeps trusting only an older one until its agent restarts: restart the agents that were not restarted since the last CA rotation finished (one at a time), then rotate again", m.Name, et.At.Format(time.RFC3339))
		}
	}
	return nil
}

// Phases of a CA rotation.
const (
	RotationTrust    = "trust"
	RotationReissue  = "reissue"
	RotationFinished = "finished"
)

// What a node acknowledges.
const (
	ackTrust    = "trust"    // it trusts both CAs
	ackReissued = "reissued" // it runs a certificate of the new CA
	ackFinished = "finished" // it trusts the new CA only
)

func ackRank(s string) int {
	switch s {
	case ackTrust:
		return 1
	case ackReissued:
		return 2
	case ackFinished:
		return 3
	}
	return 0
}

// CARotation is the record of a CA rotation.
type CARotation struct {
	ID         string     `json:"id"`
	Phase      string     `json:"phase"`
	StartedAt  time.Time  `json:"started_at"`
	StartedBy  string     `json:"started_by,omitempty"`
	ReissueAt  *time.Time `json:"reissue_at,omitempty"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
	FinishedBy string     `json:"finished_by,omitempty"`
	OldCA      string     `json:"old_ca"`
	NewCA      string     `json:"new_ca"`
	// NewKey is the new CA's key until it becomes the signing CA (KeyCA).
	NewKey string `json:"new_key,omitempty"`
	// Cross is the new CA's certificate signed by the old CA.
	Cross string `json:"cross"`
	// SwitchRev: the store revision at which the new CA began to sign;
	// certificates recorded before it were signed by the old CA.
	SwitchRev int64 `json:"switch_rev,omitempty"`
}

type rotationAck struct {
	ID     string    `json:"id"`
	Phase  string    `json:"phase"`
	Serial string    `json:"serial,omitempty"`
	At     time.Time `json:"at"`
}

// RotationNode is one member's progress in a CA rotation.
type RotationNode struct {
	Name   string `json:"name"`
	ID     string `json:"id"`
	Online bool   `json:"online"`
	// Ack: "" (nothing yet), trust, reissued or finished
	Ack    string `json:"ack,omitempty"`
	Serial string `json:"serial,omitempty"`
}

// CARotationStatus is what `hacs cluster rotate-ca --status` shows.
type CARotationStatus struct {
	Rotation *CARotation    `json:"rotation,omitempty"` // without keys; nil: never rotated
	Nodes    []RotationNode `json:"nodes,omitempty"`
	// Trust is the PEM bundle of the CAs the cluster trusts now (what
	// clients should use as their CA file).
	Trust string `json:"trust"`
	// OldClientCerts are the export client certificates (names) the old CA
	// signed that are still valid and not revoked: they stop working at
	// --finish; create new ones first (hacs cluster auth client-cert create).
	OldClientCerts []string `json:"old_client_certs,omitempty"`
	// Next says what happens next.
	Next string `json:"next"`
}

// poolFromPEM is the pool of every certificate in b, and how many.
func poolFromPEM(b []byte) (*x509.CertPool, int) {
	pool := x509.NewCertPool()
	n := 0
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return pool, n
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		if c, err := x509.ParseCertificate(blk.Bytes); err == nil {
			pool.AddCert(c)
			n++
		}
	}
}

// roots are the CAs this node trusts.
func (c *tlsCreds) roots() *x509.CertPool {
	if p := c.trust.Load(); p != nil {
		return p
	}
	return c.ca.pool
}

// crossSign certifies the CA newCert (its name and key) with the old CA:
// an intermediate that chains the new CA's certificates to the old CA.
func crossSign(old *ca, newCert *x509.Certificate) ([]byte, error) {
	signer, ok := old.key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, errors.New("the cluster CA key cannot sign")
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               newCert.Subject,
		SubjectKeyId:          newCert.SubjectKeyId,
		NotBefore:             newCert.NotBefore,
		NotAfter:              newCert.NotAfter,
		KeyUsage:              newCert.KeyUsage,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true, // it signs node certificates only
	}
	if old.cert.NotAfter.Before(tmpl.NotAfter) {
		tmpl.NotAfter = old.cert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, old.cert, newCert.PublicKey, signer)
	if err != nil {
		return nil, err
	}
	return pemEncode("CERTIFICATE", der), nil
}

func parseCert(p string) (*x509.Certificate, error) {
	b, _ := pem.Decode([]byte(p))
	if b == nil {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(b.Bytes)
}

// getRotation reads the rotation record (nil: none) and its revision.
func getRotation(ctx context.Context, cli *clientv3.Client) (*CARotation, int64, error) {
	r, err := cli.Get(ctx, KeyCARotation)
	if err != nil {
		return nil, 0, err
	}
	if len(r.Kvs) == 0 {
		return nil, 0, nil
	}
	var rec CARotation
	if err := json.Unmarshal(r.Kvs[0].Value, &rec); err != nil {
		return nil, 0, fmt.Errorf("the CA rotation record is corrupt: %w", err)
	}
	return &rec, r.Kvs[0].ModRevision, nil
}

// StartCARotation starts a CA rotation (phase trust).
func (n *Node) StartCARotation(ctx context.Context) (*CARotationStatus, error) {
	cli := n.Client()
	if n.creds == nil {
		return nil, errStatus(http.StatusConflict, "this cluster runs without TLS (--insecure): it has no CA to rotate")
	}
	if cli == nil {
		return nil, errStatus(http.StatusServiceUnavailable, "%v", ErrNotServing)
	}
	rec, rev, err := getRotation(ctx, cli)
	if err != nil {
		return nil, err
	}
	if rec != nil && rec.Phase != RotationFinished {
		return nil, errStatus(http.StatusConflict, "a CA rotation (%s, started %s) is in phase %s: see `hacs cluster rotate-ca --status`; finish it first", rec.ID, rec.StartedAt.Format(time.RFC3339), rec.Phase)
	}
	old, err := n.loadCA(ctx, cli)
	if err != nil {
		return nil, err
	}
	if err := n.checkEtcdTrust(ctx, cli, old); err != nil {
		return nil, err
	}
	if old.cert.MaxPathLen == 0 || old.cert.MaxPathLenZero {
		return nil, errStatus(http.StatusConflict, "the cluster CA (%s) was created by an earlier hacs with path length 0: it cannot cross-sign its successor, which a rotation without downtime needs (the embedded etcd reads its trusted CAs only at start)", old.cert.Subject.CommonName)
	}
	id := randomHex(4)
	newPEM, newKey, _, err := newCANamed(fmt.Sprintf("hacs cluster %s CA %s", n.ClusterID(), id))
	if err != nil {
		return nil, err
	}
	nc, err := parseCert(string(newPEM))
	if err != nil {
		return nil, err
	}
	cross, err := crossSign(old, nc)
	if err != nil {
		return nil, err
	}
	nr := CARotation{ID: id, Phase: RotationTrust, StartedAt: time.Now().UTC(), StartedBy: actor(ctx, n.ident.Name),
		OldCA: string(old.certPEM), NewCA: string(newPEM), NewKey: string(newKey), Cross: string(cross)}
	b, _ := json.Marshal(nr)
	tr, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(KeyCARotation), "=", rev)).
		Then(clientv3.OpPut(KeyCARotation, string(b)), clientv3.OpDelete(PrefixCARotationAcks, clientv3.WithPrefix())).Commit()
	if err != nil {
		return nil, err
	}
	if !tr.Succeeded {
		return nil, errStatus(http.StatusConflict, "another CA rotation was started at the same time")
	}
	n.emit(Event{Kind: EventCARotation, Message: fmt.Sprintf("CA rotation %s started by %s: new CA %q; every member now adds it to its trust", id, nr.StartedBy, nc.Subject.CommonName), Fields: map[string]string{"by": nr.StartedBy}})
	n.log.Info("CA rotation started", "id", id, "new_ca", nc.Subject.CommonName)
	n.kickRotation()
	return n.CARotationStatus(ctx)
}

// FinishCARotation ends a rotation whose members all run certificates of
// the new CA: the old CA is no longer trusted.
func (n *Node) FinishCARotation(ctx context.Context) (*CARotationStatus, error) {
	cli := n.Client()
	if cli == nil {
		return nil, errStatus(http.StatusServiceUnavailable, "%v", ErrNotServing)
	}
	st, err := n.CARotationStatus(ctx)
	if err != nil {
		return nil, err
	}
	rec, rev, err := getRotation(ctx, cli)
	if err != nil {
		return nil, err
	}
	if rec == nil {
		return nil, errStatus(http.StatusConflict, "no CA rotation was started: `hacs cluster rotate-ca` starts one")
	}
	switch rec.Phase {
	case RotationFinished:
		return st, nil
	case RotationTrust:
		return nil, errStatus(http.StatusConflict, "CA rotation %s is still in phase trust: %s", rec.ID, st.Next)
	}
	var missing []string
	for _, x := range st.Nodes {
		if ackRank(x.Ack) < ackRank(ackReissued) {
			missing = append(missing, x.Name)
		}
	}
	if len(missing) > 0 {
		return nil, errStatus(http.StatusConflict, "CA rotation %s cannot finish: node(s) %s do not run a certificate of the new CA yet (an offline node must be started, or removed, first)", rec.ID, strings.Join(missing, ", "))
	}
	if rec.SwitchRev == 0 {
		// the DC switched but did not record when: the CA record was
		// last written then
		r, err := cli.Get(ctx, KeyCA)
		if err != nil {
			return nil, err
		}
		if len(r.Kvs) > 0 {
			rec.SwitchRev = r.Kvs[0].ModRevision
		}
	}
	now := time.Now().UTC()
	rec.Phase, rec.FinishedAt, rec.FinishedBy = RotationFinished, &now, actor(ctx, n.ident.Name)
	b, _ := json.Marshal(rec)
	tr, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(KeyCARotation), "=", rev)).Then(clientv3.OpPut(KeyCARotation, string(b))).Commit()
	if err != nil {
		return nil, err
	}
	if !tr.Succeeded {
		return nil, errStatus(http.StatusConflict, "the CA rotation changed meanwhile: try again")
	}
	n.emit(Event{Kind: EventCARotation, Message: fmt.Sprintf("CA rotation %s finished by %s: the old CA is no longer trusted", rec.ID, rec.FinishedBy), Fields: map[string]string{"by": rec.FinishedBy}})
	n.log.Info("CA rotation finished", "id", rec.ID)
	n.kickRotation()
	return n.CARotationStatus(ctx)
}

// EventCARotation records the steps of a CA rotation.
const EventCARotation = "ca-rotation"

// CARotationStatus reports the current (or last) CA rotation.
func (n *Node) CARotationStatus(ctx context.Context) (*CARotationStatus, error) {
	cli := n.Client()
	if cli == nil {
		return nil, errStatus(http.StatusServiceUnavailable, "%v", ErrNotServing)
	}
	st := &CARotationStatus{}
	if b, err := os.ReadFile(n.creds.paths.CACert); err == nil {
		st.Trust = string(b)
	}
	rec, _, err := getRotation(ctx, cli)
	if err != nil {
		return nil, err
	}
	if rec == nil {
		st.Next = "no CA rotation was ever started"
		return st, nil
	}
	pub := *rec
	pub.NewKey = ""
	st.Rotation = &pub
	acks, err := n.rotationAcks(ctx, cli, rec.ID)
	if err != nil {
		return nil, err
	}
	waiting := map[string][]string{}
	for _, m := range n.Members().Nodes {
		a := acks[m.ID]
		st.Nodes = append(st.Nodes, RotationNode{Name: m.Name, ID: m.ID, Online: m.Online, Ack: a.Phase, Serial: a.Serial})
		for _, p := range []string{ackTrust, ackReissued, ackFinished} {
			if ackRank(a.Phase) < ackRank(p) {
				waiting[p] = append(waiting[p], m.Name)
			}
		}
	}
	sort.Slice(st.Nodes, func(i, j int) bool { return st.Nodes[i].Name < st.Nodes[j].Name })
	if rec.Phase != RotationFinished {
		st.OldClientCerts, err = n.oldClientCerts(ctx, cli, rec)
		if err != nil {
			return nil, err
		}
	}
	switch rec.Phase {
	case RotationTrust:
		st.Next = "waiting for every member to trust the new CA (then the nodes re-issue their certificates on their own): " + waitList(waiting[ackTrust])
	case RotationReissue:
		if w := waiting[ackReissued]; len(w) > 0 {
			st.Next = "waiting for every member to run a certificate of the new CA: " + waitList(w)
		} else {
			st.Next = "every member runs a certificate of the new CA: give clients the new CA, then `hacs cluster rotate-ca --finish` drops the old one"
			if len(st.OldClientCerts) > 0 {
				st.Next += "; export client certificates of the old CA stop working then, create new ones first (hacs cluster auth client-cert create NAME): " + strings.Join(st.OldClientCerts, ", ")
			}
		}
	case RotationFinished:
		if w := waiting[ackFinished]; len(w) > 0 {
			st.Next = "finished; members still to drop the old CA: " + waitList(w)
		} else {
			st.Next = "finished: every member trusts the new CA only"
		}
	}
	return st, nil
}

// oldClientCerts names the export client certificates the old CA signed
// that are still valid: created before the new CA began to sign, not
// revoked, not expired, and their holder has no newer one.
func (n *Node) oldClientCerts(ctx context.Context, cli *clientv3.Client, rec *CARotation) ([]string, error) {
	all, err := n.clientCerts(ctx, cli)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	renewed := map[string]bool{}
	old := map[string]bool{}
	for _, c := range all {
		if c.RevokedAt != nil || c.Expired(now) {
			continue
		}
		if rec.ReissueAt != nil && c.CreatedAt.After(*rec.ReissueAt) {
			renewed[c.Name] = true
		} else {
			old[c.Name] = true
		}
	}
	var out []string
	for name := range old {
		if !renewed[name] {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out, nil
}

func waitList(names []string) string {
	if len(names) == 0 {
		return "none left"
	}
	return strings.Join(names, ", ")
}

func (n *Node) rotationAcks(ctx context.Context, cli *clientv3.Client, id string) (map[string]rotationAck, error) {
	r, err := cli.Get(ctx, PrefixCARotationAcks, clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	out := map[string]rotationAck{}
	for _, kv := range r.Kvs {
		var a rotationAck
		if json.Unmarshal(kv.Value, &a) == nil && a.ID == id {
			out[strings.TrimPrefix(string(kv.Key), PrefixCARotationAcks)] = a
		}
	}
	return out, nil
}

// kickRotation makes this node's rotation loop look now.
func (n *Node) kickRotation() {
	select {
	case n.rotKick <- struct{}{}:
	default:
	}
}

// rotationLoop follows the CA rotation: it installs the trust of each
// phase, re-issues this node's certificate, acknowledges, and (on the DC)
// moves the rotation to its next phase.
func (n *Node) rotationLoop() {
	defer n.wg.Done()
	if n.creds == nil {
		return
	}
	ctx := n.lifeCtx
	for ctx.Err() == nil {
		pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
		err := n.publishEtcdTrust(pctx)
		pcancel()
		if err == nil {
			break
		}
		sleepCtx(ctx, time.Second)
	}
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(ctx)
		wch := n.cli.Watch(clientv3.WithRequireLeader(wctx), KeyCARotation, clientv3.WithPrefix())
		t := time.NewTicker(5 * time.Second)
		for alive := true; alive; {
			if err := n.applyRotation(ctx); err != nil && ctx.Err() == nil {
				n.log.Warn("CA rotation step (retrying)", "err", err)
			}
			select {
			case <-ctx.Done():
				alive = false
			case _, ok := <-wch:
				alive = ok
			case <-n.rotKick:
			case <-t.C:
			}
		}
		t.Stop()
		cancel()
		sleepCtx(ctx, 200*time.Millisecond)
	}
}

func (n *Node) applyRotation(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cli := n.cli
	rec, rev, err := getRotation(ctx, cli)
	if err != nil || rec == nil {
		return err
	}
	newCert, err := parseCert(rec.NewCA)
	if err != nil {
		return err
	}
	acks, err := n.rotationAcks(ctx, cli, rec.ID)
	if err != nil {
		return err
	}
	mine := acks[n.ident.NodeID]
	ack := func(phase string) error {
		if ackRank(mine.Phase) >= ackRank(phase) {
			return nil
		}
		a := rotationAck{ID: rec.ID, Phase: phase, At: time.Now().UTC()}
		if l := n.creds.Leaf(); l != nil {
			a.Serial = fmt.Sprintf("%x", l.SerialNumber)
		}
		b, _ := json.Marshal(a)
		if _, err := cli.Put(ctx, PrefixCARotationAcks+n.ident.NodeID, string(b)); err != nil {
			return err
		}
		mine = a
		n.log.Info("CA rotation: acknowledged", "id", rec.ID, "step", phase)
		return nil
	}
	signedByNew := func() bool {
		l := n.creds.Leaf()
		return l != nil && l.CheckSignatureFrom(newCert) == nil
	}
	switch rec.Phase {
	case RotationTrust, RotationReissue:
		if err := n.installTrust([]byte(rec.OldCA + rec.NewCA)); err != nil {
			return err
		}
		if err := ack(ackTrust); err != nil {
			return err
		}
		if rec.Phase == RotationReissue {
			if !signedByNew() {
				if err := n.RenewCertificate(ctx); err != nil {
					return fmt.Errorf("re-issuing this node's certificate from the new CA: %w", err)
				}
				if !signedByNew() {
					return errors.New("the renewed certificate is not signed by the new CA yet")
				}
				n.log.Info("CA rotation: this node now runs a certificate of the new CA", "id", rec.ID, "ca", newCert.Subject.CommonName)
			}
			if err := ack(ackReissued); err != nil {
				return err
			}
		}
	case RotationFinished:
		if ackRank(mine.Phase) >= ackRank(ackFinished) {
			return n.installTrust([]byte(rec.NewCA))
		}
		if !signedByNew() {
			if err := n.RenewCertificate(ctx); err != nil {
				return fmt.Errorf("re-issuing this node's certificate from the new CA: %w", err)
			}
		}
		if err := n.installTrust([]byte(rec.NewCA)); err != nil {
			return err
		}
		if err := n.refreshRevocations(ctx); err != nil {
			return err
		}
		// the creating node's copy of the old CA key is of no use now
		if err := os.Remove(n.creds.paths.CAKey); err == nil {
			n.log.Info("CA rotation: removed the old CA key", "file", n.creds.paths.CAKey)
		}
		if err := ack(ackFinished); err != nil {
			return err
		}
	}
	if rec.Phase == RotationTrust && n.IsDC() {
		return n.advanceToReissue(ctx, rec, rev, acks)
	}
	return nil
}

// installTrust makes bundle what this node trusts: its own verifiers at
// once, and DATA_DIR/tls/ca.crt (the embedded etcd reads it at its next
// start).
func (n *Node) installTrust(bundle []byte) error {
	pool, cnt := poolFromPEM(bundle)
	if cnt == 0 {
		return errors.New("no CA certificate in the rotation record")
	}
	cur, _ := os.ReadFile(n.creds.paths.CACert)
	if !bytes.Equal(cur, bundle) {
		if err := writeTLSFile(n.creds.paths.CACert, bundle); err != nil {
			return err
		}
		n.log.Info("CA rotation: trusted CAs updated", "certificates", cnt, "file", n.creds.paths.CACert)
	}
	n.creds.trust.Store(pool)
	return nil
}

// advanceToReissue (DC) makes the new CA the signing CA once every member
// trusts it.
func (n *Node) advanceToReissue(ctx context.Context, rec *CARotation, rev int64, acks map[string]rotationAck) error {
	for _, m := range n.Members().Nodes {
		if ackRank(acks[m.ID].Phase) < ackRank(ackTrust) {
			return nil // not yet
		}
	}
	caRec, _ := json.Marshal(caRecord{Cert: rec.NewCA, Key: rec.NewKey, Chain: rec.Cross})
	now := time.Now().UTC()
	next := *rec
	next.Phase, next.ReissueAt, next.NewKey = RotationReissue, &now, ""
	b, _ := json.Marshal(next)
	tr, err := n.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(KeyCARotation), "=", rev)).
		Then(clientv3.OpPut(KeyCA, string(caRec)), clientv3.OpPut(KeyCARotation, string(b))).Commit()
	if err != nil || !tr.Succeeded {
		return err
	}
	// the revision of the switch: certificates recorded before it are the
	// old CA's
	next.SwitchRev = tr.Header.Revision
	b, _ = json.Marshal(next)
	if _, err := n.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(KeyCARotation), "=", tr.Header.Revision)).Then(clientv3.OpPut(KeyCARotation, string(b))).Commit(); err != nil {
		return err
	}
	n.emit(Event{Kind: EventCARotation, Message: fmt.Sprintf("CA rotation %s: every member trusts the new CA; it now signs, and every node re-issues its certificate", rec.ID)})
	n.log.Info("CA rotation: the new CA signs from now on", "id", rec.ID)
	return nil
}

// retiredSerials are the certificates of the old CA after a finished
// rotation: those recorded before the new CA began to sign. They go into
// the revocation list the embedded etcd reads (an etcd started before the
// rotation still trusts the old CA until its agent restarts).
func (n *Node) retiredSerials(ctx context.Context, cli *clientv3.Client) ([]*big.Int, error) {
	rec, _, err := getRotation(ctx, cli)
	if err != nil || rec == nil || rec.Phase != RotationFinished || rec.SwitchRev == 0 {
		return nil, err
	}
	r, err := cli.Get(ctx, PrefixCerts, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, err
	}
	var out []*big.Int
	for _, kv := range r.Kvs {
		if kv.CreateRevision >= rec.SwitchRev {
			continue
		}
		s := string(kv.Key[strings.LastIndexByte(string(kv.Key), '/')+1:])
		if v, ok := new(big.Int).SetString(s, 16); ok {
			out = append(out, v)
		}
	}
	return out, nil
}

// handleRotateCA: GET /v1/pki/rotate (status), POST /v1/pki/rotate
// ({"finish": true} finishes).
func (n *Node) handleRotateCA(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
	defer cancel()
	if n.creds == nil {
		writeError(w, errStatus(http.StatusConflict, "this cluster runs without TLS (--insecure): it has no CA to rotate"))
		return
	}
	var st *CARotationStatus
	var err error
	switch r.Method {
	case http.MethodGet:
		st, err = n.CARotationStatus(ctx)
	default:
		var req struct {
			Finish bool `json:"finish"`
		}
		if r.ContentLength != 0 {
			if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil {
				writeError(w, errStatus(http.StatusBadRequest, "bad request body: %v", err))
				return
			}
		}
		if req.Finish {
			st, err = n.FinishCARotation(ctx)
		} else {
			st, err = n.StartCARotation(ctx)
		}
	}
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}
