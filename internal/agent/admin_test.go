package agent

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/hacs/hacs/internal/cluster"
)

// TestDecodeStrict: request bodies with unknown fields, wrong types,
// trailing data or nothing (where a body is needed) are 400s.
func TestDecodeStrict(t *testing.T) {
	for _, tc := range []struct {
		body     string
		optional bool
		ok       bool
	}{
		{`{"size": 4096}`, false, true},
		{`{"size": 4096, "force": true}`, false, true},
		{`{"size": 4096, "sise": 1}`, false, false},
		{`{"size": "1G"}`, false, false},
		{`{"size": 4096} {"size": 1}`, false, false},
		{`{"size": 4096`, false, false},
		{``, false, false},
		{``, true, true},
		{`[]`, true, false},
	} {
		r := httptest.NewRequest(http.MethodPost, "/v1/volumes/v/resize", strings.NewReader(tc.body))
		var req ResizeRequest
		err := decodeStrict(r, &req, tc.optional)
		if (err == nil) != tc.ok {
			t.Errorf("%q (optional %v): %v", tc.body, tc.optional, err)
		}
		if err != nil {
			w := httptest.NewRecorder()
			writeErr(w, err)
			if w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), `"error"`) {
				t.Errorf("%q: answered %d %s", tc.body, w.Code, w.Body)
			}
		}
	}
}

// TestActorIsTheRequestsActor: the one function volume handlers record
// changes with names the X-Hacs-Actor header (with where it came from).
func TestActorIsTheRequestsActor(t *testing.T) {
	var got string
	h := cluster.WithActor(func(w http.ResponseWriter, r *http.Request) {
		got = cluster.Actor(r.Context(), "node")
	})
	r := httptest.NewRequest(http.MethodPost, "/v1/volumes", nil)
	r.Header.Set(cluster.ActorHeader, "alice@admin")
	h(httptest.NewRecorder(), r)
	if !strings.HasPrefix(got, "alice@admin (from ") {
		t.Fatalf("actor %q", got)
	}
}
