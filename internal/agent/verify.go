package agent

import (
	"net/http"
	"sync/atomic"
	"time"
)

// VerifyProgress is the progress of a volume's running verify (GET
// /v1/volumes/{name}/verify), for progress bars.
type VerifyProgress struct {
	Running bool      `json:"running"`
	Done    int64     `json:"done_bytes"`
	Total   int64     `json:"total_bytes"`
	Started time.Time `json:"started,omitzero"`
}

type verifyRun struct {
	done, total atomic.Int64
	started     time.Time
}

// startVerify records a verify of name; the returned progress function
// feeds it and end forgets it.
func (a *Agent) startVerify(name string) (progress func(done, total int64), end func()) {
	v := &verifyRun{started: time.Now().UTC()}
	a.mu.Lock()
	a.verifies[name] = v
	a.mu.Unlock()
	return func(done, total int64) {
			v.done.Store(done)
			v.total.Store(total)
		}, func() {
			a.mu.Lock()
			if a.verifies[name] == v {
				delete(a.verifies, name)
			}
			a.mu.Unlock()
		}
}

func (a *Agent) verifyProgress(name string) VerifyProgress {
	a.mu.Lock()
	v := a.verifies[name]
	a.mu.Unlock()
	if v == nil {
		return VerifyProgress{}
	}
	return VerifyProgress{Running: true, Done: v.done.Load(), Total: v.total.Load(), Started: v.started}
}

func (a *Agent) handleVerifyProgress(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if _, err := a.mirrorOf(name); err == nil {
		writeJSON(w, http.StatusOK, a.verifyProgress(name))
		return
	}
	v, err := a.volume(r.Context(), name)
	if err != nil {
		writeErr(w, err)
		return
	}
	vi := a.info(v, a.node.Members())
	if vi.Export == nil {
		writeJSON(w, http.StatusOK, VerifyProgress{})
		return
	}
	var p VerifyProgress
	if err := a.callPrimary(r.Context(), vi.Export.Node, http.MethodGet, "/v1/volumes/"+name+"/verify", &p); err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, p)
}
