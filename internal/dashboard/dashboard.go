// Package dashboard serves the web dashboard every agent offers on its API
// address: static HTML, JavaScript and CSS embedded in the binary (no build
// step, nothing fetched from elsewhere). The page reads the agent's JSON API
// (/v1/status, /v1/nodes, /v1/volumes, /v1/resources, /v1/events and the
// live /v1/events/stream) with the operator's API token, and calls the same
// API for its actions; the files themselves hold no cluster data.
package dashboard

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed ui
var files embed.FS

// Register adds the dashboard's routes to mux: GET / redirects to /ui/,
// GET /ui/ serves the page and its assets.
func Register(mux *http.ServeMux) {
	mux.Handle("GET /ui/", Handler())
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/ui/", http.StatusFound)
	})
}

// Handler serves the files under /ui/.
func Handler() http.Handler {
	sub, err := fs.Sub(files, "ui")
	if err != nil {
		panic(err) // the embedded tree always has ui/
	}
	fsrv := http.StripPrefix("/ui/", http.FileServerFS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		// the page must come from the agent that runs: no stale copy
		// after an upgrade, and no framing by other sites
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
		h.Set("Referrer-Policy", "no-referrer")
		fsrv.ServeHTTP(w, r)
	})
}
