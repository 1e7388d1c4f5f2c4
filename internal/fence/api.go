package fence

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/hacs/hacs/internal/cluster"
)

// Status is GET /v1/fence: the configuration and where fencing of each node
// stands.
type Status struct {
	Devices  []Device  `json:"devices"`
	Levels   []Levels  `json:"levels"`
	Records  []Record  `json:"records"`
	Requests []Request `json:"requests,omitempty"`
	// LeaseTTL, SafetyMargin and Grace define fencing by lease: confirmed
	// at the lease's end + Grace.
	LeaseTTL     cluster.Duration `json:"lease_ttl"`
	SafetyMargin cluster.Duration `json:"safety_margin"`
	Grace        cluster.Duration `json:"self_fence_grace"`
}

// FenceRequest is POST /v1/fence/nodes/{node}.
type FenceRequest struct {
	Action string `json:"action,omitempty"` // reboot (default) or off
	Reason string `json:"reason,omitempty"`
	// Confirm must be true: fencing powers a machine off.
	Confirm bool `json:"confirm"`
}

// LevelRequest is POST /v1/fence/levels/{node}.
type LevelRequest struct {
	Devices []string `json:"devices"`
	// Index inserts the level at this position (1-based; 0 appends).
	Index int `json:"index,omitempty"`
}

// TestResult is POST /v1/fence/devices/{name}/test.
type TestResult struct {
	Node   string `json:"node"` // the agent that ran it
	Result Result `json:"result"`
	OK     bool   `json:"ok"`
	Error  string `json:"error,omitempty"`
}

var (
	errf      = cluster.HTTPError
	writeJSON = cluster.WriteJSON
	writeErr  = cluster.WriteError
)

// Register adds the fencing API to mux.
func (c *Controller) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/fence", c.handleStatus)
	mux.HandleFunc("GET /v1/fence/devices", c.handleDevices)
	mux.HandleFunc("POST /v1/fence/devices", cluster.WithActor(c.handleDeviceAdd))
	mux.HandleFunc("DELETE /v1/fence/devices/{name}", cluster.WithActor(c.handleDeviceDelete))
	mux.HandleFunc("POST /v1/fence/devices/{name}/test", c.handleDeviceTest)
	mux.HandleFunc("GET /v1/fence/levels", c.handleLevels)
	mux.HandleFunc("GET /v1/fence/levels/{node}", c.handleLevels)
	mux.HandleFunc("POST /v1/fence/levels/{node}", cluster.WithActor(c.handleLevelAdd))
	mux.HandleFunc("DELETE /v1/fence/levels/{node}/{level}", cluster.WithActor(c.handleLevelDelete))
	mux.HandleFunc("GET /v1/fence/nodes/{node}", c.handleRecord)
	mux.HandleFunc("POST /v1/fence/nodes/{node}", cluster.WithActor(c.handleFence))
	mux.HandleFunc("GET /v1/fence/agents", c.handleAgents)
	mux.HandleFunc("GET /v1/fence/agents/{agent}", c.handleAgentMetadata)
}

// read returns the fencing view read from the store (linearizable).
func (c *Controller) read(ctx context.Context) (View, error) {
	snap, err := cluster.ReadSnapshot(ctx, c.node.Client(), Prefix)
	if err != nil {
		return View{}, fmt.Errorf("reading the fencing configuration: %w", err)
	}
	v, _ := Decode(snap)
	return v, nil
}

// secretParam reports parameters whose values the API never shows
// (passwords, keys, tokens).
func secretParam(k string) bool {
	for _, w := range []string{"passw", "secret", "token", "key", "credential"} {
		if strings.Contains(k, w) {
			return true
		}
	}
	return false
}

// Masked returns d with its secret parameters' values replaced by "***".
func (d Device) Masked() Device {
	if len(d.Params) == 0 {
		return d
	}
	p := make(map[string]string, len(d.Params))
	for k, v := range d.Params {
		if secretParam(k) {
			v = "***"
		}
		p[k] = v
	}
	d.Params = p
	return d
}

