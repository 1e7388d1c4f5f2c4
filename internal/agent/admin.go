package agent

// Volume administration across replicas: resize, snapshots, revert and
// clone. The agent that receives a request checks it and hands it to the
// volume's primary (which quiesces the writes where the operation needs one
// point of the write stream); the primary, or for a stopped volume the
// receiving agent, asks every replica's agent to act on its local copy
// through the node-to-node endpoint POST /v1/replicas/{name}.
//
//	POST   /v1/volumes/{name}/resize                  {"size": BYTES, "force": false}
//	GET    /v1/volumes/{name}/snapshots
//	POST   /v1/volumes/{name}/snapshots               {"name": "snap1"}
//	DELETE /v1/volumes/{name}/snapshots/{snap}
//	POST   /v1/volumes/{name}/snapshots/{snap}/revert {"force": false} (body optional)
//	POST   /v1/volumes/{name}/clone                   {"name": "new", "snapshot": "snap1"} (snapshot optional)

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/hacs/hacs/internal/cluster"
	"github.com/hacs/hacs/internal/device"
	"github.com/hacs/hacs/internal/mirror"
)

// ResizeRequest resizes a volume (POST /v1/volumes/{name}/resize). Growing
// works while the volume is served; shrinking needs Force and the volume
// stopped (hacs volume standby).
type ResizeRequest struct {
	Size  int64 `json:"size"`
	Force bool  `json:"force,omitempty"`
}

// SnapshotRequest takes a snapshot (POST /v1/volumes/{name}/snapshots).
type SnapshotRequest struct {
	Name string `json:"name"`
}

// RevertRequest reverts a stopped volume to a snapshot. Force discards the
// newer snapshots.
type RevertRequest struct {
	Force bool `json:"force,omitempty"`
}

// CloneRequest creates volume Name from a snapshot of the source (taken
// for the purpose, and deleted after, when Snapshot is empty).
type CloneRequest struct {
	Name     string `json:"name"`
	Snapshot string `json:"snapshot,omitempty"`
}

// SnapshotInfo is a volume snapshot: taken on every replica in Replicas at
// the same point of the write stream. Missing lists the replicas of the
// volume without it (out of sync when it was taken, or placed later); a
// revert makes them resync from the reverted ones.
type SnapshotInfo struct {
	Volume   string    `json:"volume"`
	Name     string    `json:"name"`
	Created  time.Time `json:"created"`
	By       string    `json:"created_by,omitempty"`
	Size     int64     `json:"size"` // the volume's size when taken
	Epoch    uint64    `json:"epoch"`
	Replicas []string  `json:"replicas"`
	Missing  []string  `json:"missing,omitempty"`
}

func snapshotKey(v, snap string) string { return cluster.PrefixVolumes + v + "/snapshots/" + snap }

// replicaOp is what a node does to its local replica of a volume (POST
// /v1/replicas/{name}, between agents).
type replicaOp struct {
	Op       string `json:"op"` // resize, snapshot, delete-snapshot, revert, clone
	Epoch    uint64 `json:"epoch,omitempty"`
	From     int64  `json:"from,omitempty"` // resize: volume sizes
	To       int64  `json:"to,omitempty"`
	Force    bool   `json:"force,omitempty"`
	Snapshot string `json:"snapshot,omitempty"`
	Size     int64  `json:"size,omitempty"`      // the volume's size now
	SnapSize int64  `json:"snap_size,omitempty"` // revert: its size at the snapshot
	New      string `json:"new,omitempty"`       // clone: the new volume
}

// forwardedHeader marks a request one agent passed to another (never
// passed on again).
const forwardedHeader = "X-Hacs-Forwarded"

// actor is who made the request behind ctx: the one function the volume
// handlers record changes with (the X-Hacs-Actor header for now).
func (a *Agent) actor(ctx context.Context) string { return cluster.Actor(ctx, a.self()) }

// forwardActor is who to name when passing r on to another agent: the
// authenticated caller (with authentication on, a client's X-Hacs-Actor
// header is only a claim and is not passed on), else the header.
func forwardActor(r *http.Request) string {
	return cluster.Actor(r.Context(), r.Header.Get(cluster.ActorHeader))
}

// emitBy records a change made through the API with who made it.
func (a *Agent) emitBy(ctx context.Context, kind, volume, msg string) {
	by := a.actor(ctx)
	a.log.Info(msg, "event", kind, "volume", volume, "by", by)
	a.node.Emit(kind, "volume/"+volume, msg+" (by "+by+")", map[string]string{"by": by})
}

