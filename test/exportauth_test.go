package test

import (
	"bytes"
	"context"
	"crypto/tls"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	rm "github.com/hacs/hacs/internal/agent"
	"github.com/hacs/hacs/internal/cluster"
	"github.com/hacs/hacs/internal/mirror"
	"github.com/hacs/hacs/internal/nbd"
	"github.com/hacs/hacs/internal/nbd/tlstest"
	"github.com/hacs/hacs/internal/replica"
)

// TestExportAuth: in a secure cluster only its members and the holders of
// its export client certificates touch a volume. On a live two-node
// cluster: nbdinfo and qemu-io with the administrator's client directory
// read and write a volume; without a certificate, with another cluster's
// certificate and in plaintext they are refused (the reason checked on the
// client and in the agent's log); a certificate made with `hacs cluster
// auth client-cert create` works until it is revoked, while another client
// keeps reading; a client certificate is refused on the replication port
// and on the node-only API route; a volume created with --tls allowed
// serves plaintext clients.
func TestExportAuth(t *testing.T) {
	requireTools(t, "nbdinfo", "qemu-io")
	c := newRMCluster(t, 2)
	n1 := filepath.Join(c.dir, "n1")
	credEnv(t, n1)
	api := c.ports["n1"][0]
	if code, err := c.call("POST", "/v1/volumes", rm.VolumeRequest{Name: "va", Size: 16 << 20, Replicas: 2}, nil); err != nil || code != 201 {
		t.Fatalf("create va: %d %v", code, err)
	}
	r := runCmd(t, hacsBin, "volume", "create", "vopen", "--size", "8M", "--replicas", "1", "--tls", "allowed", "--cluster", api)
	if r.code != 0 {
		t.Fatalf("create vopen: %v", r)
	}
	v := c.waitServed("va", 0)
	addr := v.Export.Addr
	primaryLog := func() string { return c.procs[v.Export.Node].out.String() }
	adminDir := adminClientDir(n1)

	// the administrator's client directory: nbdinfo and qemu-io
	if out := nbdinfo(t, volumeNBDS(addr, "va", n1)); !out.TLS || out.Exports[0].Size != 16<<20 {
		t.Fatalf("nbdinfo with the admin client certificate: %+v", out)
	}
	srv := &server{network: "tcp", addr: addr}
	if r := runQemuIOTLS(t, srv, "va", adminDir, "write -P 0x5a 1M 1M", "flush", "read -P 0x5a 1M 1M"); r.code != 0 || qemuIOFailed(r) {
		t.Fatalf("qemu-io with the admin client certificate: %v", r)
	}

	// no certificate (the CA alone): refused by policy over TLS
	noCert := filepath.Join(shortTempDir(t), "nocert")
	mustOK(t, os.MkdirAll(noCert, 0o700))
	caPEM, err := os.ReadFile(filepath.Join(adminDir, cluster.ClientCAFile))
	mustOK(t, err)
	mustOK(t, os.WriteFile(filepath.Join(noCert, cluster.ClientCAFile), caPEM, 0o600))
	r = runCmd(t, "nbdinfo", "nbds://"+addr+"/va?tls-certificates="+noCert)
	if r.code == 0 || !strings.Contains(r.stderr, "opt_go") {
		t.Fatalf("nbdinfo without a client certificate: %v", r)
	}
	t.Logf("nbdinfo without a client certificate: %s", strings.TrimSpace(r.stderr))
	waitLogContains(t, primaryLog, "admits only authenticated clients")
	if r := runQemuIOTLS(t, srv, "va", noCert, "read 0 4k"); r.code == 0 && !qemuIOFailed(r) {
		t.Fatalf("qemu-io without a client certificate: %v", r)
	} else {
		t.Logf("qemu-io without a client certificate: %s", strings.TrimSpace(r.stderr+r.stdout))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	noCertTLS, err := cluster.CATLSConfig(caPEM)
	mustOK(t, err)
	if cl, err := nbd.Dial(ctx, "tcp", addr, nbd.ClientOptions{Export: "va", TLS: noCertTLS}); err == nil {
		cl.Close()
		t.Fatal("hacs NBD client without a certificate admitted")
	} else if !strings.Contains(err.Error(), "admits only authenticated clients") {
		t.Fatalf("hacs NBD client without a certificate: %v", err)
	}

	// another cluster's client certificate: the TLS handshake fails
	other, err := tlstest.NewCA("hacs cluster 0000000000000000 CA")
	mustOK(t, err)
	pair, err := other.Issue("intruder", tlstest.Options{Client: true})
	mustOK(t, err)
	foreignDir := filepath.Join(shortTempDir(t), "foreign")
	mustOK(t, tlstest.WriteDir(foreignDir, caPEM, "client", pair))
	r = runCmd(t, "nbdinfo", "nbds://"+addr+"/va?tls-certificates="+foreignDir)
	if r.code == 0 || !strings.Contains(strings.ToLower(r.stderr), "tls") {
		t.Fatalf("nbdinfo with another cluster's certificate: %v", r)
	}
	t.Logf("nbdinfo with another cluster's certificate: %s", strings.TrimSpace(r.stderr))
	waitLogContains(t, primaryLog, "not signed by this cluster's CA")

	// plaintext: the protocol's TLS-required error
	r = runCmd(t, "nbdinfo", "nbd://"+addr+"/va")
	if r.code == 0 || !strings.Contains(r.stderr, "Operation not supported") {
		t.Fatalf("plaintext nbdinfo: %v", r)
	}
	if cl, err := nbd.Dial(ctx, "tcp", addr, nbd.ClientOptions{Export: "va"}); err == nil {
		cl.Close()
		t.Fatal("plaintext hacs NBD client admitted")
	} else if !strings.Contains(err.Error(), "TLS required") {
		t.Fatalf("plaintext hacs NBD client: %v", err)
	}

	// a client certificate of this cluster: works until revoked, while
	// another client keeps reading
	vm2 := filepath.Join(shortTempDir(t), "vm2")
	r = runCmd(t, hacsBin, "cluster", "auth", "client-cert", "create", "vm2", "--out", vm2, "--ttl", "24h", "--cluster", api)
	if r.code != 0 || !strings.Contains(r.stdout, "tls-certificates="+vm2) {
		t.Fatalf("client-cert create: %v", r)
	}
	for _, f := range []string{cluster.ClientCAFile, cluster.ClientCertFile, cluster.ClientKeyFile} {
		if st, err := os.Stat(filepath.Join(vm2, f)); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f, st, err)
		}
	}
	if r := runQemuIOTLS(t, srv, "va", vm2, "read -P 0x5a 1M 1M"); r.code != 0 || qemuIOFailed(r) {
		t.Fatalf("qemu-io with vm2's certificate: %v", r)
	}
	reader, err := nbd.Dial(ctx, "tcp", addr, nbd.ClientOptions{Export: "va", TLS: exportTLS(t, n1)})
	mustOK(t, err)
	defer reader.Close()
	readBack := func(cl *nbd.Client) {
		t.Helper()
		got := make([]byte, 1<<20)
		mustOK(t, cl.ReadAt(got, 1<<20))
		if !bytes.Equal(got, bytes.Repeat([]byte{0x5a}, 1<<20)) {
			t.Fatal("read back other data")
		}
	}
	readBack(reader)
	vm2Conn, err := nbd.Dial(ctx, "tcp", addr, nbd.ClientOptions{Export: "va", TLS: dirTLS(t, vm2)})
	mustOK(t, err)
	defer vm2Conn.Close()
	readBack(vm2Conn)
	if r := runCmd(t, hacsBin, "cluster", "auth", "client-cert", "list", "--cluster", api); r.code != 0 || !strings.Contains(r.stdout, "vm2") || !strings.Contains(r.stdout, "admin") {
		t.Fatalf("client-cert list: %v", r)
	}
	if r := runCmd(t, hacsBin, "cluster", "auth", "client-cert", "revoke", "vm2", "--cluster", api); r.code != 0 {
		t.Fatalf("client-cert revoke: %v", r)
	}
	revokedAt := time.Now()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if vm2Conn.ReadAt(make([]byte, 4096), 0) != nil {
			t.Logf("vm2's open connection found cut %v after the revoke command returned", time.Since(revokedAt).Round(time.Microsecond))
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("vm2's open connection still reads 10 s after its revocation")
		}
		time.Sleep(5 * time.Millisecond)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		r = runCmd(t, "nbdinfo", "nbds://"+addr+"/va?tls-certificates="+vm2)
		if r.code != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("vm2's certificate still admitted 10 s after its revocation")
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("nbdinfo with a revoked certificate: %s", strings.TrimSpace(r.stderr))
	waitLogContains(t, primaryLog, "was revoked (hacs cluster auth client-cert revoke)")
	readBack(reader) // the other client kept its connection
	waitLogContains(t, primaryLog, "nbd connection cut")
	if out := nbdinfo(t, volumeNBDS(addr, "va", n1)); !out.TLS {
		t.Fatalf("nbdinfo with the admin certificate after vm2's revocation: %+v", out)
	}
	if r := runCmd(t, hacsBin, "events", "--kind", cluster.EventClientCertRevoked, "--cluster", api); r.code != 0 || !strings.Contains(r.stdout, "revoked by token admin") {
		t.Fatalf("revocation event: %v", r)
	}

	// a client certificate is no node: refused on the replication port
	// and on the node-only API route
	other2 := "n1"
	if v.Export.Node == "n1" {
		other2 = "n2"
	}
	repExport := replica.ExportName("va", v.Export.Epoch, mirror.ReplicaSize(16<<20))
	if cl, err := nbd.Dial(ctx, "tcp", c.ports[other2][3], nbd.ClientOptions{Export: repExport, TLS: exportTLS(t, n1)}); err == nil {
		cl.Close()
		t.Fatal("the replica server admitted an export client certificate")
	} else {
		t.Logf("replica port, export client certificate: %v", err)
	}
	waitLogContains(t, func() string { return c.procs[other2].out.String() }, "opens volume exports only")
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: exportTLS(t, n1)}}
	resp, err := hc.Post("https://"+c.ports[other2][0]+"/v1/replicas/va", "application/json", strings.NewReader(`{"op": "snapshot", "snapshot": "x"}`))
	mustOK(t, err)
	body := new(bytes.Buffer)
	body.ReadFrom(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 401 || !strings.Contains(body.String(), "opens volume exports only") {
		t.Fatalf("node-only API route with a client certificate: %d %s", resp.StatusCode, body)
	}

	// --tls allowed opts out: plaintext clients get in
	vo := c.waitServed("vopen", 0)
	if out := nbdinfo(t, "nbd://"+vo.Export.Addr+"/vopen"); out.TLS || out.Exports[0].Size != 8<<20 {
		t.Fatalf("plaintext nbdinfo on a --tls allowed volume: %+v", out)
	}
	readBack(reader)

	// the policy changes while the volumes are served: va opts out, vopen in
	if r := runCmd(t, hacsBin, "volume", "tls", "allowed", "va", "--cluster", api); r.code != 0 {
		t.Fatalf("volume tls allowed va: %v", r)
	}
	if r := runCmd(t, hacsBin, "volume", "tls", "required", "vopen", "--cluster", api); r.code != 0 {
		t.Fatalf("volume tls required vopen: %v", r)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		ra := runCmd(t, "nbdinfo", "nbd://"+addr+"/va")
		ro := runCmd(t, "nbdinfo", "nbd://"+vo.Export.Addr+"/vopen")
		if ra.code == 0 && ro.code != 0 && strings.Contains(ro.stderr, "Operation not supported") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("policy changes not applied after 10 s: va plaintext %v; vopen plaintext %v", ra, ro)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if out := nbdinfo(t, volumeNBDS(vo.Export.Addr, "vopen", n1)); !out.TLS {
		t.Fatalf("nbdinfo with the admin certificate on vopen after tls required: %+v", out)
	}
	if r := runCmd(t, hacsBin, "volume", "tls", "maybe", "va", "--cluster", api); r.code == 0 || !strings.Contains(r.stderr, "want off, allowed or required") {
		t.Fatalf("volume tls maybe: %v", r)
	}
	readBack(reader)
}

// waitLogContains waits up to 10 s for a process log to contain want.
func waitLogContains(t testing.TB, log func() string, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(log(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("the agent's log does not say %q; its end:\n%s", want, clip(log()))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// dirTLS is the TLS configuration of the x509 client directory dir (the
// server checked against its ca-cert.pem as a node of the cluster).
func dirTLS(t testing.TB, dir string) *tls.Config {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, cluster.ClientCertFile), filepath.Join(dir, cluster.ClientKeyFile))
	mustOK(t, err)
	ca, err := os.ReadFile(filepath.Join(dir, cluster.ClientCAFile))
	mustOK(t, err)
	tc, err := cluster.CATLSConfig(ca)
	mustOK(t, err)
	tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	return tc
}
