package cluster

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestNoQuorumAnswersAtOnce: three in-process voters; two stop. The third
// answers API requests that need the cluster store with 503 and
// ErrNoQuorumMsg within storeCheckTimeout (a token's check), then at once
// (it knows it has no quorum), whoever asks: a token, a node certificate,
// the local socket; what it answers from its own state (status, its
// membership view marked stale) keeps working. Once the voters are back,
// the same requests work again.
func TestNoQuorumAnswersAtOnce(t *testing.T) {
	c1 := testConfig(t, "q1")
	c1.JoinTokenUses = 2
	n1 := startNode(t, c1)
	jt, err := os.ReadFile(filepath.Join(c1.DataDir, "join-token"))
	if err != nil {
		t.Fatal(err)
	}
	var others []*Node
	var cfgs []Config
	for _, name := range []string{"q2", "q3"} {
		c := testConfig(t, name)
		c.Join, c.Token = n1.APIAddr(), string(jt)
		others = append(others, startNode(t, c))
		cfgs = append(cfgs, c)
	}
	api := n1.Scheme() + "://" + n1.APIAddr()
	tok, hc := "", n1.HTTPClient()
	if !c1.Insecure {
		tok, hc = adminToken(t, c1.DataDir), caClient(t, c1.DataDir, nil)
	}
	sock := filepath.Join(c1.DataDir, APISocket)
	uc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	// who asks: GET /v1/events reads the cluster store
	askers := []struct {
		name string
		call func() (int, string)
	}{
		{"token", func() (int, string) { return apiCall(t, hc, "GET", api+"/v1/events", tok, "") }},
		{"node certificate", func() (int, string) { return apiCall(t, n1.HTTPClient(), "GET", api+"/v1/events", "", "") }},
		{"local socket", func() (int, string) { return apiCall(t, uc, "GET", "http://agent/v1/events", "", "") }},
	}
	for _, a := range askers {
		if code, msg := a.call(); code != http.StatusOK {
			t.Fatalf("%s with a quorum: %d %s", a.name, code, msg)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, o := range others {
		o.Stop(ctx)
	}
	stopped := time.Now()
	// from the loss on: no request waits longer than the token check's
	// bound (and a margin for this loaded machine) ...
	const bound = storeCheckTimeout + 1500*time.Millisecond
	var first time.Duration
	for i := 0; ; i++ {
		if time.Since(stopped) > 20*time.Second {
			t.Fatalf("no 503 %q within 20 s of the loss of the quorum", ErrNoQuorumMsg)
		}
		sent := time.Now()
		code, msg := askers[0].call()
		took := time.Since(sent)
		t.Logf("request %d at +%v: %d in %v: %s", i, sent.Sub(stopped).Round(time.Millisecond), code, took.Round(time.Millisecond), msg)
		if took > bound {
			t.Fatalf("a request waited %v (bound %v): %d %s", took, bound, code, msg)
		}
		if code == http.StatusServiceUnavailable && strings.Contains(msg, ErrNoQuorumMsg) {
			first = time.Since(stopped)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("first 503 (no quorum) %v after the loss", first.Round(time.Millisecond))
	// ... and once it knows, every asker is answered at once
	waitCond(t, 10*time.Second, func() bool { return n1.quorumLost() })
	for _, a := range askers {
		sent := time.Now()
		code, msg := a.call()
		took := time.Since(sent)
		t.Logf("%s without quorum: %d in %v: %s", a.name, code, took.Round(time.Millisecond), msg)
		if code != http.StatusServiceUnavailable || !strings.Contains(msg, ErrNoQuorumMsg) || !strings.Contains(msg, "ask another node") {
			t.Fatalf("%s without quorum: %d %s", a.name, code, msg)
		}
		if took > time.Second {
			t.Fatalf("%s without quorum: answered after %v", a.name, took)
		}
	}
	// its own state still answers
	for _, p := range []string{"/v1/status", "/v1/nodes"} {
		if code, msg := apiCall(t, hc, "GET", api+p, tok, ""); code != http.StatusOK {
			t.Fatalf("GET %s without quorum: %d %s", p, code, msg)
		}
	}
	// not a way around authentication
	if !c1.Insecure {
		if code, msg := apiCall(t, hc, "GET", api+"/v1/events", "", ""); code != http.StatusUnauthorized {
			t.Fatalf("no token without quorum: %d %s", code, msg)
		}
	}

	// the voters return: it answers again
	for i, c := range cfgs {
		c.Join, c.Token = "", ""
		others[i] = startNode(t, c)
	}
	waitCond(t, 30*time.Second, func() bool { return n1.IsServing() })
	for _, a := range askers {
		waitCond(t, 30*time.Second, func() bool { code, _ := a.call(); return code == http.StatusOK })
	}
}

// TestQuorumWriterKeepsADoneChange: a request that changed the cluster
// store and answered 2xx keeps that answer although the node lost its
// quorum meanwhile (its context canceled): a 503 would say "not done, ask
// another node", and the CLI would send the change again to the next
// agent. Failed requests, and reads, get the 503 of a node without quorum.
func TestQuorumWriterKeepsADoneChange(t *testing.T) {
	n := &Node{ident: &identity{Name: "q1"}}
	for _, c := range []struct {
		method string
		code   int
		want   int
	}{
		{http.MethodPost, http.StatusCreated, http.StatusCreated},
		{http.MethodDelete, http.StatusOK, http.StatusOK},
		{http.MethodPost, http.StatusInternalServerError, http.StatusServiceUnavailable},
		{http.MethodPut, http.StatusConflict, http.StatusServiceUnavailable},
		{http.MethodGet, http.StatusOK, http.StatusServiceUnavailable},
	} {
		ctx, cancel := context.WithCancelCause(context.Background())
		cancel(errQuorumLost)
		rec := httptest.NewRecorder()
		w := &quorumWriter{ResponseWriter: rec, n: n, ctx: ctx, method: c.method}
		w.WriteHeader(c.code)
		w.Write([]byte(`{"x":1}`))
		if rec.Code != c.want {
			t.Errorf("%s answered %d after the quorum was lost: sent %d, want %d (%s)", c.method, c.code, rec.Code, c.want, rec.Body)
		}
		if c.want == http.StatusServiceUnavailable && !strings.Contains(rec.Body.String(), ErrNoQuorumMsg) {
			t.Errorf("%s %d: body %s", c.method, c.code, rec.Body)
		}
	}
}
