package dashboard

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestRoutes(t *testing.T) {
	mux := http.NewServeMux()
	Register(mux)
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "{}") })
	srv := httptest.NewServer(mux)
	defer srv.Close()
	cl := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, tc := range []struct {
		path, status, ctype, body string
	}{
		{"/", "302 Found", "", ""},
		{"/ui/", "200 OK", "text/html", `<script src="app.js">`},
		{"/ui/app.js", "200 OK", "text/javascript", `"/v1/events/stream`},
		{"/ui/style.css", "200 OK", "text/css", ".badge"},
		{"/ui/nothing.js", "404 Not Found", "", ""},
		{"/v1/status", "200 OK", "", "{}"}, // the API stays the API's
		{"/other", "404 Not Found", "", ""},
	} {
		resp, err := cl.Get(srv.URL + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.Status != tc.status || !strings.HasPrefix(resp.Header.Get("Content-Type"), tc.ctype) || !strings.Contains(string(b), tc.body) {
			t.Errorf("GET %s: %s %q, body %.80q", tc.path, resp.Status, resp.Header.Get("Content-Type"), b)
		}
		if tc.path == "/" && resp.Header.Get("Location") != "/ui/" {
			t.Errorf("GET /: redirects to %q", resp.Header.Get("Location"))
		}
		if strings.HasPrefix(tc.path, "/ui/") && resp.StatusCode == 200 &&
			!strings.Contains(resp.Header.Get("Content-Security-Policy"), "default-src 'self'") {
			t.Errorf("GET %s: no content security policy", tc.path)
		}
	}
}
