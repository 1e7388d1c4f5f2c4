package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/hacs/hacs/internal/cluster"
	"github.com/hacs/hacs/internal/mirror"
	"github.com/hacs/hacs/internal/nbd"
	"github.com/hacs/hacs/internal/policy"
)

// VolumeRequest creates a volume (POST /v1/volumes).
type VolumeRequest struct {
	Name     string             `json:"name"`
	Size     int64              `json:"size"`
	Replicas int                `json:"replicas"`
	Spread   string             `json:"spread,omitempty"`
	Stopped  bool               `json:"stopped,omitempty"`
	Policy   policy.Constraints `json:"constraints,omitzero"`
	// TLS: "off", "allowed" or "required" (see Spec.TLS).
	TLS nbd.TLSPolicy `json:"tls,omitempty"`
	// Grants, if not nil, are the only export clients that may open the
	// volume (see Spec.Grants).
	Grants []string `json:"grants,omitzero"`
}

// VolumeInfo is a volume as the API shows it.
type VolumeInfo struct {
	Spec      Spec                      `json:"spec"`
	State     *mirror.State             `json:"state,omitempty"`
	Placement []string                  `json:"placement,omitempty"`
	Export    *Export                   `json:"export,omitempty"` // set while a primary serves the current epoch
	Degraded  *Degraded                 `json:"degraded,omitempty"`
	Failures  map[string]policy.Failure `json:"failures,omitempty"`
	// Mirror is the primary's view (replica states, resync progress), when
	// the primary could be asked.
	Mirror *mirror.Status `json:"mirror,omitempty"`
	// Health summarises: ok, degraded, stopped, pending, down.
	Health string `json:"health"`
}

var (
	errf      = cluster.HTTPError
	writeJSON = cluster.WriteJSON
	writeErr  = cluster.WriteError
)

func (a *Agent) registerAPI() {
	mux := a.node.Mux()
	// Every handler that changes something is wrapped with WithActor and
	// records who did it (a.actor).
	act := cluster.WithActor
	mux.HandleFunc("POST /v1/volumes", act(a.handleCreate))
	mux.HandleFunc("GET /v1/volumes", a.handleList)
	mux.HandleFunc("GET /v1/volumes/{name}", a.handleInfo)
	mux.HandleFunc("DELETE /v1/volumes/{name}", act(a.handleDestroy))
	mux.HandleFunc("POST /v1/volumes/{name}/standby", act(a.handleSpec(func(s *Spec, _ []byte) error { s.Stopped = true; return nil })))
	mux.HandleFunc("POST /v1/volumes/{name}/active", act(a.handleSpec(func(s *Spec, _ []byte) error { s.Stopped = false; return nil })))
	mux.HandleFunc("POST /v1/volumes/{name}/prefer", act(a.handleSpec(a.setPrefer)))
	mux.HandleFunc("POST /v1/volumes/{name}/tls", act(a.handleSpec(setTLS)))
	mux.HandleFunc("POST /v1/volumes/{name}/grants", act(a.handleGrants))
	mux.HandleFunc("POST /v1/volumes/{name}/unfail", act(a.handleUnfail))
	mux.HandleFunc("POST /v1/volumes/{name}/verify", act(a.handleVerify))
	mux.HandleFunc("POST /v1/volumes/{name}/resize", act(a.handleResize))
	mux.HandleFunc("GET /v1/volumes/{name}/snapshots", a.handleSnapList)
	mux.HandleFunc("POST /v1/volumes/{name}/snapshots", act(a.handleSnapCreate))
	mux.HandleFunc("DELETE /v1/volumes/{name}/snapshots/{snap}", act(a.handleSnapDelete))
	mux.HandleFunc("POST /v1/volumes/{name}/snapshots/{snap}/revert", act(a.handleSnapRevert))
	mux.HandleFunc("POST /v1/volumes/{name}/clone", act(a.handleClone))
	mux.HandleFunc("GET /v1/clones/{name}", a.handleCloneProgress)
	mux.HandleFunc("POST /v1/replicas/{name}", a.handleReplicaOp)
	mux.HandleFunc("GET /v1/volumes/{name}/verify", a.handleVerifyProgress)
	mux.HandleFunc("GET /v1/volumes/{name}/mirror", a.handleMirror)
	mux.Handle("GET /metrics", a.metricsHandler())
}