// StatusOf builds the status from a view.
func (c *Controller) StatusOf(v View) Status {
	cfg := c.node.Config()
	st := Status{Devices: []Device{}, Levels: []Levels{}, Records: []Record{}, LeaseTTL: cluster.Duration(cfg.LeaseTTL),
		SafetyMargin: cluster.Duration(cfg.SafetyMargin), Grace: cluster.Duration(c.cfg.Grace)}
	for _, k := range sortedKeys(v.Devices) {
		st.Devices = append(st.Devices, v.Devices[k].Masked())
	}
	for _, k := range sortedKeys(v.Levels) {
		l := v.Levels[k]
		l.Node = k
		st.Levels = append(st.Levels, l)
	}
	for _, k := range sortedKeys(v.Records) {
		st.Records = append(st.Records, v.Records[k])
	}
	for _, k := range sortedKeys(v.Requests) {
		st.Requests = append(st.Requests, v.Requests[k])
	}
	return st
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func (c *Controller) handleStatus(w http.ResponseWriter, r *http.Request) {
	v, err := c.read(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, c.StatusOf(v))
}

func (c *Controller) handleDevices(w http.ResponseWriter, r *http.Request) {
	v, err := c.read(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, c.StatusOf(v).Devices)
}

func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errf(http.StatusBadRequest, "bad request body: %v", err)
	}
	return nil
}

// CheckDevice validates d, against the agent's metadata on this node.
func (c *Controller) CheckDevice(ctx context.Context, d Device) error {
	if err := d.Validate(); err != nil {
		return errf(http.StatusBadRequest, "%v", err)
	}
	m, err := c.cfg.Runner.Metadata(ctx, d.Agent)
	if err != nil {
		if errors.Is(err, ErrNoAgent) {
			return errf(http.StatusBadRequest, "%v", err)
		}
		return errf(http.StatusBadRequest, "fence device %s: cannot read the agent's metadata: %v", d.Name, err)
	}
	if err := m.Check(d); err != nil {
		return errf(http.StatusBadRequest, "%v", err)
	}
	return nil
}

func (c *Controller) handleDeviceAdd(w http.ResponseWriter, r *http.Request) {
	var d Device
	if err := decodeBody(r, &d); err != nil {
		writeErr(w, err)
		return
	}
	if err := c.CheckDevice(r.Context(), d); err != nil {
		writeErr(w, err)
		return
	}
	d.Created = time.Now().UTC()
	d.By = cluster.Actor(r.Context(), "")
	b, _ := json.Marshal(d)
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	key := DeviceKey(d.Name)
	tr, err := c.node.Client().Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).Then(clientv3.OpPut(key, string(b))).Commit()
	if err != nil {
		writeErr(w, fmt.Errorf("adding fence device %s: %w", d.Name, err))
		return
	}
	if !tr.Succeeded {
		writeErr(w, errf(http.StatusConflict, "fence device %s exists (delete it first to change it)", d.Name))
		return
	}
	c.node.Emit("fence-device-added", "", fmt.Sprintf("fence device %s (%s) added by %s", d.Name, d.Agent, d.By), map[string]string{"device": d.Name, "by": d.By})
	writeJSON(w, http.StatusCreated, d.Masked())
}

