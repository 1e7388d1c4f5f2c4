package cluster

import (
	"net/url"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/testnet"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
)

// startTestEtcd runs a single-member embedded etcd for the test and
// returns a client of it.
func startTestEtcd(t testing.TB) (*embed.Etcd, *clientv3.Client) {
	t.Helper()
	e, endpoint := runTestEtcd(t, nil)
	cli, err := newClient([]string{endpoint}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return e, cli
}

// runTestEtcd runs a single-member embedded etcd until the test ends and
// returns it with its client URL; it serves its clients over TLS with
// clientTLS, if given.
func runTestEtcd(t testing.TB, clientTLS *transport.TLSInfo) (*embed.Etcd, string) {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Dir = t.TempDir()
	cfg.Name = "test"
	scheme := "http://"
	if clientTLS != nil {
		scheme = "https://"
		cfg.ClientTLSInfo = *clientTLS
	}
	peer, _ := url.Parse("http://" + testnet.FreeAddr(t))
	client, _ := url.Parse(scheme + testnet.FreeAddr(t))
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*client}, []url.URL{*client}
	cfg.InitialCluster = "test=" + peer.String()
	cfg.UnsafeNoFsync = true
	cfg.TickMs, cfg.ElectionMs = 50, 500
	lg, err := etcdLogger("error")
	if err != nil {
		t.Fatal(err)
	}
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		t.Fatal("embedded etcd not ready after 30 s")
	}
	return e, client.String()
}
