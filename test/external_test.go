package test

import (
	"bytes"
	"net/url"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/testnet"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"

	rm "github.com/hacs/hacs/internal/agent"
	"github.com/hacs/hacs/internal/nbd/tlstest"
)

// startTLSEtcd runs an etcd (in the test process) that serves its clients
// over TLS and requires a client certificate of its own CA, as a
// production store does. It returns the client URL and the directory with
// ca-cert.pem, client-cert.pem and client-key.pem of a client it accepts.
func startTLSEtcd(t *testing.T) (endpoint, clientDir string) {
	t.Helper()
	dir := shortTempDir(t)
	ca, err := tlstest.NewCA("external etcd CA")
	mustOK(t, err)
	srv, err := ca.Issue("etcd", tlstest.Options{})
	mustOK(t, err)
	cl, err := ca.Issue("hacs", tlstest.Options{Client: true})
	mustOK(t, err)
	serverDir, clientDir := filepath.Join(dir, "server"), filepath.Join(dir, "client")
	mustOK(t, tlstest.WriteDir(serverDir, ca.CertPEM, "server", srv))
	mustOK(t, tlstest.WriteDir(clientDir, ca.CertPEM, "client", cl))
	cfg := embed.NewConfig()
	cfg.Dir = filepath.Join(dir, "data")
	cfg.Name = "ext"
	peer, _ := url.Parse("http://" + testnet.FreeAddr(t))
	client, _ := url.Parse("https://" + testnet.FreeAddr(t))
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*client}, []url.URL{*client}
	cfg.InitialCluster = "ext=" + peer.String()
	cfg.ClientTLSInfo = transport.TLSInfo{CertFile: filepath.Join(serverDir, "server-cert.pem"), KeyFile: filepath.Join(serverDir, "server-key.pem"),
		TrustedCAFile: filepath.Join(serverDir, "ca-cert.pem"), ClientCertAuth: true}
	cfg.UnsafeNoFsync = true
	cfg.TickMs, cfg.ElectionMs = 50, 500
	cfg.LogLevel = "error"
	e, err := embed.StartEtcd(cfg)
	mustOK(t, err)
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		t.Fatal("external etcd not ready after 30 s")
	}
	return client.String(), clientDir
}

// TestExternalEtcdTLS: two `hacs agent` processes on an external etcd that
// requires client certificates (--etcd-cacert/--etcd-cert/--etcd-key) run
// a secure cluster: HTTPS API with the admin token of the node that created
// it, and a 2-replica volume replicated over the mutual-TLS replica links.
func TestExternalEtcdTLS(t *testing.T) {
	ep, cd := startTLSEtcd(t)
	start := time.Now()
	c := newRMCluster(t, 2, "--etcd-endpoints", ep, "--etcd-cacert", filepath.Join(cd, "ca-cert.pem"),
		"--etcd-cert", filepath.Join(cd, "client-cert.pem"), "--etcd-key", filepath.Join(cd, "client-key.pem"))
	t.Logf("2 agents on the external etcd online in %v", time.Since(start).Round(time.Millisecond))
	code, err := c.call("POST", "/v1/volumes", rm.VolumeRequest{Name: "ext", Size: 16 << 20, Replicas: 2}, nil)
	if err != nil || code != 201 {
		t.Fatalf("create: %d %v", code, err)
	}
	v := c.waitServed("ext", 0)
	if len(v.Placement) != 2 {
		t.Fatalf("placement %v", v.Placement)
	}
	cl := c.dial(v)
	data := bytes.Repeat([]byte("external"), 128<<10)
	if err := cl.WriteAt(data, 1<<20, true); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if err := cl.ReadAt(got, 1<<20); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: %v", err)
	}
	c.waitFor("2 replicas in sync", 30*time.Second, func() bool {
		v := c.volume("ext")
		return v.State != nil && len(v.State.InSync) == 2 && slices.Contains(v.State.InSync, v.Export.Node)
	})
	var rep struct {
		Differences []any    `json:"differences"`
		Compared    []string `json:"compared"`
	}
	if code, err := c.call("POST", "/v1/volumes/ext/verify", nil, &rep); err != nil || code != 200 || len(rep.Differences) != 0 {
		t.Fatalf("verify: %d %v %+v", code, err, rep)
	}
	t.Logf("verify: %+v", rep)
}
