package cluster

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// apiCall sends one request and returns the status and the error message.
func apiCall(t *testing.T, hc *http.Client, method, url, token, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e struct{ Error string }
	json.Unmarshal(b, &e)
	if e.Error == "" {
		e.Error = string(b)
	}
	return resp.StatusCode, e.Error
}

// caClient trusts the cluster CA of dataDir and presents cert (if any).
func caClient(t *testing.T, dataDir string, cert *tls.Certificate) *http.Client {
	t.Helper()
	ca, err := os.ReadFile(TLSFiles(dataDir).CACert)
	if err != nil {
		t.Fatal(err)
	}
	tc, err := CATLSConfig(ca)
	if err != nil {
		t.Fatal(err)
	}
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
}

// certFrom issues a client certificate with the CA of caDir (cert and
// key files), valid from nb to na.
func certFrom(t *testing.T, a *ca, name string, nb, na time.Time) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(), Subject: pkix.Name{CommonName: name},
		NotBefore: nb, NotAfter: na, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, &key.PublicKey, a.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalPKCS8PrivateKey(key)
	c, err := tls.X509KeyPair(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// etcdReachable tells whether an etcd client with cert gets an answer.
func etcdReachable(t *testing.T, endpoint, dataDir string, cert tls.Certificate) error {
	ca, _ := os.ReadFile(TLSFiles(dataDir).CACert)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 2 * time.Second, Logger: zap.NewNop(),
		TLS: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}})
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = cli.Get(ctx, KeyClusterInfo)
	return err
}

