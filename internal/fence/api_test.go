package fence

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
)

// TestAPIValidation: every bad request gets a 4xx with a clear message, and
// the API keeps serving.
func TestAPIValidation(t *testing.T) {
	r, _ := scriptAgents(t)
	n := startNode(t, "a1", "", "")
	c := NewController(Config{Node: n, Runner: r, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Run(ctx)
	c.Register(n.Mux())
	base := n.Scheme() + "://" + n.APIAddr()
	call := func(method, path, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, bytes.NewReader([]byte(body)))
		resp, err := n.HTTPClient().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	steps := []struct {
		method, path, body string
		code               int
		want               string
	}{
		{"POST", "/v1/fence/devices", `{"name":"d1","agent":"fence_script","params":{"ipaddr":"192.0.2.1"},"host_map":{"a1":"3"}}`, 201, `"agent": "fence_script"`},
		{"POST", "/v1/fence/devices", `{"name":"d1","agent":"fence_script","params":{"ipaddr":"192.0.2.1"}}`, 409, "exists"},
		{"POST", "/v1/fence/devices", `{"name":"d2","agent":"fence_script"}`, 400, "required parameter ipaddr missing"},
		{"POST", "/v1/fence/devices", `{"name":"d2","agent":"fence_script","params":{"ipaddr":"x","power_wait":"soon"}}`, 400, "not a number of seconds"},
		{"POST", "/v1/fence/devices", `{"name":"d2","agent":"/bin/sh"}`, 400, "give the agent's file name"},
		{"POST", "/v1/fence/devices", `{"name":"d2","agent":"fence_script","params":{"ipaddr":"a\nb"}}`, 400, "newline"},
		{"POST", "/v1/fence/devices", `{"name":"d2","agent":"fence_script","params":{"action":"off","ipaddr":"x"}}`, 400, "set by hacs"},
		{"POST", "/v1/fence/devices", `{"name":"D2","agent":"fence_script"}`, 400, "invalid fence device name"},
		{"POST", "/v1/fence/devices", `{"name":"d2","agent":"fence_script","color":"red"}`, 400, "unknown field"},
		{"POST", "/v1/fence/devices", `not json`, 400, "bad request body"},
		{"POST", "/v1/fence/levels/a1", `{"devices":["nosuch"]}`, 400, "no fence device nosuch"},
		{"POST", "/v1/fence/levels/a1", `{"devices":[]}`, 400, "at least one device"},
		{"POST", "/v1/fence/levels/zz", `{"devices":["d1"]}`, 404, "no node zz"},
		{"POST", "/v1/fence/levels/a1", `{"devices":["d1","d1"]}`, 400, "named twice"},
		{"POST", "/v1/fence/levels/a1", `{"devices":["d1"],"index":3}`, 400, "out of range"},
		{"POST", "/v1/fence/levels/a1", `{"devices":["d1"]}`, 200, `"d1"`},
		{"DELETE", "/v1/fence/devices/d1", ``, 409, "used by level 1 of node a1"},
		{"DELETE", "/v1/fence/levels/a1/2", ``, 404, "no fence level 2"},
		{"DELETE", "/v1/fence/levels/a1/x", ``, 400, "level's number"},
		{"POST", "/v1/fence/nodes/a1", `{}`, 400, "confirm it"},
		{"POST", "/v1/fence/nodes/a1", `{"action":"explode","confirm":true}`, 400, "use reboot or off"},
		{"POST", "/v1/fence/nodes/zz", `{"confirm":true}`, 404, "no node zz"},
		{"GET", "/v1/fence/nodes/a1", ``, 404, "never been fenced"},
		{"POST", "/v1/fence/devices/d1/test", ``, 200, `"ok": true`},
		{"POST", "/v1/fence/devices/nosuch/test", ``, 404, "no fence device"},
		{"POST", "/v1/fence/devices/d1/test?action=status&node=a1", ``, 200, `"off": true`},
		{"POST", "/v1/fence/devices/d1/test?action=status", ``, 400, "needs the node"},
		{"POST", "/v1/fence/devices/d1/test?action=off&node=a1", ``, 400, "nothing that powers"},
		{"POST", "/v1/fence/devices/d1/test?action=status&node=zz", ``, 400, "does not cover node zz"},
		{"POST", "/v1/fence/devices", `{"name":"d9","agent":"fence_script","params":{"ipaddr":"x","passwd":"hunter2"}}`, 201, `"passwd": "***"`},
		{"GET", "/v1/fence/devices", ``, 200, `"passwd": "***"`},
		{"DELETE", "/v1/fence/devices/d9", ``, 200, "deleted"},
		{"GET", "/v1/fence/agents/fence_nosuch", ``, 404, "not found"},
		{"GET", "/v1/fence/agents/fence_script", ``, 200, `"ipaddr"`},
		{"DELETE", "/v1/fence/levels/a1/1", ``, 200, `"levels": []`},
		{"DELETE", "/v1/fence/devices/d1", ``, 200, "deleted"},
		{"GET", "/v1/fence", ``, 200, `"self_fence_grace": "1s"`},
	}
	for _, s := range steps {
		code, body := call(s.method, s.path, s.body)
		if code != s.code || !strings.Contains(body, s.want) {
			t.Errorf("%s %s %s: %d %s, want %d containing %q", s.method, s.path, s.body, code, body, s.code, s.want)
		}
		if code >= 400 {
			var e struct {
				Error string `json:"error"`
			}
			if json.Unmarshal([]byte(body), &e) != nil || e.Error == "" {
				t.Errorf("%s %s: error answer is not {\"error\":...}: %s", s.method, s.path, body)
			}
		}
	}
}
