package test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	rm "github.com/hacs/hacs/internal/agent"
	"github.com/hacs/hacs/internal/cluster"
	"github.com/hacs/hacs/internal/nbd"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// firstCert parses the first certificate of a PEM file.
func firstCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM certificate", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestCARotationWithoutDowntime rotates the CA of a 3-agent cluster while a
// client reads and writes a volume through its export over TLS (trusting
// the old CA only, like a hypervisor nobody updated): no I/O fails. A node
// restarted in the middle of the rotation comes back, another one restarted
// after it too; after --finish every node runs a certificate of the new
// CA, and a certificate the old CA signed is refused by the API, the
// replica port and etcd.
func TestCARotationWithoutDowntime(t *testing.T) {
	requireTools(t, "nbdinfo")
	c := newRMCluster(t, 3)
	n1 := filepath.Join(c.dir, "n1")
	env := []string{"HACS_CONFIG_DIR=" + t.TempDir(), "HACS_CA_FILE=" + caFileOf(n1), "HACS_TOKEN_FILE=" + filepath.Join(n1, cluster.AdminTokenFile)}
	if code, err := c.call("POST", "/v1/volumes", rm.VolumeRequest{Name: "cv", Size: 8 << 20, Replicas: 2}, nil); err != nil || code != 201 {
		t.Fatalf("create: %d %v", code, err)
	}
	v := c.waitServed("cv", 0)
	server := v.Export.Node
	var others []string
	for _, n := range []string{"n1", "n2", "n3"} {
		if n != server {
			others = append(others, n)
		}
	}
	// what the old CA signed, kept for the checks after the rotation
	oldCAPEM, err := os.ReadFile(caFileOf(n1))
	if err != nil {
		t.Fatal(err)
	}
	oldCA := firstCert(t, caFileOf(n1))
	oldNode := nodeTLS(t, filepath.Join(c.dir, others[0]))
	oldNode.InsecureSkipVerify = true

	// a client of the export, trusting the old CA only, writing and
	// reading back all along
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(oldCAPEM)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
	adminTLS := exportTLS(t, n1) // the admin's export client certificate (old CA); servers checked with the old CA
	cl, err := nbd.Dial(dctx, "tcp", v.Export.Addr, nbd.ClientOptions{Export: v.Export.Name, TLS: adminTLS})
	dcancel()
	if err != nil {
		t.Fatalf("export over TLS: %v", err)
	}
	defer cl.Close()
	var ios, ioErrs atomic.Int64
	var firstErr atomic.Value
	ioDone := make(chan struct{})
	go func() {
		defer close(ioDone)
		buf, got := make([]byte, 4096), make([]byte, 4096)
		for i := 0; ctx.Err() == nil; i++ {
			for k := range buf {
				buf[k] = byte(i + k)
			}
			off := int64(i%512) * 4096
			err := cl.WriteAt(buf, off, false)
			if err == nil {
				err = cl.ReadAt(got, off)
			}
			if err == nil && !bytes.Equal(buf, got) {
				err = os.ErrInvalid
			}
			if err != nil {
				ioErrs.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
			}
			ios.Add(1)
			time.Sleep(5 * time.Millisecond)
		}
	}()

	stepEnv := env
	step := func(args ...string) string {
		t.Helper()
		start := time.Now()
		r := runEnv(t, stepEnv, append(append([]string{"cluster", "rotate-ca"}, args...), "--cluster", c.ports[server][0])...)
		if r.code != 0 {
			t.Fatalf("rotate-ca %v: %v", args, r)
		}
		t.Logf("rotate-ca %s took %v:\n%s", strings.Join(args, " "), time.Since(start).Round(time.Millisecond), r.stdout)
		return r.stdout
	}

	// 1+2: trust both, re-issue everywhere (the command waits for both)
	caOut := filepath.Join(t.TempDir(), "ca.crt")
	step("--ca-out", caOut)
	if b, _ := os.ReadFile(caOut); bytes.Count(b, []byte("BEGIN CERTIFICATE")) != 2 {
		t.Fatalf("--ca-out during the rotation should hold both CAs:\n%s", b)
	}
	newCA := firstCert(t, filepath.Join(c.dir, server, "tls", "node.crt"))
	if newCA.CheckSignatureFrom(oldCA) == nil {
		t.Fatal("after the re-issue the export's node still runs a certificate of the old CA")
	}
	// export client certificates of the old CA are listed until replaced
	if st := step("--status"); !strings.Contains(st, "export client certificates of the old CA: admin") {
		t.Fatalf("status does not list the admin's old export client certificate:\n%s", st)
	}
	newClient := filepath.Join(t.TempDir(), "vmhost")
	if r := runEnv(t, env, "cluster", "auth", "client-cert", "create", "vmhost", "--out", newClient, "--cluster", c.ports[server][0]); r.code != 0 {
		t.Fatalf("client-cert create: %v", r)
	}
	// a node restarted in the middle of the rotation comes back
	mid := others[1]
	c.procs[mid].stop()
	c.start(mid)
	c.waitOnline(3)
	t.Logf("%s restarted mid-rotation and is back", mid)
	if st := step("--status"); !strings.Contains(st, "reissue") {
		t.Fatalf("status mid-rotation: %s", st)
	}
	if r := runEnv(t, env, "cluster", "status", "--cluster", c.ports[server][0]); r.code != 0 || !strings.Contains(r.stdout, "CA rotation ") || !strings.Contains(r.stdout, "phase reissue") {
		t.Fatalf("cluster status mid-rotation does not show it: %v", r)
	}

	// 3: finish; the old CA is no longer trusted
	// finish with the CLI's credentials in a client config directory (no
	// --ca-file, no --ca-out): its ca.crt follows the rotation
	cfgDir := t.TempDir()
	bundle, _ := os.ReadFile(caOut)
	tok, _ := os.ReadFile(filepath.Join(n1, cluster.AdminTokenFile))
	os.WriteFile(filepath.Join(cfgDir, "ca.crt"), bundle, 0o644)
	os.WriteFile(filepath.Join(cfgDir, "token"), tok, 0o600)
	stepEnv = []string{"HACS_CONFIG_DIR=" + cfgDir, "HACS_CA_FILE=", "HACS_TOKEN=", "HACS_TOKEN_FILE="}
	step("--finish")
	nb, _ := os.ReadFile(filepath.Join(cfgDir, "ca.crt"))
	if bytes.Count(nb, []byte("BEGIN CERTIFICATE")) != 1 || bytes.Equal(nb, oldCAPEM) {
		t.Fatalf("the config directory's ca.crt after --finish should hold the new CA only:\n%s", nb)
	}
	newPool := x509.NewCertPool()
	newPool.AppendCertsFromPEM(nb)
	for _, n := range []string{"n1", "n2", "n3"} {
		leaf := firstCert(t, filepath.Join(c.dir, n, "tls", "node.crt"))
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: newPool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Errorf("%s's certificate after the rotation: %v", n, err)
		}
		if b, _ := os.ReadFile(caFileOf(filepath.Join(c.dir, n))); !bytes.Equal(b, nb) {
			t.Errorf("%s still trusts other CAs than the new one", n)
		}
	}
	// a node restarted after the rotation comes back (its etcd trusts
	// the new CA only; the others' still hold the old one in memory)
	after := others[0]
	c.procs[after].stop()
	c.start(after)
	c.waitOnline(3)
	t.Logf("%s restarted after the rotation and is back", after)

	time.Sleep(500 * time.Millisecond)
	cancel()
	<-ioDone
	t.Logf("export I/O during the rotation: %d write+read rounds, %d errors", ios.Load(), ioErrs.Load())
	if ioErrs.Load() > 0 {
		t.Errorf("%d I/O errors during the rotation, first: %v", ioErrs.Load(), firstErr.Load())
	}

	// a standard client (nbdinfo: GnuTLS) verifies the export's chain
	// (new node certificate + cross certificate) with the new CA, and
	// with the old CA it was configured with
	for name, caPEM := range map[string][]byte{"new CA": nb, "old CA": oldCAPEM} {
		d := t.TempDir()
		for _, f := range []string{"client-cert.pem", "client-key.pem"} {
			b, err := os.ReadFile(filepath.Join(newClient, f))
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(d, f), b, 0o600)
		}
		if err := os.WriteFile(filepath.Join(d, "ca-cert.pem"), caPEM, 0o644); err != nil {
			t.Fatal(err)
		}
		r := runCmd(t, "nbdinfo", "--size", "nbds://"+v.Export.Addr+"/"+v.Export.Name+"?tls-certificates="+d)
		if r.code != 0 || strings.TrimSpace(r.stdout) != "8388608" {
			t.Errorf("nbdinfo over TLS trusting the %s after the rotation: %v", name, r)
		}
	}

	// another rotation is refused while the export's node (never
	// restarted) runs an etcd that trusts only the old CA: the next
	// re-issue would break its peer links
	if r := runEnv(t, stepEnv, "cluster", "rotate-ca", "--cluster", c.ports[server][0]); r.code == 0 || !strings.Contains(r.stderr, "embedded etcd of node "+server) {
		t.Errorf("a second rotation before %s restarted: %v", server, r)
	} else {
		t.Logf("second rotation: %s", strings.TrimSpace(r.stderr))
	}

	// a certificate the old CA signed is refused everywhere
	bctx, bcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer bcancel()
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: oldNode}}
	if resp, err := hc.Get(c.api(server) + "/v1/status"); err == nil {
		resp.Body.Close()
		t.Errorf("API admitted a certificate of the old CA: %s", resp.Status)
	} else {
		t.Logf("API, old-CA certificate: %v", err)
	}
	if cl, err := nbd.Dial(bctx, "tcp", v.Export.Addr, nbd.ClientOptions{Export: v.Export.Name, TLS: adminTLS}); err == nil {
		cl.Close()
		t.Error("export port admitted the export client certificate of the old CA")
	} else {
		t.Logf("export port, old-CA client certificate: %v", err)
	}
	if cl, err := nbd.Dial(bctx, "tcp", c.ports[server][3], nbd.ClientOptions{Export: "x", TLS: oldNode}); err == nil {
		cl.Close()
		t.Error("replica port admitted a certificate of the old CA")
	} else {
		t.Logf("replica port, old-CA certificate: %v", err)
	}
	for _, n := range []string{server, after} {
		ecli, err := clientv3.New(clientv3.Config{Endpoints: []string{"https://" + c.ports[n][2]}, TLS: oldNode, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
		if err == nil {
			gctx, gcancel := context.WithTimeout(bctx, 3*time.Second)
			_, err = ecli.Get(gctx, "/hacs/cluster")
			gcancel()
			ecli.Close()
		}
		if err == nil {
			t.Errorf("etcd of %s admitted a certificate of the old CA", n)
		} else {
			t.Logf("etcd of %s, old-CA certificate: %v", n, err)
		}
	}
	// etcd's peer port (etcd's own listener): the member started before the
	// rotation refuses the old certificate through the revocation list, the
	// one restarted after it through its trust
	for _, n := range []string{server, after} {
		phc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: oldNode}}
		if resp, err := phc.Get("https://" + c.ports[n][1] + "/members"); err == nil {
			resp.Body.Close()
			t.Errorf("etcd peer port of %s admitted a certificate of the old CA: %s", n, resp.Status)
		} else {
			t.Logf("etcd peer port of %s, old-CA certificate: %v", n, err)
		}
	}
	// while the new certificates work there
	cur := nodeTLS(t, filepath.Join(c.dir, others[0]))
	cur.InsecureSkipVerify = true
	ecli, err := clientv3.New(clientv3.Config{Endpoints: []string{"https://" + c.ports[server][2]}, TLS: cur, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer ecli.Close()
	phc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cur}}
	if resp, err := phc.Get("https://" + c.ports[server][1] + "/members"); err != nil {
		t.Errorf("etcd peer port with a certificate of the new CA: %v", err)
	} else {
		resp.Body.Close()
	}
	gctx, gcancel := context.WithTimeout(bctx, 5*time.Second)
	if _, err := ecli.Get(gctx, "/hacs/cluster"); err != nil {
		t.Errorf("etcd with a certificate of the new CA: %v", err)
	}
	gcancel()
}