func (a *Agent) handleCreate(w http.ResponseWriter, r *http.Request) {
	var req VolumeRequest
	if err := decodeStrict(r, &req, false); err != nil {
		writeErr(w, err)
		return
	}
	if err := a.createVolume(r.Context(), req); err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]string{"created": req.Name})
}

func (a *Agent) createVolume(ctx context.Context, req VolumeRequest) error {
	if err := cluster.ValidName("volume", req.Name); err != nil {
		return errf(http.StatusBadRequest, "%v", err)
	}
	if req.Size <= 0 || req.Size%4096 != 0 {
		return errf(http.StatusBadRequest, "volume %s: size %d must be a positive multiple of 4096", req.Name, req.Size)
	}
	if req.Replicas == 0 {
		req.Replicas = 2
	}
	if req.Replicas < 1 || req.Replicas > mirror.MaxReplicas {
		return errf(http.StatusBadRequest, "volume %s: %d replicas: must be 1 to %d", req.Name, req.Replicas, mirror.MaxReplicas)
	}
	var storage []string
	members := a.node.Members()
	for _, n := range members.Nodes {
		if n.HasRole(cluster.RoleStorage) {
			storage = append(storage, n.Name)
		}
	}
	if len(storage) < req.Replicas {
		return errf(http.StatusConflict, "volume %s needs %d replicas but the cluster has %d storage node(s) (%s)",
			req.Name, req.Replicas, len(storage), strings.Join(storage, ", "))
	}
	for _, p := range req.Policy.Prefer {
		if _, ok := members.Node(p); !ok {
			return errf(http.StatusBadRequest, "volume %s: preferred node %q is not a member of the cluster", req.Name, p)
		}
	}
	var grants []string
	if req.Grants != nil {
		var err error
		if grants, err = a.checkGrants(ctx, req.Name, req.TLS, req.Grants); err != nil {
			return err
		}
		slices.Sort(grants)
		grants = slices.Compact(grants) // not nil: an empty list grants none
	}
	spec := Spec{Name: req.Name, Size: req.Size, Replicas: req.Replicas, Spread: req.Spread, Stopped: req.Stopped,
		Policy: req.Policy, TLS: req.TLS, Grants: grants, Created: time.Now().UTC(), By: a.actor(ctx)}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	tr, err := a.node.Client().Txn(cctx).
		If(clientv3.Compare(clientv3.CreateRevision(specKey(req.Name)), "=", 0),
			clientv3.Compare(clientv3.CreateRevision(cluster.VolumeStateKey(req.Name)), "=", 0)).
		Then(clientv3.OpPut(specKey(req.Name), mustJSON(spec))).Commit()
	if err != nil {
		return err
	}
	if !tr.Succeeded {
		return errf(http.StatusConflict, "volume %s exists already", req.Name)
	}
	msg := fmt.Sprintf("created: %d bytes, %d replicas", req.Size, req.Replicas)
	if grants != nil {
		msg += "; granted to " + GrantsString(grants)
	}
	a.emitBy(ctx, "volume-created", req.Name, msg)
	return nil
}

// views reads the volumes straight from the store (not the cache), so that
// an API answer reflects every write acknowledged before it.
func (a *Agent) views(ctx context.Context) (map[string]*volumeView, error) {
	snap, err := cluster.ReadSnapshot(ctx, a.node.Client(), cluster.PrefixVolumes)
	if err != nil {
		return nil, err
	}
	views, _ := volumesFrom(snap)
	return views, nil
}

