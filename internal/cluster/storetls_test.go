package cluster

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
)

// testStoreCreds are the files of an external etcd's own PKI (not the
// hacs cluster's): its CA, and a client certificate it accepts.
type testStoreCreds struct {
	dir                   string
	ca, cert, key         string
	otherCert, otherKey   string // a client certificate of another CA
	serverCert, serverKey string
	otherCA               string
	endpoint              string
}

// makeStoreCreds creates a CA for a test etcd, its server certificate
// (127.0.0.1), a client certificate, and a client certificate of an
// unrelated CA.
func makeStoreCreds(t testing.TB) *testStoreCreds {
	t.Helper()
	dir := t.TempDir()
	c := &testStoreCreds{dir: dir}
	issue := func(a *ca, name, certFile, keyFile string) {
		keyPEM, csr, err := newNodeKey(name)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := a.sign(csr, "etcd", name, name, []string{"127.0.0.1"}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		writeTestFile(t, certFile, cert)
		writeTestFile(t, keyFile, keyPEM)
	}
	mkCA := func(cn, file string) *ca {
		certPEM, keyPEM, _, err := newCANamed(cn)
		if err != nil {
			t.Fatal(err)
		}
		a, err := parseCA(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		writeTestFile(t, file, certPEM)
		return a
	}
	c.ca, c.otherCA = filepath.Join(dir, "etcd-ca.crt"), filepath.Join(dir, "other-ca.crt")
	store := mkCA("test etcd CA", c.ca)
	other := mkCA("another CA", c.otherCA)
	c.serverCert, c.serverKey = filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	c.cert, c.key = filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key")
	c.otherCert, c.otherKey = filepath.Join(dir, "other.crt"), filepath.Join(dir, "other.key")
	issue(store, "server", c.serverCert, c.serverKey)
	issue(store, "hacs-client", c.cert, c.key)
	issue(other, "intruder", c.otherCert, c.otherKey)
	return c
}

func writeTestFile(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// startTestEtcdTLS runs a single-member etcd serving its clients over TLS,
// requiring a client certificate of its own CA (as startTestEtcd, with the
// client-cert auth of a production store).
func startTestEtcdTLS(t testing.TB) *testStoreCreds {
	t.Helper()
	c := makeStoreCreds(t)
	_, c.endpoint = runTestEtcd(t, &transport.TLSInfo{CertFile: c.serverCert, KeyFile: c.serverKey, TrustedCAFile: c.ca, ClientCertAuth: true})
	return c
}

// TestStoreTLSConfigBadInput: the store credentials are checked before
// anything connects, with a message naming the flag.
func TestStoreTLSConfigBadInput(t *testing.T) {
	c := makeStoreCreds(t)
	https := []string{"https://127.0.0.1:1"}
	for _, tc := range []struct {
		name string
		eps  []string
		f    StoreTLSFiles
		want string // "" : accepted
	}{
		{"plain http", []string{"http://127.0.0.1:1"}, StoreTLSFiles{}, ""},
		{"https with CA and client cert", https, StoreTLSFiles{CACert: c.ca, Cert: c.cert, Key: c.key}, ""},
		{"https with CA only", https, StoreTLSFiles{CACert: c.ca}, ""},
		{"https without CA", https, StoreTLSFiles{Cert: c.cert, Key: c.key}, "no --etcd-cacert"},
		{"missing CA file", https, StoreTLSFiles{CACert: filepath.Join(c.dir, "nope.crt")}, "--etcd-cacert: open"},
		{"CA file not PEM", https, StoreTLSFiles{CACert: c.key}, "holds no PEM certificate"},
		{"cert without key", https, StoreTLSFiles{CACert: c.ca, Cert: c.cert}, "go together"},
		{"key without cert", https, StoreTLSFiles{CACert: c.ca, Key: c.key}, "go together"},
		{"missing cert file", https, StoreTLSFiles{CACert: c.ca, Cert: filepath.Join(c.dir, "nope.crt"), Key: c.key}, "--etcd-cert: open"},
		{"unreadable key", https, StoreTLSFiles{CACert: c.ca, Cert: c.cert, Key: c.dir}, "--etcd-key: read"},
		{"mismatched key", https, StoreTLSFiles{CACert: c.ca, Cert: c.cert, Key: c.otherKey}, "do not belong together"},
		{"TLS files with http", []string{"http://127.0.0.1:1"}, StoreTLSFiles{CACert: c.ca}, "plain http://"},
		{"mixed schemes", []string{"http://127.0.0.1:1", "https://127.0.0.1:2"}, StoreTLSFiles{CACert: c.ca}, "mixes"},
		{"no scheme", []string{"127.0.0.1:1"}, StoreTLSFiles{}, "want http://"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := storeTLSConfig(tc.eps, tc.f)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want one with %q", err, tc.want)
			}
		})
	}
}

// TestClusterNodeExternalTLS: a cluster on an external etcd that serves
// over TLS and requires client certificates is as secure as one on the
// embedded etcd: the first node creates the cluster CA and the admin
// token, the second enrolls with its own key, the API is HTTPS with
// tokens, and a node without the store's client certificate is refused.
func TestClusterNodeExternalTLS(t *testing.T) {
	s := startTestEtcdTLS(t)
	creds := StoreTLSFiles{CACert: s.ca, Cert: s.cert, Key: s.key}
	c1 := testConfig(t, "e1")
	c1.Insecure = false
	c1.EtcdEndpoints, c1.EtcdTLS = []string{s.endpoint}, creds
	n1 := startNode(t, c1)
	c2 := testConfig(t, "e2")
	c2.Insecure = false
	c2.EtcdEndpoints, c2.EtcdTLS = []string{s.endpoint}, creds
	n2 := startNode(t, c2)
	if !n1.Secure() || !n2.Secure() || n1.Scheme() != "https" {
		t.Fatalf("secure %v %v scheme %s", n1.Secure(), n2.Secure(), n1.Scheme())
	}
	if n1.ClusterID() != n2.ClusterID() {
		t.Fatalf("cluster ids %s %s", n1.ClusterID(), n2.ClusterID())
	}
	waitCond(t, 10*time.Second, func() bool { return len(n1.Members().Online()) == 2 })

	// both node certificates chain to the cluster CA the first node made;
	// only that node holds the CA key locally
	caPEM, err := os.ReadFile(TLSFiles(c1.DataDir).CACert)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	for _, dir := range []string{c1.DataDir, c2.DataDir} {
		b, err := os.ReadFile(TLSFiles(dir).Cert)
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(b)
		leaf, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Fatalf("certificate of %s: %v", dir, err)
		}
		if kind, cid, _ := CertIdentity(leaf); kind != CertNode || cid != n1.ClusterID() {
			t.Fatalf("certificate of %s: %v %s", dir, kind, cid)
		}
	}
	if _, err := os.Stat(TLSFiles(c2.DataDir).CAKey); err == nil {
		t.Fatal("the enrolled node holds the CA key")
	}
	if b, _ := os.ReadFile(filepath.Join(c2.DataDir, identityFile)); !strings.Contains(string(b), s.cert) {
		t.Fatalf("node.json does not remember the store credentials:\n%s", b)
	}

	// the API: HTTPS, tokens
	tc, err := CATLSConfig(caPEM)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
	adminTok := adminToken(t, c1.DataDir)
	for _, n := range []*Node{n1, n2} {
		for _, tok := range []string{"", apiTokenPrefix + "nobody.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", adminTok} {
			req, _ := http.NewRequest("GET", "https://"+n.APIAddr()+"/v1/nodes", nil)
			if tok != "" {
				req.Header.Set("Authorization", "Bearer "+tok)
			}
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			want := http.StatusUnauthorized
			if tok == adminTok {
				want = http.StatusOK
			}
			if resp.StatusCode != want {
				t.Fatalf("%s with token %q: %d, want %d", n.Name(), tok, resp.StatusCode, want)
			}
		}
		if resp, err := http.Get("http://" + n.APIAddr() + "/v1/nodes"); err == nil && resp.StatusCode == http.StatusOK {
			t.Fatalf("%s answers plain HTTP", n.Name())
		}
	}
	// node to node: mutual TLS with the node certificates
	resp, err := n2.HTTPClient().Get("https://" + n1.APIAddr() + "/v1/nodes")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("node-to-node API call: %v %v", resp, err)
	}
	resp.Body.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// the CA rotation runs through the store: it applies here too
	if _, err := n1.StartCARotation(ctx); err != nil {
		t.Fatal(err)
	}
	acked := func(phase string) func() bool {
		return func() bool {
			st, err := n1.CARotationStatus(ctx)
			if err != nil || len(st.Nodes) != 2 {
				return false
			}
			for _, x := range st.Nodes {
				if x.Ack != phase {
					return false
				}
			}
			return true
		}
	}
	waitCond(t, 30*time.Second, acked(ackReissued))
	if _, err := n1.FinishCARotation(ctx); err != nil {
		t.Fatal(err)
	}
	waitCond(t, 30*time.Second, acked(ackFinished))
	st, err := n1.CARotationStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	newRoots := x509.NewCertPool()
	newRoots.AppendCertsFromPEM([]byte(st.Rotation.NewCA))
	for _, n := range []*Node{n1, n2} {
		leaf := n.creds.Leaf()
		inter := x509.NewCertPool()
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: newRoots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Fatalf("%s after the CA rotation: %v", n.Name(), err)
		}
	}
	resp, err = n2.HTTPClient().Get("https://" + n1.APIAddr() + "/v1/nodes")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("node-to-node API call after the CA rotation: %v %v", resp, err)
	}
	resp.Body.Close()

	// a node joining through a member is told to use the store instead
	if _, err := n1.admitJoin(ctx, joinRequest{Token: Token{ClusterID: n1.ClusterID(), Secret: newSecret()}.String()}); err == nil || !strings.Contains(err.Error(), "external etcd") {
		t.Fatalf("join through a member: %v", err)
	}

	// nodes the store refuses, with a message saying why
	for _, tc := range []struct {
		name string
		f    StoreTLSFiles
		want string
	}{
		{"no client certificate", StoreTLSFiles{CACert: s.ca}, "requires a client certificate"},
		{"client certificate of another CA", StoreTLSFiles{CACert: s.ca, Cert: s.otherCert, Key: s.otherKey}, "refused this node's client certificate"},
		{"wrong CA for the server", StoreTLSFiles{CACert: s.otherCA, Cert: s.cert, Key: s.key}, "does not verify"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testConfig(t, "e3")
			c.Insecure = false
			c.EtcdEndpoints, c.EtcdTLS = []string{s.endpoint}, tc.f
			c.JoinTimeout = 10 * time.Second
			n, err := New(c)
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			err = n.Start(context.Background())
			if err == nil {
				n.Stop(ctx)
				t.Fatal("started")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one with %q", err, tc.want)
			}
			t.Logf("refused in %v: %v", time.Since(start).Round(time.Millisecond), err)
			if _, err := os.Stat(filepath.Join(c.DataDir, identityFile)); err == nil {
				t.Fatal("a refused node left an identity behind")
			}
		})
	}

	// an --insecure node is refused by the secure cluster
	ci := testConfig(t, "e4")
	ci.Insecure = true
	ci.EtcdEndpoints, ci.EtcdTLS = []string{s.endpoint}, creds
	ni, err := New(ci)
	if err != nil {
		t.Fatal(err)
	}
	if err := ni.Start(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ni.Done():
		if err := ni.Err(); err == nil || !strings.Contains(err.Error(), "runs with TLS") {
			t.Fatalf("insecure node: %v", err)
		}
	case <-ni.Ready():
		t.Fatal("an --insecure node joined a secure cluster")
	case <-time.After(20 * time.Second):
		t.Fatal("insecure node: neither refused nor ready")
	}

	// a restart with a client certificate the store refuses fails at once
	id := n2.ID()
	n2.Stop(ctx)
	cbad := c2
	cbad.Name, cbad.EtcdEndpoints, cbad.EtcdTLS = "", nil, StoreTLSFiles{Cert: s.otherCert, Key: s.otherKey}
	nb, err := New(cbad)
	if err != nil {
		t.Fatal(err)
	}
	if err := nb.Start(ctx); err == nil || !strings.Contains(err.Error(), "refused this node's client certificate") {
		nb.Stop(ctx)
		t.Fatalf("restart with a refused certificate: %v", err)
	}
	// a restart needs no store flags: they are remembered
	c2b := c2
	c2b.Name, c2b.EtcdEndpoints, c2b.EtcdTLS = "", nil, StoreTLSFiles{}
	n2b := startNode(t, c2b)
	if n2b.ID() != id || !n2b.Secure() {
		t.Fatalf("restarted: id %s (was %s), secure %v", n2b.ID(), id, n2b.Secure())
	}

	// removing a node revokes its certificate: the other refuses it
	if err := n1.RemoveNode(ctx, "e2", true); err != nil {
		t.Fatal(err)
	}
	waitCond(t, 10*time.Second, func() bool {
		resp, err := n2b.HTTPClient().Get("https://" + n1.APIAddr() + "/v1/status")
		if err == nil {
			resp.Body.Close()
		}
		return err != nil
	})
}