// decodeStrict reads a JSON body, refusing unknown fields and trailing
// data; an empty body is allowed when optional.
func decodeStrict(r *http.Request, v any, optional bool) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<16))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) && optional {
			return nil
		}
		return errf(http.StatusBadRequest, "bad request body: %v", err)
	}
	if dec.More() {
		return errf(http.StatusBadRequest, "bad request body: more than one JSON value")
	}
	return nil
}

// callNode sends a request to a node's API (body marshalled as JSON), with
// the actor of ctx's request and the forwarded mark.
func (a *Agent) callNode(ctx context.Context, node, method, path string, actorHdr string, body, out any) error {
	n, ok := a.node.Members().Node(node)
	if !ok {
		return fmt.Errorf("node %s is not a member", node)
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(cctx, method, a.node.Scheme()+"://"+n.APIAddr+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(forwardedHeader, "1")
	if actorHdr != "" {
		req.Header.Set(cluster.ActorHeader, actorHdr)
	}
	resp, err := a.node.HTTPClient().Do(req)
	if err != nil {
		return fmt.Errorf("node %s: %w", node, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		var e map[string]string
		json.NewDecoder(resp.Body).Decode(&e)
		return errf(resp.StatusCode, "%s", e["error"])
	}
	if out == nil {
		io.Copy(io.Discard, resp.Body)
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// forwardToPrimary passes the request on to the node serving the volume.
// It answers false when this node must handle the request itself: it is
// the primary, or nobody serves the volume.
func (a *Agent) forwardToPrimary(w http.ResponseWriter, r *http.Request, v *volumeView, body any) bool {
	if _, err := a.mirrorOf(v.name); err == nil {
		return false
	}
	vi := a.info(v, a.node.Members())
	if vi.Export == nil || vi.Export.Node == a.self() {
		return false
	}
	if r.Header.Get(forwardedHeader) != "" {
		writeErr(w, errf(http.StatusServiceUnavailable, "volume %s: the primary moved while the request was passed on; try again", v.name))
		return true
	}
	var out json.RawMessage
	if err := a.callNode(r.Context(), vi.Export.Node, r.Method, r.URL.Path, forwardActor(r), body, &out); err != nil {
		writeErr(w, err)
		return true
	}
	w.Header().Set("Content-Type", "application/json")
	code := http.StatusOK
	if strings.HasSuffix(r.URL.Path, "/snapshots") || strings.HasSuffix(r.URL.Path, "/clone") {
		code = http.StatusCreated // the POSTs that create
	}
	w.WriteHeader(code)
	w.Write(out)
	return true
}

// replicaCall runs op on node's replica of volume (this node directly).
func (a *Agent) replicaCall(ctx context.Context, node, volume string, op replicaOp) error {
	if node == a.self() {
		return a.replicaOp(volume, op)
	}
	if n, ok := a.node.Members().Node(node); !ok || !n.Online {
		return fmt.Errorf("node %s is offline", node)
	}
	if err := a.callNode(ctx, node, http.MethodPost, "/v1/replicas/"+volume, "", op, nil); err != nil {
		return fmt.Errorf("replica on %s: %w", node, err)
	}
	return nil
}

// volumeAdmin is what the local store offers on a replica.
type volumeAdmin interface {
	Snapshot(name string) error
	DeleteSnapshot(name string) error
	Revert(name string, force bool) error
	Resize(size int64, force bool) error
	Clone(snapshot, newName string) error
}

func (a *Agent) handleReplicaOp(w http.ResponseWriter, r *http.Request) {
	// Between agents only: a client (even an admin's token) goes through
	// the volume API, which checks the volume's state first.
	if p, ok := cluster.RequestPrincipal(r.Context()); ok && !p.Node && p.Name != "local socket" {
		writeErr(w, errf(http.StatusForbidden, "POST /v1/replicas/ is for the cluster's agents only (%s is not one): use the volume API (/v1/volumes/...)", p.Name))
		return
	}
	var op replicaOp
	if err := decodeStrict(r, &op, false); err != nil {
		writeErr(w, err)
		return
	}
	if err := a.replicaOp(r.PathValue("name"), op); err != nil {
		code := http.StatusInternalServerError
		switch {
		case errors.Is(err, fs.ErrNotExist):
			code = http.StatusNotFound
		case errors.Is(err, fs.ErrExist):
			code = http.StatusConflict
		}
		writeErr(w, errf(code, "%v", err))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"done": op.Op})
}

// replicaOp acts on this node's replica of volume.
func (a *Agent) replicaOp(volume string, op replicaOp) error {
	if a.host == nil {
		return errf(http.StatusBadRequest, "node %s holds no replicas (no storage role)", a.self())
	}
	admin := func(d device.Device) (volumeAdmin, error) {
		v, ok := d.(volumeAdmin)
		if !ok {
			return nil, fmt.Errorf("the replica of %s on %s is not a pool volume", volume, a.self())
		}
		return v, nil
	}
	switch op.Op {
	case "resize":
		return a.host.Use(volume, op.Epoch, func(d device.Device) error {
			v, err := admin(d)
			if err != nil {
				return err
			}
			return mirror.ResizeReplica(d, func(n int64) error { return v.Resize(n, true) }, op.From, op.To)
		})
	case "snapshot":
		return a.host.Use(volume, 0, func(d device.Device) error {
			v, err := admin(d)
			if err != nil {
				return err
			}
			err = v.Snapshot(op.Snapshot)
			if errors.Is(err, fs.ErrExist) {
				// A leftover of a snapshot deleted while this node was
				// away (the cluster has no such snapshot): replace it.
				if err = v.DeleteSnapshot(op.Snapshot); err == nil {
					err = v.Snapshot(op.Snapshot)
				}
			}
			return err
		})
	case "delete-snapshot":
		return a.host.Use(volume, 0, func(d device.Device) error {
			v, err := admin(d)
			if err != nil {
				return err
			}
			if err := v.DeleteSnapshot(op.Snapshot); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			return nil
		})
	case "revert":
		return a.host.Use(volume, op.Epoch, func(d device.Device) error {
			v, err := admin(d)
			if err != nil {
				return err
			}
			// The cluster checked for newer snapshots; any left here
			// are leftovers of deleted ones.
			if err := v.Revert(op.Snapshot, true); err != nil {
				return err
			}
			if op.SnapSize > 0 && op.SnapSize < op.Size {
				// Grown since: what lies past the snapshot's end was
				// not part of the volume then (its old metadata).
				if err := d.WriteZeroes(op.SnapSize, op.Size-op.SnapSize, 0); err != nil {
					return err
				}
			}
			return mirror.ResetMeta(d, op.Size)
		})
	case "clone":
		if err := cluster.ValidName("volume", op.New); err != nil {
			return errf(http.StatusBadRequest, "%v", err)
		}
		a.mu.Lock()
		a.creating[op.New] = time.Now()
		a.mu.Unlock()
		run, endCopy := a.clones.startCopy(op.New) // progress: GET /v1/clones/NEW
		err := a.host.Use(volume, 0, func(d device.Device) error {
			v, err := admin(d)
			if err != nil {
				return err
			}
			err = cloneCopy(v, op.Snapshot, op.New, run)
			if errors.Is(err, fs.ErrExist) {
				// A leftover replica of a destroyed volume of that name
				// (the cluster has no such volume).
				if err = a.cfg.Pool.DeleteVolume(op.New); err == nil {
					err = cloneCopy(v, op.Snapshot, op.New, run)
				}
			}
			return err
		})
		endCopy()
		if err != nil {
			return err
		}
		return a.host.Use(op.New, 0, func(d device.Device) error {
			// A snapshot taken before the volume grew has grown with
			// it (its old metadata inside): back to its size.
			if d.Size() != mirror.ReplicaSize(op.Size) {
				v, err := admin(d)
				if err != nil {
					return err
				}
				if err := v.Resize(mirror.ReplicaSize(op.Size), true); err != nil {
					return err
				}
			}
			return mirror.ResetMeta(d, op.Size)
		})
	}
	return errf(http.StatusBadRequest, "unknown replica operation %q", op.Op)
}

// changeSpec changes a volume's spec atomically.
func (a *Agent) changeSpec(ctx context.Context, name string, change func(*Spec) error) (Spec, error) {
	for i := 0; i < 10; i++ {
		v, err := a.volume(ctx, name)
		if err != nil {
			return Spec{}, err
		}
		spec := *v.spec
		if err := change(&spec); err != nil {
			return Spec{}, err
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		tr, err := a.node.Client().Txn(cctx).If(unchanged(specKey(name), v.revs)).Then(clientv3.OpPut(specKey(name), mustJSON(spec))).Commit()
		cancel()
		if err != nil {
			return Spec{}, err
		}
		if tr.Succeeded {
			return spec, nil
		}
	}
	return Spec{}, errf(http.StatusConflict, "volume %s keeps changing; try again", name)
}

// --- resize ---

func (a *Agent) handleResize(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	var req ResizeRequest
	if err := decodeStrict(r, &req, false); err != nil {
		writeErr(w, err)
		return
	}
	if req.Size <= 0 || req.Size%4096 != 0 {
		writeErr(w, errf(http.StatusBadRequest, "volume %s: size %d must be a positive multiple of 4096", name, req.Size))
		return
	}
	v, err := a.volume(r.Context(), name)
	if err != nil {
		writeErr(w, err)
		return
	}
	old := v.spec.Size
	answer := func() { writeJSON(w, http.StatusOK, map[string]any{"volume": name, "size": req.Size, "old_size": old}) }
	if req.Size == old {
		answer()
		return
	}
	stopped := v.spec.Stopped && (v.state == nil || v.state.Primary == "")
	if req.Size < old {
		if !req.Force {
			writeErr(w, errf(http.StatusBadRequest, "volume %s: shrinking from %d to %d bytes discards the data past the new end, in every snapshot too; give force (hacs volume resize --force) with the volume stopped", name, old, req.Size))
			return
		}
		if !stopped {
			writeErr(w, errf(http.StatusConflict, "volume %s: shrinking needs the volume stopped: run hacs volume standby %s first", name, name))
			return
		}
	}
	if a.forwardToPrimary(w, r, v, req) {
		return
	}
	if _, err := a.mirrorOf(name); err == nil {
		err = a.resizePrimary(r.Context(), name, req.Size)
		if err != nil {
			writeErr(w, err)
			return
		}
	} else {
		if !stopped {
			writeErr(w, errf(http.StatusConflict, "volume %s has no primary serving it now (health %s); wait until it is served, or stop it (hacs volume standby %s) to resize it offline", name, a.info(v, a.node.Members()).Health, name))
			return
		}
		if err := a.resizeStopped(r.Context(), v, req.Size); err != nil {
			writeErr(w, err)
			return
		}
	}
	a.emitBy(r.Context(), "volume-resized", name, fmt.Sprintf("resized from %d to %d bytes", old, req.Size))
	answer()
}

// resizeReplicas resizes the replica on every node; on failure the ones
// done are put back.
func (a *Agent) resizeReplicas(ctx context.Context, name string, nodes []string, epoch uint64, from, to int64) error {
	for _, n := range nodes {
		if info, ok := a.node.Members().Node(n); !ok || !info.Online {
			return errf(http.StatusConflict, "volume %s: node %s holding a replica is offline; resize once every replica's node is up (or after the cluster moved the replica)", name, n)
		}
	}
	var done []string
	for _, n := range nodes {
		err := a.replicaCall(ctx, n, name, replicaOp{Op: "resize", Epoch: epoch, From: from, To: to})
		if err != nil {
			for _, d := range done {
				if uerr := a.replicaCall(context.WithoutCancel(ctx), d, name, replicaOp{Op: "resize", Epoch: epoch, From: to, To: from}); uerr != nil {
					a.log.Error("undoing a replica resize", "volume", name, "node", d, "err", uerr)
				}
			}
			return fmt.Errorf("volume %s: resizing the replica on %s failed, nothing changed: %w", name, n, err)
		}
		done = append(done, n)
	}
	return nil
}

// resizePrimary resizes a volume this node serves: the export and the
// mirror stop (flushed), every replica is resized, and they start again
// at the same epoch with the new size. Clients reconnect; `hacs volume
// attach` keeps its size until attached again (it logs the new size).
func (a *Agent) resizePrimary(ctx context.Context, name string, size int64) error {
	// Nothing else acts on the volume meanwhile (its worker waits).
	p, unlock := a.lockVolume(name)
	defer unlock()
	if p == nil {
		return errf(http.StatusServiceUnavailable, "volume %s: this node stopped serving it; try again", name)
	}
	v, err := a.volume(ctx, name)
	if err != nil {
		return err
	}
	if v.state == nil || v.state.Epoch != p.epoch || v.placement == nil {
		return errf(http.StatusServiceUnavailable, "volume %s: its primary is changing; try again", name)
	}
	old, epoch := p.size, p.epoch
	a.stopPrimary(name, p, fmt.Sprintf("resizing from %d to %d bytes", old, size), true)
	rctx, cancel := context.WithTimeout(ctx, resizeTimeout)
	defer cancel()
	err = a.resizeReplicas(rctx, name, v.placement.Replicas, epoch, old, size)
	if err == nil {
		if _, err = a.changeSpec(ctx, name, func(s *Spec) error { s.Size = size; return nil }); err != nil {
			a.resizeReplicas(context.WithoutCancel(ctx), name, v.placement.Replicas, epoch, size, old)
		}
	}
	// Serve again even if the client went away meanwhile.
	sctx := context.WithoutCancel(ctx)
	if v2, verr := a.volume(sctx, name); verr == nil && v2.state != nil && v2.state.Primary == a.self() && v2.state.Epoch == epoch && v2.placement != nil {
		if serr := a.startPrimary(sctx, v2); serr != nil && err == nil {
			err = fmt.Errorf("volume %s: resized, but serving it again failed: %w", name, serr)
		}
	}
	return err
}

func (a *Agent) resizeStopped(ctx context.Context, v *volumeView, size int64) error {
	if v.placement == nil {
		_, err := a.changeSpec(ctx, v.name, func(s *Spec) error { s.Size = size; return nil })
		return err
	}
	var epoch uint64
	if v.state != nil {
		epoch = v.state.Epoch
	}
	if err := a.resizeReplicas(ctx, v.name, v.placement.Replicas, epoch, v.spec.Size, size); err != nil {
		return err
	}
	if _, err := a.changeSpec(ctx, v.name, func(s *Spec) error {
		if !s.Stopped {
			return errf(http.StatusConflict, "volume %s was started during the resize", v.name)
		}
		s.Size = size
		return nil
	}); err != nil {
		a.resizeReplicas(context.WithoutCancel(ctx), v.name, v.placement.Replicas, epoch, size, v.spec.Size)
		return err
	}
	return nil
}

// --- snapshots ---

// snapshots reads a volume's snapshot records, oldest first.
func (a *Agent) snapshots(ctx context.Context, v *volumeView) ([]SnapshotInfo, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := a.node.Client().Get(cctx, cluster.PrefixVolumes+v.name+"/snapshots/", clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	out := []SnapshotInfo{}
	for _, kv := range resp.Kvs {
		var s SnapshotInfo
		if err := json.Unmarshal(kv.Value, &s); err != nil {
			return nil, fmt.Errorf("snapshot record %s is corrupt: %w", kv.Key, err)
		}
		s.Missing = nil
		if v.placement != nil {
			for _, n := range v.placement.Replicas {
				if !slices.Contains(s.Replicas, n) {
					s.Missing = append(s.Missing, n)
				}
			}
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

func (a *Agent) snapshot(ctx context.Context, v *volumeView, snap string) (SnapshotInfo, error) {
	list, err := a.snapshots(ctx, v)
	if err != nil {
		return SnapshotInfo{}, err
	}
	for _, s := range list {
		if s.Name == snap {
			return s, nil
		}
	}
	return SnapshotInfo{}, errf(http.StatusNotFound, "volume %s has no snapshot named %q", v.name, snap)
}

func (a *Agent) handleSnapList(w http.ResponseWriter, r *http.Request) {
	v, err := a.volume(r.Context(), r.PathValue("name"))
	if err != nil {
		writeErr(w, err)
		return
	}
	list, err := a.snapshots(r.Context(), v)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, list)
}

func (a *Agent) handleSnapCreate(w http.ResponseWriter, r *http.Request) {
	var req SnapshotRequest
	if err := decodeStrict(r, &req, false); err != nil {
		writeErr(w, err)
		return
	}
	if err := cluster.ValidName("snapshot", req.Name); err != nil {
		writeErr(w, errf(http.StatusBadRequest, "%v", err))
		return
	}
	v, err := a.volume(r.Context(), r.PathValue("name"))
	if err != nil {
		writeErr(w, err)
		return
	}
	if _, err := a.snapshot(r.Context(), v, req.Name); err == nil {
		writeErr(w, errf(http.StatusConflict, "volume %s has a snapshot named %q already", v.name, req.Name))
		return
	}
	if a.forwardToPrimary(w, r, v, req) {
		return
	}
	s, err := a.takeSnapshot(r.Context(), v, req.Name)
	if err != nil {
		writeErr(w, err)
		return
	}
	msg := fmt.Sprintf("snapshot %s taken on %s", s.Name, strings.Join(s.Replicas, ", "))
	if len(s.Missing) > 0 {
		msg += fmt.Sprintf("; not on %s (out of sync: they get the volume's data again if it is reverted)", strings.Join(s.Missing, ", "))
	}
	a.emitBy(r.Context(), "snapshot-created", v.name, msg)
	writeJSON(w, http.StatusCreated, s)
}

// snapshotTimeout bounds how long a snapshot holds a volume's writes, and
// resizeTimeout how long a resize keeps the volume unserved.
const (
	snapshotTimeout = 10 * time.Second
	resizeTimeout   = 30 * time.Second
)

// takeSnapshot snapshots every in-sync replica at one point of the write
// stream: on the primary, writes are quiesced around it; a stopped volume
// has no writes.
func (a *Agent) takeSnapshot(ctx context.Context, v *volumeView, snap string) (SnapshotInfo, error) {
	s := SnapshotInfo{Volume: v.name, Name: snap, Size: v.spec.Size, By: a.actor(ctx)}
	if v.state != nil {
		s.Epoch = v.state.Epoch
	}
	take := func(nodes []string) error {
		// Writes wait meanwhile: a replica's agent that does not answer
		// soon fails the snapshot rather than the volume's writes.
		tctx, cancel := context.WithTimeout(ctx, snapshotTimeout)
		defer cancel()
		var done []string
		for _, n := range nodes {
			if err := a.replicaCall(tctx, n, v.name, replicaOp{Op: "snapshot", Snapshot: snap}); err != nil {
				for _, d := range done {
					a.replicaCall(context.WithoutCancel(ctx), d, v.name, replicaOp{Op: "delete-snapshot", Snapshot: snap})
				}
				return fmt.Errorf("volume %s: snapshot %s on %s failed, none taken: %w", v.name, snap, n, err)
			}
			done = append(done, n)
		}
		s.Replicas = slices.Sorted(slices.Values(done)) // listed by name, whatever the placement order
		s.Created = time.Now().UTC()
		return nil
	}
	if m, err := a.mirrorOf(v.name); err == nil {
		if err := m.Quiesce(take); err != nil {
			return s, err
		}
	} else {
		if !v.spec.Stopped || v.state == nil || v.state.Primary != "" {
			return s, errf(http.StatusConflict, "volume %s has no primary serving it now (health %s); wait until it is served, or stop it (hacs volume standby %s)", v.name, a.info(v, a.node.Members()).Health, v.name)
		}
		var nodes []string
		for _, n := range v.state.InSync {
			if v.placement != nil && slices.Contains(v.placement.Replicas, n) {
				if info, ok := a.node.Members().Node(n); ok && info.Online {
					nodes = append(nodes, n)
				}
			}
		}
		if len(nodes) == 0 {
			return s, errf(http.StatusConflict, "volume %s: no in-sync replica is online", v.name)
		}
		if err := take(nodes); err != nil {
			return s, err
		}
	}
	if v.placement != nil {
		for _, n := range v.placement.Replicas {
			if !slices.Contains(s.Replicas, n) {
				s.Missing = append(s.Missing, n)
			}
		}
	}
	rec := s
	rec.Missing = nil
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	tr, err := a.node.Client().Txn(cctx).
		If(clientv3.Compare(clientv3.CreateRevision(snapshotKey(v.name, snap)), "=", 0),
			clientv3.Compare(clientv3.CreateRevision(specKey(v.name)), ">", 0)).
		Then(clientv3.OpPut(snapshotKey(v.name, snap), mustJSON(rec))).Commit()
	if err == nil && !tr.Succeeded {
		err = errf(http.StatusConflict, "volume %s changed meanwhile (snapshot %s exists, or the volume was destroyed)", v.name, snap)
	}
	if err != nil {
		for _, n := range s.Replicas {
			a.replicaCall(context.WithoutCancel(ctx), n, v.name, replicaOp{Op: "delete-snapshot", Snapshot: snap})
		}
		return s, err
	}
	return s, nil
}

// snapshotAnywhere takes a snapshot here, or asks the primary serving the
// volume to.
func (a *Agent) snapshotAnywhere(ctx context.Context, v *volumeView, snap, actorHdr string) error {
	if _, err := a.mirrorOf(v.name); err != nil {
		if vi := a.info(v, a.node.Members()); vi.Export != nil && vi.Export.Node != a.self() {
			return a.callNode(ctx, vi.Export.Node, http.MethodPost, "/v1/volumes/"+v.name+"/snapshots", actorHdr, SnapshotRequest{Name: snap}, nil)
		}
	}
	_, err := a.takeSnapshot(ctx, v, snap)
	return err
}

func (a *Agent) handleSnapDelete(w http.ResponseWriter, r *http.Request) {
	v, err := a.volume(r.Context(), r.PathValue("name"))
	if err != nil {
		writeErr(w, err)
		return
	}
	snap := r.PathValue("snap")
	if err := a.deleteSnapshot(r.Context(), v, snap); err != nil {
		writeErr(w, err)
		return
	}
	a.emitBy(r.Context(), "snapshot-deleted", v.name, "snapshot "+snap+" deleted")
	writeJSON(w, http.StatusOK, map[string]string{"volume": v.name, "deleted": snap})
}

// deleteSnapshot deletes a snapshot on every replica holding it that is
// online (one that is not keeps a leftover, replaced if a snapshot of that
// name is taken again) and then its record.
func (a *Agent) deleteSnapshot(ctx context.Context, v *volumeView, snap string) error {
	s, err := a.snapshot(ctx, v, snap)
	if err != nil {
		return err
	}
	var left []string
	var firstErr error
	for _, n := range s.Replicas {
		if info, ok := a.node.Members().Node(n); !ok || !info.Online {
			continue
		}
		if err := a.replicaCall(ctx, n, v.name, replicaOp{Op: "delete-snapshot", Snapshot: snap}); err != nil {
			left = append(left, n)
			if firstErr == nil {
				firstErr = err
			}
		}
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if firstErr != nil {
		s.Replicas, s.Missing = left, nil
		a.node.Client().Put(cctx, snapshotKey(v.name, snap), mustJSON(s))
		return fmt.Errorf("volume %s: deleting snapshot %s: %w (it is left on %s; try again)", v.name, snap, firstErr, strings.Join(left, ", "))
	}
	_, err = a.node.Client().Delete(cctx, snapshotKey(v.name, snap))
	return err
}

func (a *Agent) handleSnapRevert(w http.ResponseWriter, r *http.Request) {
	var req RevertRequest
	if err := decodeStrict(r, &req, true); err != nil {
		writeErr(w, err)
		return
	}
	name, snap := r.PathValue("name"), r.PathValue("snap")
	v, err := a.volume(r.Context(), name)
	if err != nil {
		writeErr(w, err)
		return
	}
	s, err := a.snapshot(r.Context(), v, snap)
	if err != nil {
		writeErr(w, err)
		return
	}
	if !v.spec.Stopped || (v.state != nil && v.state.Primary != "") {
		writeErr(w, errf(http.StatusConflict, "volume %s is being served: stop it first (hacs volume standby %s), or let the CLI do it (hacs volume snapshot revert --restart)", name, name))
		return
	}
	if v.state == nil || v.placement == nil {
		writeErr(w, errf(http.StatusConflict, "volume %s has no replicas placed yet", name))
		return
	}
	list, err := a.snapshots(r.Context(), v)
	if err != nil {
		writeErr(w, err)
		return
	}
	var newer []string
	for _, o := range list {
		if o.Created.After(s.Created) {
			newer = append(newer, o.Name)
		}
	}
	if len(newer) > 0 && !req.Force {
		writeErr(w, errf(http.StatusConflict, "volume %s: reverting to %s discards the newer snapshots %s; give force (hacs volume snapshot revert --force) to go on", name, snap, strings.Join(newer, ", ")))
		return
	}
	var nodes []string
	for _, n := range s.Replicas {
		if info, ok := a.node.Members().Node(n); ok && info.Online && slices.Contains(v.placement.Replicas, n) {
			nodes = append(nodes, n)
		}
	}
	if len(nodes) == 0 {
		writeErr(w, errf(http.StatusConflict, "volume %s: none of the replicas holding snapshot %s (%s) is online and placed", name, snap, strings.Join(s.Replicas, ", ")))
		return
	}
	// First no replica is in sync (a revert cut short leaves the volume
	// unservable, never serving a mix), then the reverted ones are. The
	// client going away does not cut it short.
	ctx := context.WithoutCancel(r.Context())
	if err := a.setInSync(ctx, v, nil); err != nil {
		writeErr(w, err)
		return
	}
	var done []string
	var failed []string
	for _, n := range nodes {
		err := a.replicaCall(ctx, n, name, replicaOp{Op: "revert", Snapshot: snap, Epoch: v.state.Epoch, Size: v.spec.Size, SnapSize: s.Size})
		if err != nil {
			a.log.Warn("revert", "volume", name, "node", n, "err", err)
			failed = append(failed, n+": "+err.Error())
			continue
		}
		done = append(done, n)
	}
	if len(done) == 0 {
		writeErr(w, fmt.Errorf("volume %s: revert to %s failed on every replica (%s); the volume cannot be served until a revert succeeds", name, snap, strings.Join(failed, "; ")))
		return
	}
	v2, err := a.volume(ctx, name)
	if err == nil {
		err = a.setInSync(ctx, v2, done)
	}
	if err != nil {
		writeErr(w, err)
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	for _, o := range newer {
		a.node.Client().Delete(cctx, snapshotKey(name, o))
	}
	cancel()
	msg := fmt.Sprintf("reverted to snapshot %s on %s", snap, strings.Join(done, ", "))
	if len(failed) > 0 {
		msg += "; failed on " + strings.Join(failed, "; ")
	}
	if len(newer) > 0 {
		msg += "; newer snapshots discarded: " + strings.Join(newer, ", ")
	}
	a.emitBy(ctx, "volume-reverted", name, msg)
	writeJSON(w, http.StatusOK, map[string]any{"volume": name, "snapshot": snap, "reverted": done, "failed": failed, "discarded": newer})
}

// setInSync replaces a stopped volume's in-sync set.
func (a *Agent) setInSync(ctx context.Context, v *volumeView, ids []string) error {
	st := *v.state
	st.InSync = slices.Clone(ids)
	if st.InSync == nil {
		st.InSync = []string{}
	}
	sk := cluster.VolumeStateKey(v.name)
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	tr, err := a.node.Client().Txn(cctx).If(unchanged(sk, v.revs)).Then(clientv3.OpPut(sk, mustJSON(st))).Commit()
	if err != nil {
		return err
	}
	if !tr.Succeeded {
		return errf(http.StatusConflict, "volume %s changed meanwhile; try again", v.name)
	}
	v.revs[sk] = tr.Header.Revision
	return nil
}

// --- clone ---

func (a *Agent) handleClone(w http.ResponseWriter, r *http.Request) {
	var req CloneRequest
	if err := decodeStrict(r, &req, false); err != nil {
		writeErr(w, err)
		return
	}
	if err := cluster.ValidName("volume", req.Name); err != nil {
		writeErr(w, errf(http.StatusBadRequest, "%v", err))
		return
	}
	if req.Snapshot != "" {
		if err := cluster.ValidName("snapshot", req.Snapshot); err != nil {
			writeErr(w, errf(http.StatusBadRequest, "%v", err))
			return
		}
	}
	ctx := r.Context()
	src, err := a.volume(ctx, r.PathValue("name"))
	if err != nil {
		writeErr(w, err)
		return
	}
	if _, err := a.volume(ctx, req.Name); err == nil {
		writeErr(w, errf(http.StatusConflict, "volume %s exists already", req.Name))
		return
	}
	snap := req.Snapshot
	if snap == "" {
		// A snapshot for the purpose, at one point of the write stream
		// (taken by the primary), deleted after.
		snap = fmt.Sprintf("clone-%d", time.Now().UnixNano())
		if err := a.snapshotAnywhere(ctx, src, snap, forwardActor(r)); err != nil {
			writeErr(w, fmt.Errorf("volume %s: taking a snapshot to clone: %w", src.name, err))
			return
		}
		defer func() {
			if v, err := a.volume(context.WithoutCancel(ctx), src.name); err == nil {
				a.deleteSnapshot(context.WithoutCancel(ctx), v, snap)
			}
		}()
	}
	s, err := a.snapshot(ctx, src, snap)
	if err != nil {
		writeErr(w, err)
		return
	}
	var nodes []string
	for _, n := range s.Replicas {
		if info, ok := a.node.Members().Node(n); ok && info.Online && info.HasRole(cluster.RoleStorage) {
			nodes = append(nodes, n)
		}
	}
	if len(nodes) == 0 {
		writeErr(w, errf(http.StatusConflict, "volume %s: no replica holding snapshot %s is online", src.name, snap))
		return
	}
	// The snapshot's size, unless the volume shrank since (what lay past
	// the new end is gone from its snapshots too).
	size := min(s.Size, src.spec.Size)
	var done []string
	plan, endPlan := a.clones.startPlan(req.Name, nodes, size) // progress: GET /v1/clones/NEW
	defer endPlan()
	for _, n := range nodes {
		err := a.replicaCall(ctx, n, src.name, replicaOp{Op: "clone", Snapshot: snap, New: req.Name, Size: size})
		plan.finish(n)
		if err != nil {
			a.log.Warn("clone", "volume", src.name, "node", n, "err", err)
			continue
		}
		done = append(done, n)
	}
	if len(done) == 0 {
		writeErr(w, fmt.Errorf("volume %s: cloning snapshot %s failed on every replica", src.name, snap))
		return
	}
	primary := done[0]
	if src.state != nil && slices.Contains(done, src.state.Primary) {
		primary = src.state.Primary
	}
	// a clone holds the same data: the same clients may open it
	spec := Spec{Name: req.Name, Size: size, Replicas: src.spec.Replicas, Spread: src.spec.Spread,
		Policy: src.spec.Policy, Grants: slices.Clone(src.spec.Grants), Created: time.Now().UTC(), By: a.actor(ctx)}
	st := mirror.State{Epoch: 1, Primary: primary, InSync: done}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	tr, err := a.node.Client().Txn(cctx).
		If(clientv3.Compare(clientv3.CreateRevision(specKey(req.Name)), "=", 0),
			clientv3.Compare(clientv3.CreateRevision(cluster.VolumeStateKey(req.Name)), "=", 0)).
		Then(clientv3.OpPut(specKey(req.Name), mustJSON(spec)),
			clientv3.OpPut(placementKey(req.Name), mustJSON(Placement{Replicas: done})),
			clientv3.OpPut(cluster.VolumeStateKey(req.Name), mustJSON(st))).Commit()
	if err == nil && !tr.Succeeded {
		err = errf(http.StatusConflict, "volume %s exists already", req.Name)
	}
	if err != nil {
		writeErr(w, err) // the copies are deleted by each node's cleanup
		return
	}
	what := "snapshot " + snap
	if req.Snapshot == "" {
		what = "its current data"
	}
	a.emitBy(ctx, "volume-cloned", req.Name, fmt.Sprintf("cloned from %s (%s) on %s", src.name, what, strings.Join(done, ", ")))
	writeJSON(w, http.StatusCreated, map[string]any{"created": req.Name, "source": src.name, "snapshot": req.Snapshot, "replicas": done})
}