func (a *Agent) info(v *volumeView, members cluster.Membership) VolumeInfo {
	vi := VolumeInfo{State: v.state, Degraded: v.degraded}
	if v.spec != nil {
		vi.Spec = *v.spec
	} else {
		vi.Spec.Name = v.name
	}
	if v.placement != nil {
		vi.Placement = v.placement.Replicas
	}
	if len(v.failures) > 0 {
		vi.Failures = v.failures
	}
	if v.export != nil && v.state != nil && v.export.Epoch == v.state.Epoch && v.export.Node == v.state.Primary {
		if n, ok := members.Node(v.export.Node); ok && n.Online {
			vi.Export = v.export
		}
	}
	switch {
	case v.spec != nil && v.spec.Stopped:
		vi.Health = "stopped"
	case v.state == nil:
		vi.Health = "pending"
	case vi.Export == nil:
		vi.Health = "down"
	case v.degraded != nil || len(v.state.InSync) < v.spec.Replicas:
		vi.Health = "degraded"
	default:
		vi.Health = "ok"
	}
	return vi
}

func (a *Agent) handleList(w http.ResponseWriter, r *http.Request) {
	views, err := a.views(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	members := a.node.Members()
	var out []VolumeInfo
	for _, v := range views {
		if v.spec == nil {
			continue
		}
		out = append(out, a.info(v, members))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Spec.Name < out[j].Spec.Name })
	writeJSON(w, http.StatusOK, out)
}

func (a *Agent) volume(ctx context.Context, name string) (*volumeView, error) {
	if cluster.ValidName("volume", name) != nil {
		return nil, errf(http.StatusNotFound, "no volume named %q", name)
	}
	// Only this volume's keys: the answer does not grow with the cluster.
	snap, err := cluster.ReadSnapshot(ctx, a.node.Client(), cluster.PrefixVolumes+name+"/")
	if err != nil {
		return nil, err
	}
	views, _ := volumesFrom(snap)
	v := views[name]
	if v == nil || v.spec == nil {
		return nil, errf(http.StatusNotFound, "no volume named %q", name)
	}
	return v, nil
}

func (a *Agent) handleInfo(w http.ResponseWriter, r *http.Request) {
	v, err := a.volume(r.Context(), r.PathValue("name"))
	if err != nil {
		writeErr(w, err)
		return
	}
	vi := a.info(v, a.node.Members())
	if vi.Export != nil {
		var st mirror.Status
		if err := a.callPrimary(r.Context(), vi.Export.Node, http.MethodGet, "/v1/volumes/"+v.name+"/mirror", &st); err == nil {
			vi.Mirror = &st
		}
	}
	writeJSON(w, http.StatusOK, vi)
}

func (a *Agent) handleMirror(w http.ResponseWriter, r *http.Request) {
	m, err := a.mirrorOf(r.PathValue("name"))
	if err != nil {
		writeErr(w, errf(http.StatusNotFound, "%v", err))
		return
	}
	writeJSON(w, http.StatusOK, m.Status())
}

// callPrimary asks another node's API (or this one's).
func (a *Agent) callPrimary(ctx context.Context, node, method, path string, out any) error {
	n, ok := a.node.Members().Node(node)
	if !ok {
		return fmt.Errorf("node %s is not a member", node)
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(cctx, method, a.node.Scheme()+"://"+n.APIAddr+path, nil)
	if err != nil {
		return err
	}
	resp, err := a.node.HTTPClient().Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		var e map[string]string
		json.NewDecoder(resp.Body).Decode(&e)
		return errf(resp.StatusCode, "%s: %s", node, e["error"])
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func (a *Agent) handleDestroy(w http.ResponseWriter, r *http.Request) {
	a.deleteKeys(w, r, "/", "volume-destroyed", "destroyed")
}

// deleteKeys deletes every key of the named volume under sub.
func (a *Agent) deleteKeys(w http.ResponseWriter, r *http.Request, sub, kind, done string) {
	name := r.PathValue("name")
	if _, err := a.volume(r.Context(), name); err != nil {
		writeErr(w, err)
		return
	}
	cctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	if _, err := a.node.Client().Delete(cctx, cluster.PrefixVolumes+name+sub, clientv3.WithPrefix()); err != nil {
		writeErr(w, err)
		return
	}
	a.emitBy(r.Context(), kind, name, done)
	writeJSON(w, http.StatusOK, map[string]string{"volume": name, "done": done})
}

// handleSpec changes a volume's spec atomically.
func (a *Agent) handleSpec(change func(*Spec, []byte) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		for i := 0; i < 10; i++ {
			v, err := a.volume(r.Context(), name)
			if err != nil {
				writeErr(w, err)
				return
			}
			spec := *v.spec
			if err := change(&spec, body); err != nil {
				writeErr(w, err)
				return
			}
			cctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
			tr, err := a.node.Client().Txn(cctx).If(unchanged(specKey(name), v.revs)).Then(clientv3.OpPut(specKey(name), mustJSON(spec))).Commit()
			cancel()
			if err != nil {
				writeErr(w, err)
				return
			}
			if tr.Succeeded {
				a.emitBy(r.Context(), "volume-changed", name, r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:])
				writeJSON(w, http.StatusOK, spec)
				return
			}
		}
		writeErr(w, errf(http.StatusConflict, "volume %s keeps changing; try again", name))
	}
}

