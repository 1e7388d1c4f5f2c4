package nbd

import (
	"strings"
	"testing"

	"github.com/hacs/hacs/internal/tlspsk"
)

// TestSetPSKKeys: replacing the pre-shared keys while serving cuts at once
// the connections of an identity removed or whose key changed (in
// transmission and in negotiation), keeps the others, refuses the old
// key from then on and admits a new identity.
func TestSetPSKKeys(t *testing.T) {
	p := newTestPKI(t, "ca")
	logs := &syncBuf{}
	srv, sock := startServerWith(t, logs, p.serverConfig(false), pskKeys, memExport("vol", 1<<20), memExport("vol2", 1<<20))
	dial := func(export string, k *tlspsk.Config) *Client {
		t.Helper()
		c, err := dialErr(sock, ClientOptions{Export: export, PSK: k})
		mustOK(t, err)
		t.Cleanup(func() { c.Close() })
		return c
	}
	alice := dial("vol", pskClient("alice", pskAlice))
	alice2 := dial("vol2", pskClient("alice", pskAlice))
	bob := dial("vol", pskClient("bob", pskBob))
	cert := dial("vol", nil)
	// a client in negotiation: TLS with alice's key done, no export chosen
	pending := dialRaw(t, sock)
	pending.greet(clientFixedNewstyle | clientNoZeroes)
	pending.opt(optStartTLS, nil)
	if typ, _ := pending.optReply(optStartTLS); typ != repAck {
		t.Fatalf("STARTTLS: %#x", typ)
	}
	ptls := tlspsk.Client(pending.nc, pskClient("alice", pskAlice))
	mustOK(t, ptls.Handshake())
	pending.nc = ptls
	pending.opt(optList, nil) // answered: the server took the identity
	pending.finalReply(optList)
	for _, c := range []*Client{alice, alice2, bob, cert} {
		roundTrip(t, c)
	}

	// bob's key changes, alice is removed, carol is new
	carolKey := []byte("carol-carol-carol-carol-carol-32")
	bobNew := []byte("0000000000000000bbbbbbbbbbbbbbbb")
	n, err := srv.SetPSKKeys(tlspsk.Keys{"bob": bobNew, "carol": carolKey})
	mustOK(t, err)
	if n != 4 {
		t.Fatalf("SetPSKKeys cut %d connections, want 4 (alice's three, bob's)", n)
	}
	if _, err := ptls.Read(make([]byte, 1)); err == nil {
		t.Fatal("alice's connection in negotiation was not cut")
	}
	for name, c := range map[string]*Client{"alice": alice, "alice on vol2": alice2, "bob": bob} {
		if err := c.ReadAt(make([]byte, 4096), 0); err == nil {
			t.Fatalf("%s: the cut connection still serves reads", name)
		}
	}
	roundTrip(t, cert)
	waitLog(t, logs, "nbd connection cut: its pre-shared key identity was removed from the key file")
	waitLog(t, logs, "nbd connection cut: the key of its pre-shared key identity changed")
	if _, err := dialErr(sock, ClientOptions{Export: "vol", PSK: pskClient("alice", pskAlice)}); err == nil || !strings.Contains(err.Error(), "does not know the identity \"alice\"") {
		t.Fatalf("alice after her removal: %v", err)
	}
	if _, err := dialErr(sock, ClientOptions{Export: "vol", PSK: pskClient("bob", pskBob)}); err == nil || !strings.Contains(err.Error(), "wrong key") {
		t.Fatalf("bob with his old key: %v", err)
	}
	roundTrip(t, dial("vol", pskClient("bob", bobNew)))
	roundTrip(t, dial("vol2", pskClient("carol", carolKey)))

	// the same keys again cut nothing; no keys are refused
	if n, err := srv.SetPSKKeys(tlspsk.Keys{"bob": bobNew, "carol": carolKey}); err != nil || n != 0 {
		t.Fatalf("the same keys: %d %v", n, err)
	}
	if _, err := srv.SetPSKKeys(tlspsk.Keys{}); err == nil {
		t.Fatal("SetPSKKeys took no keys")
	}
	roundTrip(t, dial("vol", pskClient("carol", carolKey)))
}
