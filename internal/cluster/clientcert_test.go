package cluster

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// handshake runs one TLS handshake between a client presenting cert (nil:
// none) and a listener with server configuration srv; it returns the
// client's error and the server's (the verified peer certificates on
// success).
func handshake(t *testing.T, srv, cli *tls.Config) (clientErr, serverErr error, peers []*x509.Certificate) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		err   error
		peers []*x509.Certificate
	}
	done := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- res{err: err}
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		if err := tc.Handshake(); err != nil {
			done <- res{err: err}
			return
		}
		tc.Write([]byte("ok"))
		done <- res{peers: tc.ConnectionState().PeerCertificates}
	}()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ln.Addr().String(), cli)
	if err == nil {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = io.ReadFull(c, make([]byte, 2)) // TLS 1.3: a refusal shows here
		c.Close()
	}
	r := <-done
	return err, r.err, r.peers
}

// clientCertFrom signs an export client certificate of cluster cid valid
// from nb to na (expired ones included) with a.
func clientCertFrom(t *testing.T, a *ca, cid, name string, nb, na time.Time) tls.Certificate {
	t.Helper()
	keyPEM, csrPEM, err := NewClientKey(name)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(csrPEM)
	csr, _ := x509.ParseCertificateRequest(b.Bytes)
	u, _ := url.Parse(clientCertURI(cid, name))
	tmpl := &x509.Certificate{SerialNumber: randomSerial(), Subject: pkix.Name{CommonName: "export client " + name},
		NotBefore: nb, NotAfter: na, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, URIs: []*url.URL{u}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, csr.PublicKey, a.key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.X509KeyPair(pemEncode("CERTIFICATE", der), keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestClientCerts: export client certificates are issued through the API
// (admin only) from a certificate request, are client-only and named as
// clients, open the volume exports' TLS and nothing that needs a node
// (the node-only TLS port, etcd, the API as a node, a node's client
// checking its server), and are refused once revoked while others keep
// working.
func TestClientCerts(t *testing.T) {
	n, cfg := startSoloNode(t, "c1")
	if n.creds == nil {
		t.Skip("HACS_TEST_INSECURE: no PKI")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	api := "https://" + n.APIAddr()
	adminTok := adminToken(t, cfg.DataDir)
	hc := caClient(t, cfg.DataDir, nil)
	caPEM, _ := os.ReadFile(TLSFiles(cfg.DataDir).CACert)

	// the cluster's creation wrote the administrator's client directory
	ad := filepath.Join(cfg.DataDir, AdminClientDir)
	for _, f := range []string{CACertFile, ClientCAFile, ClientCertFile, ClientKeyFile, "token"} {
		st, err := os.Stat(filepath.Join(ad, f))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s/%s: %v %v", ad, f, st, err)
		}
	}
	adminCert, err := tls.LoadX509KeyPair(filepath.Join(ad, ClientCertFile), filepath.Join(ad, ClientKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if k, cid, name := CertIdentity(adminCert.Leaf); k != CertExportClient || cid != n.ClusterID() || name != "admin" {
		t.Fatalf("admin client certificate: %v %s %s", k, cid, name)
	}

	// issue one through the API
	create := func(tok, name string) (int, string, ClientCertResponse, []byte) {
		keyPEM, csr, err := NewClientKey(name)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := json.Marshal(clientCertRequest{Name: name, CSR: string(csr), TTL: "48h"})
		req, _ := http.NewRequest("POST", api+"/v1/auth/client-certs", strings.NewReader(string(body)))
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		rb, _ := io.ReadAll(resp.Body)
		var out ClientCertResponse
		var e struct{ Error string }
		json.Unmarshal(rb, &out)
		json.Unmarshal(rb, &e)
		return resp.StatusCode, e.Error, out, keyPEM
	}
	ro, err := n.CreateToken(ctx, "viewer", AuthReadOnly, "test")
	if err != nil {
		t.Fatal(err)
	}
	if code, msg, _, _ := create(ro, "vmhost1"); code != 403 || !strings.Contains(msg, "needs admin") {
		t.Fatalf("read-only token creating a client certificate: %d %s", code, msg)
	}
	code, msg, out, keyPEM := create(adminTok, "vmhost1")
	if code != 200 {
		t.Fatalf("create: %d %s", code, msg)
	}
	if out.CA != string(caPEM) || out.CreatedBy == "" || !strings.Contains(out.CreatedBy, "token admin") {
		t.Fatalf("create answer: %+v", out.ClientCert)
	}
	host1, err := tls.X509KeyPair([]byte(out.Cert), keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	leaf := host1.Leaf
	if len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth || len(leaf.DNSNames)+len(leaf.IPAddresses) != 0 || leaf.IsCA {
		t.Fatalf("client certificate usages/names: %v %v %v", leaf.ExtKeyUsage, leaf.DNSNames, leaf.IPAddresses)
	}
	if k, cid, name := CertIdentity(leaf); k != CertExportClient || cid != n.ClusterID() || name != "vmhost1" {
		t.Fatalf("identity: %v %s %s", k, cid, name)
	}
	if cid, _ := PeerNode(leaf); cid != "" {
		t.Fatal("PeerNode takes a client certificate for a node")
	}
	if d := time.Until(leaf.NotAfter); d < 47*time.Hour || d > 49*time.Hour {
		t.Fatalf("ttl 48h gave %v", d)
	}
	if err := leaf.VerifyHostname(nodeOnlyHostname); err == nil {
		t.Fatal("a client certificate is valid for the node-only host name")
	}
	if err := n.creds.Leaf().VerifyHostname(nodeOnlyHostname); err != nil {
		t.Fatalf("the node certificate is not valid for the node-only host name: %v", err)
	}
	if code, msg, _, _ := create(adminTok, "vmhost1"); code != 409 || !strings.Contains(msg, "revoke it first") {
		t.Fatalf("duplicate: %d %s", code, msg)
	}
	code, msg, out2, key2 := create(adminTok, "vmhost2")
	if code != 200 {
		t.Fatalf("create vmhost2: %d %s", code, msg)
	}
	host2, _ := tls.X509KeyPair([]byte(out2.Cert), key2)
	var list []ClientCert
	req, _ := http.NewRequest("GET", api+"/v1/auth/client-certs", nil)
	req.Header.Set("Authorization", "Bearer "+adminTok)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	if len(list) != 3 || list[0].Name != "admin" || list[1].Name != "vmhost1" || list[2].Name != "vmhost2" {
		t.Fatalf("list: %+v", list)
	}

	// the exports' TLS: a client certificate, a node certificate, or none
	// (unauthenticated); another cluster's, an expired one: refused
	exp := n.ExportTLSServerConfig()
	withCert := func(c *tls.Certificate) *tls.Config {
		tc, err := CATLSConfig(caPEM)
		if err != nil {
			t.Fatal(err)
		}
		if c != nil {
			tc.Certificates = []tls.Certificate{*c}
		}
		return tc
	}
	nodeCert, _ := n.creds.certificate()
	for _, c := range []struct {
		name string
		cert *tls.Certificate
		n    int
	}{{"client vmhost1", &host1, 1}, {"admin", &adminCert, 1}, {"node", nodeCert, 1}, {"none", nil, 0}} {
		cerr, serr, peers := handshake(t, exp, withCert(c.cert))
		if cerr != nil || serr != nil || len(peers) != c.n {
			t.Fatalf("export TLS with %s certificate: client %v, server %v, %d peer certificates", c.name, cerr, serr, len(peers))
		}
	}
	otherPEM, otherKey, _ := newCA("0000000000000000")
	other, _ := parseCA(otherPEM, otherKey)
	mine, err := n.loadCA(ctx, n.Client())
	if err != nil {
		t.Fatal(err)
	}
	foreign := clientCertFrom(t, other, "0000000000000000", "intruder", time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	expired := clientCertFrom(t, mine, n.ClusterID(), "old", time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour))
	plain := certFrom(t, mine, "nobody", time.Now().Add(-time.Hour), time.Now().Add(time.Hour)) // this CA, no hacs name
	for _, c := range []struct {
		name string
		cert tls.Certificate
		want string
	}{{"another cluster's", foreign, "not signed by this cluster's CA"}, {"expired", expired, "expired"}, {"unnamed", plain, "neither a node nor an export client"}} {
		_, serr, _ := handshake(t, exp, withCert(&c.cert))
		if serr == nil || !strings.Contains(serr.Error(), c.want) {
			t.Fatalf("export TLS with %s certificate: %v, want %q", c.name, serr, c.want)
		}
		t.Logf("export TLS, %s certificate: %v", c.name, serr)
	}

	// a client certificate opens nothing that needs a node
	_, serr, _ := handshake(t, n.TLSServerConfig(true), withCert(&host1))
	if serr == nil || !strings.Contains(serr.Error(), "export client certificate \"vmhost1\"") || !strings.Contains(serr.Error(), "only nodes of this cluster may connect") {
		t.Fatalf("node-only port with a client certificate: %v", serr)
	}
	t.Logf("node-only port, client certificate: %v", serr)
	if _, serr, _ := handshake(t, n.TLSServerConfig(true), withCert(nodeCert)); serr != nil {
		t.Fatalf("node-only port with the node certificate: %v", serr)
	}
	if err := etcdReachable(t, n.ident.ClientURL, cfg.DataDir, host1); err == nil {
		t.Fatal("etcd answered a client certificate")
	} else {
		t.Logf("etcd, client certificate: %v", err)
	}
	if err := etcdReachable(t, n.ident.ClientURL, cfg.DataDir, *nodeCert); err != nil {
		t.Fatalf("etcd refused the node certificate: %v", err)
	}
	// etcd's peer port: the handshake with a client certificate fails,
	// with the node certificate the peer server waits for a request
	peerRead := func(cert *tls.Certificate) error {
		tc := withCert(cert)
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", strings.TrimPrefix(n.ident.PeerURL, "https://"), tc)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Second))
		_, err = c.Read(make([]byte, 1))
		return err
	}
	if err := peerRead(&host1); err == nil || os.IsTimeout(err) {
		t.Fatalf("etcd peer port with a client certificate: %v, want a refusal", err)
	} else {
		t.Logf("etcd peer port, client certificate: %v", err)
	}
	if err := peerRead(nodeCert); !os.IsTimeout(err) {
		t.Fatalf("etcd peer port with the node certificate: %v, want it to wait for a request", err)
	}
	cl := caClient(t, cfg.DataDir, &host1)
	if code, msg := apiCall(t, cl, "GET", api+"/v1/nodes", "", ""); code != 401 || !strings.Contains(msg, "opens volume exports only") {
		t.Fatalf("API with a client certificate: %d %s", code, msg)
	}
	if code, msg := apiCall(t, cl, "POST", api+"/v1/nodes/c1/standby", "", `{"standby": true}`); code != 401 {
		t.Fatalf("API change with a client certificate: %d %s", code, msg)
	}
	// a node dialling a "server" with a client certificate refuses it
	srvCfg := &tls.Config{Certificates: []tls.Certificate{host1}}
	if cerr, _, _ := handshake(t, srvCfg, n.TLSClientConfig()); cerr == nil {
		t.Fatal("a node accepted a server presenting a client certificate")
	} else {
		t.Logf("node client, server with a client certificate: %v", cerr)
	}

	// revocation: refused from the next handshake on, the others keep
	// working, the event names who did it
	req, _ = http.NewRequest("DELETE", api+"/v1/auth/client-certs/vmhost1", nil)
	req.Header.Set("Authorization", "Bearer "+adminTok)
	resp, err = hc.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("revoke: %v %v", resp, err)
	}
	resp.Body.Close()
	waitCond(t, 10*time.Second, func() bool {
		_, serr, _ := handshake(t, exp, withCert(&host1))
		return serr != nil && strings.Contains(serr.Error(), "was revoked")
	})
	if cerr, serr, _ := handshake(t, exp, withCert(&host2)); cerr != nil || serr != nil {
		t.Fatalf("vmhost2 after vmhost1's revocation: %v %v", cerr, serr)
	}
	if code, msg := apiCall(t, hc, "DELETE", api+"/v1/auth/client-certs/vmhost1", adminTok, ""); code != 409 {
		t.Fatalf("revoking twice: %d %s", code, msg)
	}
	if code, msg := apiCall(t, hc, "DELETE", api+"/v1/auth/client-certs/nobody", adminTok, ""); code != 404 {
		t.Fatalf("revoking an unknown name: %d %s", code, msg)
	}
	waitCond(t, 5*time.Second, func() bool {
		evs, _, err := ListEvents(ctx, n.Client(), EventFilter{Kind: EventClientCertRevoked})
		return err == nil && len(evs) == 1 && strings.Contains(evs[0].Fields["by"], "token admin")
	})
	// the revocation list etcd reads has the serial
	waitCond(t, 10*time.Second, func() bool {
		der, err := os.ReadFile(TLSFiles(cfg.DataDir).CRL)
		if err != nil {
			return false
		}
		l, err := x509.ParseRevocationList(der)
		if err != nil {
			return false
		}
		for _, e := range l.RevokedCertificateEntries {
			if fmt.Sprintf("%x", e.SerialNumber) == out.Serial {
				return true
			}
		}
		return false
	})
	// a new certificate under the same name after the revocation
	if code, msg, _, _ := create(adminTok, "vmhost1"); code != 200 {
		t.Fatalf("re-create after revoke: %d %s", code, msg)
	}
}