func (a *Agent) setPrefer(s *Spec, body []byte) error {
	var req struct {
		Nodes []string `json:"nodes"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return errf(http.StatusBadRequest, "bad request body: %v", err)
	}
	members := a.node.Members()
	for _, n := range req.Nodes {
		if _, ok := members.Node(n); !ok {
			return errf(http.StatusBadRequest, "node %q is not a member of the cluster", n)
		}
	}
	s.Policy.Prefer = slices.Clone(req.Nodes)
	return nil
}

// setTLS changes a volume's NBD TLS policy ({"tls": "off|allowed|required"});
// its primary applies it to the export for the connections that follow.
func setTLS(s *Spec, body []byte) error {
	var req struct {
		TLS *nbd.TLSPolicy `json:"tls"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return errf(http.StatusBadRequest, "bad request body: %v (want {\"tls\": \"off|allowed|required\"})", err)
	}
	if req.TLS == nil {
		return errf(http.StatusBadRequest, `want {"tls": "off|allowed|required"}`)
	}
	if s.Grants != nil && (*req.TLS == nbd.TLSAllowed || *req.TLS == nbd.TLSOff) {
		return errf(http.StatusConflict, "volume %s admits only the clients it grants (%s), which needs authenticated TLS: tls %s would let anyone in; lift the grants first (`hacs volume grant %s --all`)", s.Name, GrantsString(s.Grants), *req.TLS, s.Name)
	}
	s.TLS = *req.TLS
	return nil
}

func (a *Agent) handleUnfail(w http.ResponseWriter, r *http.Request) {
	a.deleteKeys(w, r, "/failures/", "volume-unfail", "failure counts cleared")
}

func (a *Agent) handleVerify(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	repair := r.URL.Query().Get("repair") == "1"
	if m, err := a.mirrorOf(name); err == nil {
		progress, end := a.startVerify(name)
		defer end()
		rep, err := m.Verify(r.Context(), repair, progress)
		if err != nil {
			writeErr(w, err)
			return
		}
		if rep.Repaired > 0 {
			a.emitBy(r.Context(), "volume-repaired", name, fmt.Sprintf("verify repaired %d bytes", rep.Repaired))
		}
		writeJSON(w, http.StatusOK, rep)
		return
	}
	v, err := a.volume(r.Context(), name)
	if err != nil {
		writeErr(w, err)
		return
	}
	vi := a.info(v, a.node.Members())
	if vi.Export == nil {
		writeErr(w, errf(http.StatusServiceUnavailable, "volume %s has no primary serving it", name))
		return
	}
	path := "/v1/volumes/" + name + "/verify"
	if repair {
		path += "?repair=1"
	}
	var rep mirror.VerifyReport
	if err := a.callPrimary(r.Context(), vi.Export.Node, http.MethodPost, path, &rep); err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, rep)
}
