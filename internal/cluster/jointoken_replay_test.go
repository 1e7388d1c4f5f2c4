package cluster

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestJoinTokenReplayForJoinedNode: a used (or expired) join token admits
// again only the node that used it, proven by its key: whoever else holds
// the token and knows that node's id (it is in every certificate the node
// presents) gets no certificate for that node.
func TestJoinTokenReplayForJoinedNode(t *testing.T) {
	skipWithoutTLS(t)
	ctx := context.Background()
	n, cfg := startSoloNode(t, "r1")
	tok, _, err := n.CreateJoinToken(ctx, 2*time.Second, 1, "test")
	if err != nil {
		t.Fatal(err)
	}
	hc := caClient(t, cfg.DataDir, nil)
	join := func(nodeID, name string) (int, string, joinResponse) {
		t.Helper()
		_, csr, err := newNodeKey(name)
		if err != nil {
			t.Fatal(err)
		}
		return postJoin(t, hc, n.APIAddr(), storageJoin(n, tok.String(), name, nodeID, csr))
	}
	// the legitimate node joins, and may repeat an interrupted join with its key
	victimID := randomHex(8)
	keyPEM, csr, err := newNodeKey("victim")
	if err != nil {
		t.Fatal(err)
	}
	req := storageJoin(n, tok.String(), "victim", victimID, csr)
	if code, msg, resp := postJoin(t, hc, n.APIAddr(), req); code != 200 || resp.Cert == "" {
		t.Fatalf("first join: %d %s", code, msg)
	}
	if code, msg, _ := postJoin(t, hc, n.APIAddr(), req); code != 200 {
		t.Fatalf("the same node repeating its join: %d %s", code, msg)
	}
	_ = keyPEM
	for _, when := range []string{"used", "expired"} {
		if when == "expired" {
			time.Sleep(2100 * time.Millisecond)
		}
		// the attacker: the token, the victim's id and name, its own key
		code, msg, resp := join(victimID, "victim")
		if code == 200 || resp.Cert != "" {
			t.Fatalf("%s token with the joined node's id and another key: %d, certificate issued: %v", when, code, resp.Cert != "")
		}
		t.Logf("%s token, joined node's id, another key: %d %s", when, code, msg)
		code, msg, resp = join(victimID, "other")
		if code == 200 || resp.Cert != "" {
			t.Fatalf("%s token with the joined node's id under another name: %d, certificate issued: %v", when, code, resp.Cert != "")
		}
	}
}

// storageJoin is the join request, with the token tok, of a storage node
// name with the id nodeID and the certificate request csr to n's cluster.
func storageJoin(n *Node, tok, name, nodeID string, csr []byte) joinRequest {
	return joinRequest{Token: tok, Name: name, NodeID: nodeID, Version: n.cfg.Version, Schema: SchemaVersion, APIAddr: "127.0.0.1:1", Roles: []Role{RoleStorage}, CSR: string(csr)}
}

func postJoin(t *testing.T, hc *http.Client, api string, req joinRequest) (int, string, joinResponse) {
	t.Helper()
	b, _ := json.Marshal(req)
	r, err := hc.Post("https://"+api+"/v1/join", "application/json", strings.NewReader(string(b)))
	if err != nil {
		t.Error(err) // (also called from goroutines)
		return 0, err.Error(), joinResponse{}
	}
	defer r.Body.Close()
	var out struct {
		joinResponse
		Error string `json:"error"`
	}
	json.NewDecoder(r.Body).Decode(&out)
	return r.StatusCode, out.Error, out.joinResponse
}

// TestJoinTokenConcurrentUse: joins racing with one single-use token admit
// one node; the others get no certificate.
func TestJoinTokenConcurrentUse(t *testing.T) {
	skipWithoutTLS(t)
	ctx := context.Background()
	n, cfg := startSoloNode(t, "c1")
	tok, _, err := n.CreateJoinToken(ctx, time.Minute, 1, "test")
	if err != nil {
		t.Fatal(err)
	}
	hc := caClient(t, cfg.DataDir, nil)
	const racers = 6
	type result struct {
		code int
		msg  string
		cert bool
	}
	results := make(chan result, racers)
	start := make(chan struct{})
	for i := 0; i < racers; i++ {
		name := "racer" + string(rune('a'+i))
		_, csr, err := newNodeKey(name)
		if err != nil {
			t.Fatal(err)
		}
		req := storageJoin(n, tok.String(), name, randomHex(8), csr)
		go func() {
			<-start
			code, msg, resp := postJoin(t, hc, n.APIAddr(), req)
			results <- result{code, msg, resp.Cert != ""}
		}()
	}
	close(start)
	admitted := 0
	for i := 0; i < racers; i++ {
		r := <-results
		if r.code == 200 && r.cert {
			admitted++
		} else if r.cert {
			t.Fatalf("refused join (%d %s) carries a certificate", r.code, r.msg)
		}
	}
	if admitted != 1 {
		t.Fatalf("%d of %d racing joins admitted with a single-use token, want 1", admitted, racers)
	}
}