// TestClusterNodeExternalConcurrentCreate: two first nodes started at once
// on an empty store end up in one cluster: the create-if-absent
// transaction picks one creator (the only node with the CA key), the
// other discards the CA it made and enrolls.
func TestClusterNodeExternalConcurrentCreate(t *testing.T) {
	for round := range 3 {
		e, _ := startTestEtcd(t)
		ep := e.Config().AdvertiseClientUrls[0].String()
		var cfgs [2]Config
		var nodes [2]*Node
		errs := make(chan error, 2)
		for i := range nodes {
			cfgs[i] = testConfig(t, []string{"a", "b"}[i])
			cfgs[i].Insecure = false
			cfgs[i].EtcdEndpoints = []string{ep}
			n, err := New(cfgs[i])
			if err != nil {
				t.Fatal(err)
			}
			nodes[i] = n
			t.Cleanup(func() { n.Stop(context.Background()) })
		}
		for _, n := range nodes {
			go func() { errs <- n.Start(context.Background()) }()
		}
		for range nodes {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		for _, n := range nodes {
			select {
			case <-n.Ready():
			case <-n.Done():
				t.Fatalf("%s failed: %v", n.Name(), n.Err())
			case <-time.After(30 * time.Second):
				t.Fatalf("%s not ready", n.Name())
			}
		}
		if nodes[0].ClusterID() != nodes[1].ClusterID() {
			t.Fatalf("round %d: two clusters %s %s", round, nodes[0].ClusterID(), nodes[1].ClusterID())
		}
		keys := 0
		for i, n := range nodes {
			if _, err := os.Stat(TLSFiles(cfgs[i].DataDir).CAKey); err == nil {
				keys++
			}
			other := nodes[1-i]
			resp, err := n.HTTPClient().Get("https://" + other.APIAddr() + "/v1/status")
			if err != nil {
				t.Fatalf("round %d: %s to %s: %v", round, n.Name(), other.Name(), err)
			}
			resp.Body.Close()
		}
		if keys != 1 {
			t.Fatalf("round %d: %d nodes hold the CA key", round, keys)
		}
		for _, n := range nodes {
			n.Stop(context.Background())
		}
	}
}