func (c *Controller) handleDeviceDelete(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	v, err := c.read(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	if _, ok := v.Devices[name]; !ok {
		writeErr(w, errf(http.StatusNotFound, "no fence device %s", name))
		return
	}
	for _, node := range sortedKeys(v.Levels) {
		for i, lvl := range v.Levels[node].Levels {
			if slices.Contains(lvl, name) {
				writeErr(w, errf(http.StatusConflict, "fence device %s is used by level %d of node %s: delete that level first (hacs fence level delete %s %d)", name, i+1, node, node, i+1))
				return
			}
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	key := DeviceKey(name)
	// unchanged levels: a level added meanwhile may name the device
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", v.Revs[key])}
	for node := range v.Levels {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(LevelsKey(node)), "=", v.Revs[LevelsKey(node)]))
	}
	tr, err := c.node.Client().Txn(ctx).If(cmps...).Then(clientv3.OpDelete(key)).Commit()
	if err != nil {
		writeErr(w, err)
		return
	}
	if !tr.Succeeded {
		writeErr(w, errf(http.StatusConflict, "the fencing configuration changed meanwhile; try again"))
		return
	}
	by := cluster.Actor(r.Context(), "")
	c.node.Emit("fence-device-deleted", "", fmt.Sprintf("fence device %s deleted by %s", name, by), map[string]string{"device": name, "by": by})
	writeJSON(w, http.StatusOK, map[string]string{"deleted": name})
}

func (c *Controller) handleDeviceTest(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	action := r.URL.Query().Get("action")
	node := r.URL.Query().Get("node")
	switch action {
	case "", ActionMonitor:
		action = ActionMonitor
		if node != "" {
			writeErr(w, errf(http.StatusBadRequest, "monitor checks the device, not a node: ask action=status for node %s", node))
			return
		}
	case ActionList:
	case ActionStatus:
		if node == "" {
			writeErr(w, errf(http.StatusBadRequest, "status needs the node whose plug to ask (node=NAME)"))
			return
		}
	default:
		writeErr(w, errf(http.StatusBadRequest, "test action %q: use monitor, list or status (nothing that powers a machine off or on)", action))
		return
	}
	v, err := c.read(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	d, ok := v.Devices[name]
	if !ok {
		writeErr(w, errf(http.StatusNotFound, "no fence device %s", name))
		return
	}
	if node != "" && !d.Covers(node) {
		writeErr(w, errf(http.StatusBadRequest, "fence device %s does not cover node %s", name, node))
		return
	}
	res := c.cfg.Runner.Run(r.Context(), d, action, node)
	writeJSON(w, http.StatusOK, TestResult{Node: c.node.Name(), Result: res, OK: res.OK(), Error: res.Error()})
}

func (c *Controller) handleLevels(w http.ResponseWriter, r *http.Request) {
	v, err := c.read(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	if node := r.PathValue("node"); node != "" {
		l := v.Levels[node]
		l.Node = node
		if l.Levels == nil {
			l.Levels = [][]string{}
		}
		writeJSON(w, http.StatusOK, l)
		return
	}
	writeJSON(w, http.StatusOK, c.StatusOf(v).Levels)
}

// putLevels writes node's levels if they are unchanged since v.
func (c *Controller) putLevels(ctx context.Context, v View, node string, levels [][]string) error {
	key := LevelsKey(node)
	op := clientv3.OpDelete(key)
	if len(levels) > 0 {
		b, _ := json.Marshal(Levels{Node: node, Levels: levels})
		op = clientv3.OpPut(key, string(b))
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	tr, err := c.node.Client().Txn(cctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", v.Revs[key])).Then(op).Commit()
	if err != nil {
		return err
	}
	if !tr.Succeeded {
		return errf(http.StatusConflict, "the levels of node %s changed meanwhile; try again", node)
	}
	return nil
}

func (c *Controller) handleLevelAdd(w http.ResponseWriter, r *http.Request) {
	node := r.PathValue("node")
	var req LevelRequest
	if err := decodeBody(r, &req); err != nil {
		writeErr(w, err)
		return
	}
	if err := cluster.ValidName("node", node); err != nil {
		writeErr(w, errf(http.StatusBadRequest, "%v", err))
		return
	}
	if _, ok := c.node.Members().Node(node); !ok {
		writeErr(w, errf(http.StatusNotFound, "no node %s in the cluster", node))
		return
	}
	v, err := c.read(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	if len(req.Devices) == 0 {
		writeErr(w, errf(http.StatusBadRequest, "a level needs at least one device"))
		return
	}
	for i, d := range req.Devices {
		dev, ok := v.Devices[d]
		switch {
		case !ok:
			writeErr(w, errf(http.StatusBadRequest, "no fence device %s (add it first: hacs fence device add)", d))
			return
		case !dev.Covers(node):
			writeErr(w, errf(http.StatusBadRequest, "fence device %s does not cover node %s (its nodes or host map)", d, node))
			return
		case slices.Contains(req.Devices[:i], d):
			writeErr(w, errf(http.StatusBadRequest, "device %s is named twice in the level", d))
			return
		}
	}
	levels := slices.Clone(v.Levels[node].Levels)
	if len(levels) >= 10 {
		writeErr(w, errf(http.StatusBadRequest, "node %s has %d levels already (at most 10)", node, len(levels)))
		return
	}
	switch {
	case req.Index == 0:
		levels = append(levels, req.Devices)
	case req.Index < 1 || req.Index > len(levels)+1:
		writeErr(w, errf(http.StatusBadRequest, "index %d out of range: node %s has %d level(s)", req.Index, node, len(levels)))
		return
	default:
		levels = slices.Insert(levels, req.Index-1, req.Devices)
	}
	if err := c.putLevels(r.Context(), v, node, levels); err != nil {
		writeErr(w, err)
		return
	}
	by := cluster.Actor(r.Context(), "")
	c.node.Emit("fence-level-added", "", fmt.Sprintf("fence levels of node %s set to %v by %s", node, levels, by), map[string]string{"subject": node, "by": by})
	writeJSON(w, http.StatusOK, Levels{Node: node, Levels: levels})
}

func (c *Controller) handleLevelDelete(w http.ResponseWriter, r *http.Request) {
	node := r.PathValue("node")
	idx, err := strconv.Atoi(r.PathValue("level"))
	if err != nil {
		writeErr(w, errf(http.StatusBadRequest, "level %q: give the level's number (1 is tried first)", r.PathValue("level")))
		return
	}
	v, err := c.read(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	levels := slices.Clone(v.Levels[node].Levels)
	if idx < 1 || idx > len(levels) {
		writeErr(w, errf(http.StatusNotFound, "node %s has no fence level %d (it has %d)", node, idx, len(levels)))
		return
	}
	levels = slices.Delete(levels, idx-1, idx)
	if err := c.putLevels(r.Context(), v, node, levels); err != nil {
		writeErr(w, err)
		return
	}
	by := cluster.Actor(r.Context(), "")
	c.node.Emit("fence-level-deleted", "", fmt.Sprintf("fence level %d of node %s deleted by %s", idx, node, by), map[string]string{"subject": node, "by": by})
	writeJSON(w, http.StatusOK, Levels{Node: node, Levels: levels})
}

func (c *Controller) handleRecord(w http.ResponseWriter, r *http.Request) {
	node := r.PathValue("node")
	v, err := c.read(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	rec, ok := v.Records[node]
	if !ok {
		writeErr(w, errf(http.StatusNotFound, "node %s has never been fenced", node))
		return
	}
	writeJSON(w, http.StatusOK, rec)
}

func (c *Controller) handleFence(w http.ResponseWriter, r *http.Request) {
	node := r.PathValue("node")
	var req FenceRequest
	if err := decodeBody(r, &req); err != nil {
		writeErr(w, err)
		return
	}
	if req.Action == "" {
		req.Action = ActionReboot
	}
	if req.Action != ActionReboot && req.Action != ActionOff {
		writeErr(w, errf(http.StatusBadRequest, "fence action %q: use reboot or off", req.Action))
		return
	}
	if !req.Confirm {
		writeErr(w, errf(http.StatusBadRequest, "fencing node %s powers it off: confirm it (hacs fence %s --yes; API: \"confirm\": true)", node, node))
		return
	}
	if strings.ContainsAny(req.Reason, "\n\r") || len(req.Reason) > 200 {
		writeErr(w, errf(http.StatusBadRequest, "the reason must be one line of at most 200 characters"))
		return
	}
	ni, ok := c.node.Members().Node(node)
	if !ok {
		writeErr(w, errf(http.StatusNotFound, "no node %s in the cluster", node))
		return
	}
	q := Request{Node: node, Action: req.Action, Reason: req.Reason, By: cluster.Actor(r.Context(), ""), Time: time.Now().UTC()}
	if ni.Online && ni.Alive != nil {
		q.Lease = ni.Alive.LeaseID
	}
	b, _ := json.Marshal(q)
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	key := RequestKey(node)
	tr, err := c.node.Client().Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).Then(clientv3.OpPut(key, string(b))).Commit()
	if err != nil {
		writeErr(w, err)
		return
	}
	if !tr.Succeeded {
		writeErr(w, errf(http.StatusConflict, "a fencing request for node %s is already pending", node))
		return
	}
	writeJSON(w, http.StatusAccepted, q)
}

func (c *Controller) handleAgents(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"node": c.node.Name(), "agents": c.cfg.Runner.Agents()})
}

func (c *Controller) handleAgentMetadata(w http.ResponseWriter, r *http.Request) {
	m, err := c.cfg.Runner.Metadata(r.Context(), r.PathValue("agent"))
	if err != nil {
		code := http.StatusBadGateway
		if errors.Is(err, ErrNoAgent) || !agentRE.MatchString(r.PathValue("agent")) {
			code = http.StatusNotFound
		}
		writeErr(w, errf(code, "%v", err))
		return
	}
	writeJSON(w, http.StatusOK, m)
}