// TestSecurityRefusals: what a secure cluster refuses, with which message,
// while it keeps serving the others.
func TestSecurityRefusals(t *testing.T) {
	n, cfg := startSoloNode(t, "s1")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	api := "https://" + n.APIAddr()
	adminTok := adminToken(t, cfg.DataDir)
	hc := caClient(t, cfg.DataDir, nil)

	// key files are owner-only
	for _, f := range []string{TLSFiles(cfg.DataDir).CAKey, TLSFiles(cfg.DataDir).Key, filepath.Join(cfg.DataDir, AdminTokenFile)} {
		st, err := os.Stat(f)
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f, st.Mode(), err)
		}
	}

	// plaintext to the TLS-only port
	resp, err := http.Get("http://" + n.APIAddr() + "/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(b), "HTTPS") {
		t.Fatalf("plaintext: %d %s", resp.StatusCode, b)
	}
	// no token, unknown token, malformed token
	if code, msg := apiCall(t, hc, "GET", api+"/v1/nodes", "", ""); code != 401 || !strings.Contains(msg, "needs a token") {
		t.Fatalf("no token: %d %s", code, msg)
	}
	if code, msg := apiCall(t, hc, "GET", api+"/v1/nodes", "hacsapi1.mallory."+newSecret(), ""); code != 401 || !strings.Contains(msg, "unknown or revoked API token") {
		t.Fatalf("unknown token: %d %s", code, msg)
	}
	if code, msg := apiCall(t, hc, "GET", api+"/v1/nodes", "letmein", ""); code != 401 || !strings.Contains(msg, "malformed") {
		t.Fatalf("malformed token: %d %s", code, msg)
	}
	// roles
	if code, msg := apiCall(t, hc, "GET", api+"/v1/nodes", adminTok, ""); code != 200 {
		t.Fatalf("admin: %d %s", code, msg)
	}
	ro, err := n.CreateToken(ctx, "viewer", AuthReadOnly, "test")
	if err != nil {
		t.Fatal(err)
	}
	op, err := n.CreateToken(ctx, "ops", AuthOperator, "test")
	if err != nil {
		t.Fatal(err)
	}
	if code, _ := apiCall(t, hc, "GET", api+"/v1/nodes", ro, ""); code != 200 {
		t.Fatalf("read-only GET: %d", code)
	}
	if code, msg := apiCall(t, hc, "POST", api+"/v1/nodes/s1/standby", ro, `{"standby": false}`); code != 403 || !strings.Contains(msg, "token viewer has the role read-only") || !strings.Contains(msg, "needs operator") {
		t.Fatalf("read-only POST: %d %s", code, msg)
	}
	if code, msg := apiCall(t, hc, "POST", api+"/v1/nodes/s1/standby", op, `{"standby": true}`); code != 200 {
		t.Fatalf("operator POST: %d %s", code, msg)
	}
	if code, msg := apiCall(t, hc, "POST", api+"/v1/auth/tokens", op, `{"name": "x", "role": "admin"}`); code != 403 || !strings.Contains(msg, "needs admin") {
		t.Fatalf("operator creating a token: %d %s", code, msg)
	}
	// the actor recorded is the token, whatever the client claims
	waitCond(t, 5*time.Second, func() bool {
		evs, _, err := ListEvents(ctx, n.Client(), EventFilter{Kind: EventNodeStandby})
		return err == nil && len(evs) >= 1 && strings.HasPrefix(evs[len(evs)-1].Fields["by"], "token ops")
	})
	// a revoked token is refused from the next request on
	if code, msg := apiCall(t, hc, "DELETE", api+"/v1/auth/tokens/ops", adminTok, ""); code != 200 {
		t.Fatalf("revoke: %d %s", code, msg)
	}
	waitCond(t, 5*time.Second, func() bool {
		code, _ := apiCall(t, hc, "GET", api+"/v1/nodes", op, "")
		return code == 401
	})

	// certificates: another cluster's CA, an expired one of this CA
	otherPEM, otherKey, _ := newCA("0000000000000000")
	other, _ := parseCA(otherPEM, otherKey)
	mine, err := n.loadCA(ctx, n.Client())
	if err != nil {
		t.Fatal(err)
	}
	foreign := certFrom(t, other, "intruder", time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	expired := certFrom(t, mine, "old", time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour))
	for _, c := range []struct {
		name string
		cert tls.Certificate
	}{{"other CA", foreign}, {"expired", expired}} {
		cl := caClient(t, cfg.DataDir, &c.cert)
		req, _ := http.NewRequest("GET", api+"/v1/nodes", nil)
		if resp, err := cl.Do(req); err == nil {
			resp.Body.Close()
			t.Fatalf("%s certificate: API answered %d", c.name, resp.StatusCode)
		} else {
			t.Logf("%s certificate, API: %v", c.name, err)
		}
		if err := etcdReachable(t, n.ident.ClientURL, cfg.DataDir, c.cert); err == nil {
			t.Fatalf("%s certificate: etcd answered", c.name)
		}
	}
	// the node keeps serving the others
	if code, _ := apiCall(t, hc, "GET", api+"/v1/nodes", adminTok, ""); code != 200 {
		t.Fatalf("after refusals: %d", code)
	}

	// renewal without downtime: a connection opened before keeps working,
	// the next handshake presents the new certificate
	serverSerial := func() string {
		t.Helper()
		tr := &http.Transport{TLSClientConfig: hc.Transport.(*http.Transport).TLSClientConfig.Clone()}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr}).Get(api + "/v1/status")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.TLS.PeerCertificates[0].SerialNumber.String()
	}
	before := serverSerial()
	if code, _ := apiCall(t, hc, "GET", api+"/v1/nodes", adminTok, ""); code != 200 { // keeps a connection open
		t.Fatal(code)
	}
	if code, msg := apiCall(t, hc, "POST", api+"/v1/pki/renew", ro, ""); code != 403 {
		t.Fatalf("renew with a read-only token: %d %s", code, msg)
	}
	if code, msg := apiCall(t, hc, "POST", api+"/v1/pki/renew", adminTok, ""); code != 200 {
		t.Fatalf("renew: %d %s", code, msg)
	}
	if after := serverSerial(); after == before {
		t.Fatalf("the API still presents certificate %s after the renewal", before)
	}
	if code, _ := apiCall(t, hc, "GET", api+"/v1/nodes", adminTok, ""); code != 200 {
		t.Fatalf("old connection after the renewal: %d", code)
	}
	renewed, err := n.creds.certificate()
	if err != nil {
		t.Fatal(err)
	}
	if err := etcdReachable(t, n.ident.ClientURL, cfg.DataDir, *renewed); err != nil {
		t.Fatalf("etcd with the renewed certificate: %v", err)
	}

	// the token the first node printed admits one node (by default); its
	// replay is refused, an expired token too, and the cluster's own secret
	// admits no one (and nothing of the refused nodes is left behind)
	first, err := os.ReadFile(filepath.Join(cfg.DataDir, tokenFile))
	if err != nil {
		t.Fatal(err)
	}
	short, _, err := n.CreateJoinToken(ctx, time.Second, 1, "test")
	if err != nil {
		t.Fatal(err)
	}
	sr, err := n.Client().Get(ctx, KeyJoinSecret)
	if err != nil || len(sr.Kvs) != 1 {
		t.Fatalf("cluster secret: %v %v", sr, err)
	}
	clusterSecret := Token{ClusterID: n.ClusterID(), Secret: string(sr.Kvs[0].Value)}
	cfg2 := testConfig(t, "s2")
	cfg2.Join, cfg2.Token = n.APIAddr(), strings.TrimSpace(string(first))
	n2 := startNode(t, cfg2)
	for _, c := range []struct{ name, tok, want string }{
		{"first node's, replayed", strings.TrimSpace(string(first)), "was already used"},
		{"cluster secret", clusterSecret.String(), "no such token"},
		{"expired", short.String(), "expired at"},
	} {
		if c.name == "expired" {
			time.Sleep(1100 * time.Millisecond)
		}
		cfg3 := testConfig(t, "s3")
		cfg3.Join, cfg3.Token, cfg3.JoinTimeout = n.APIAddr(), c.tok, 5*time.Second
		n3, err := New(cfg3)
		if err != nil {
			t.Fatal(err)
		}
		err = n3.Start(ctx)
		if err == nil {
			n3.Stop(ctx)
			t.Fatalf("%s join token: admitted", c.name)
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%s join token: %v", c.name, err)
		}
		t.Logf("%s join token: %v", c.name, err)
		if _, ok := n.Members().Node("s3"); ok {
			t.Fatalf("%s join token: s3 registered", c.name)
		}
	}

	// a removed node's certificate stops working
	p2 := TLSFiles(cfg2.DataDir)
	cert2, err := tls.LoadX509KeyPair(p2.Cert, p2.Key)
	if err != nil {
		t.Fatal(err)
	}
	if err := etcdReachable(t, n.ident.ClientURL, cfg.DataDir, cert2); err != nil {
		t.Fatalf("member's certificate refused by etcd: %v", err)
	}
	n2.Stop(ctx)
	waitCond(t, 10*time.Second, func() bool { m, _ := n.Members().Node("s2"); return !m.Online })
	if err := n.RemoveNode(ctx, "s2", false); err != nil {
		t.Fatal(err)
	}
	waitCond(t, 10*time.Second, func() bool { return etcdReachable(t, n.ident.ClientURL, cfg.DataDir, cert2) != nil })
	cl := caClient(t, cfg.DataDir, &cert2)
	waitCond(t, 10*time.Second, func() bool {
		resp, err := cl.Get(api + "/v1/nodes")
		if err == nil {
			resp.Body.Close()
		}
		return err != nil
	})
}

// TestLegacyPlainDataDir: a data directory of a hacs without TLS (plain
// etcd URLs, no tls/) restarts without TLS instead of failing.
func TestLegacyPlainDataDir(t *testing.T) {
	cfg := testConfig(t, "old")
	cfg.Voters = 1
	cfg.Insecure = true
	n := startNode(t, cfg)
	n.Stop(context.Background())
	p := filepath.Join(cfg.DataDir, identityFile)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	json.Unmarshal(b, &m)
	delete(m, "insecure")
	b, _ = json.Marshal(m)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Insecure = false
	n2 := startNode(t, cfg)
	if n2.Secure() || n2.Scheme() != "http" {
		t.Fatal("a legacy plain node came back with TLS")
	}
	// and a secure node's data directory is never taken for a legacy one
	if legacyPlain(&identity{PeerURL: "https://127.0.0.1:1", ClientURL: "https://127.0.0.1:2"}, t.TempDir()) {
		t.Fatal("https identity taken for legacy")
	}
}
