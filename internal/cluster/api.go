package cluster

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The small HTTP API of this layer. The management API of later layers
// registers its own handlers on Node.Mux().
//
//	POST   /v1/join                     join handshake (token in the body)
//	GET    /v1/status                   this node: phase, serving, DC, lease
//	GET    /v1/nodes                    the membership view
//	POST   /v1/nodes/{name}/standby     {"standby": true|false}
//	POST   /v1/nodes/{name}/roles       {"roles": [...]} or {"add": [...], "remove": [...]}
//	DELETE /v1/nodes/{name}[?force=1]   remove a node from the cluster
//	GET    /v1/events[?limit=N&node=&kind=&resource=&since=RFC3339]
//	GET    /v1/events/stream[?limit=N&node=&kind=&resource=]  the same, live (Server-Sent Events)
//	GET    /v1/token                    the join token (local API socket only)
//
// Administrative changes are recorded in the event log with who made them
// (the ActorHeader the CLI sends, and the client's address).

// APISocket is the name of the Unix socket the API is also served on, in
// the data directory (for local tools, and for tests across network
// namespaces).
const APISocket = "api.sock"

// listenAPI binds the API address and the Unix socket.
func (n *Node) listenAPI() error {
	ln, err := net.Listen("tcp", n.apiListen)
	if err != nil {
		return listenError("--api", n.apiListen, err)
	}
	addr, err := advertiseAddr(n.apiListen, n.cfg.Advertise)
	if err != nil {
		ln.Close()
		return err
	}
	if _, port, _ := net.SplitHostPort(addr); port == "0" {
		host, _, _ := net.SplitHostPort(addr)
		_, p, _ := net.SplitHostPort(ln.Addr().String())
		addr = net.JoinHostPort(host, p)
	}
	sock := filepath.Join(n.cfg.DataDir, APISocket)
	os.Remove(sock) // a stale socket of a previous run (we hold the lock)
	sl, err := net.Listen("unix", sock)
	if err != nil {
		ln.Close()
		return fmt.Errorf("API socket %s: %w", sock, err)
	}
	os.Chmod(sock, 0o600)
	n.apiLn, n.sockLn, n.apiAddr = ln, sl, addr
	return nil
}

func (n *Node) startAPI() error {
	// connections that have not authenticated yet are bounded in number
	// and time (APILimits); the authenticated ones are not
	g := newConnGate(n, "API", n.cfg.APILimits)
	n.apiGate = g
	n.httpSrv = &http.Server{
		Handler: n.authHandler(n.mux),
		// also the TLS handshake's deadline (net/http); the gate's
		// deadline covers both, from accept
		ReadHeaderTimeout: g.timeout,
		IdleTimeout:       apiIdleTimeout,
		MaxHeaderBytes:    apiMaxHeaderBytes,
		ConnContext:       g.connContext,
		ConnState:         g.connState,
		ErrorLog:          nil,
	}
	n.apiLn = g.listener(n.apiLn)
	if n.creds != nil {
		// HTTPS only on TCP; the 0600 Unix socket stays plain HTTP
		n.apiLn = tls.NewListener(sniffListener{Listener: n.apiLn, log: n.log, what: "API"}, n.creds.ServerConfig(false))
		n.httpSrv.ErrorLog = tlsErrorLog(n.log)
		n.httpSrv.ConnState = func(c net.Conn, st http.ConnState) {
			n.apiConnState(c, st)
			g.connState(c, st)
		}
	}
	go n.httpSrv.Serve(n.apiLn)
	go n.httpSrv.Serve(n.sockLn)
	return nil
}

func (n *Node) routes() {
	n.mux.HandleFunc("POST /v1/join", n.handleJoin)
	n.mux.HandleFunc("GET /v1/join/ca", n.handleJoinCA)
	n.mux.HandleFunc("GET /v1/status", n.handleStatus)
	n.mux.HandleFunc("GET /v1/nodes", n.handleNodes)
	n.mux.HandleFunc("POST /v1/nodes/{name}/standby", withActor(n.handleStandby))
	n.mux.HandleFunc("POST /v1/nodes/{name}/roles", withActor(n.handleRoles))
	n.mux.HandleFunc("DELETE /v1/nodes/{name}", withActor(n.handleRemove))
	n.mux.HandleFunc("GET /v1/events", n.handleEvents)
	n.mux.HandleFunc("GET /v1/events/stream", n.handleEventStream)
	n.mux.HandleFunc("GET /v1/token", n.handleToken)
	n.mux.HandleFunc("POST /v1/auth/tokens", withActor(n.handleTokenCreate))
	n.mux.HandleFunc("GET /v1/auth/tokens", n.handleTokenList)
	n.mux.HandleFunc("DELETE /v1/auth/tokens/{name}", withActor(n.handleTokenRevoke))
	n.mux.HandleFunc("POST /v1/auth/client-certs", withActor(n.handleClientCertCreate))
	n.mux.HandleFunc("GET /v1/auth/client-certs", n.handleClientCertList)
	n.mux.HandleFunc("DELETE /v1/auth/client-certs/{name}", withActor(n.handleClientCertRevoke))
	n.mux.HandleFunc("POST /v1/pki/renew", withActor(n.handleRenew))
	n.mux.HandleFunc("GET /v1/pki/rotate", n.handleRotateCA)
	n.mux.HandleFunc("POST /v1/pki/rotate", withActor(n.handleRotateCA))
	n.mux.HandleFunc("POST /v1/join-tokens", withActor(n.handleJoinTokenCreate))
	n.mux.HandleFunc("GET /v1/join-tokens", n.handleJoinTokenList)
	n.mux.HandleFunc("DELETE /v1/join-tokens/{id}", withActor(n.handleJoinTokenRevoke))
}

// WriteJSON writes v as an indented JSON answer with the status code: the
// one way every hacs API handler answers.
func WriteJSON(w http.ResponseWriter, code int, v any) { writeJSON(w, code, v) }

// WriteError answers {"error": ...} with the status an error carries
// (HTTPError), 503 when this node cannot serve, else 500.
func WriteError(w http.ResponseWriter, err error) { writeError(w, err) }

// APIErrorMessage is the message of an error answer b: its "error" field
// (see WriteError), or else the body itself, trimmed.
func APIErrorMessage(b []byte) string {
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(b, &e) == nil && e.Error != "" {
		return e.Error
	}
	return strings.TrimSpace(string(b))
}

// HTTPError is an error that carries the HTTP status to answer with.
func HTTPError(code int, format string, args ...any) error { return errStatus(code, format, args...) }

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	var he *httpError
	switch {
	case errors.As(err, &he):
		code = he.code
	case errors.Is(err, ErrNotServing), errors.Is(err, context.DeadlineExceeded):
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, map[string]string{"error": err.Error()})
}

func (n *Node) handleJoin(w http.ResponseWriter, r *http.Request) {
	var req joinRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		writeError(w, errStatus(http.StatusBadRequest, "bad join request: %v", err))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	resp, err := n.admitJoin(ctx, req)
	if err != nil {
		if !errors.As(err, new(*httpError)) {
			err = errStatus(http.StatusServiceUnavailable, "%v", err)
		}
		n.log.Info("join refused", "name", req.Name, "from", r.RemoteAddr, "err", err)
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// Status is the answer of GET /v1/status.
type Status struct {
	Cluster    string            `json:"cluster"`
	Name       string            `json:"name"`
	ID         string            `json:"id"`
	Version    string            `json:"version"`
	Pid        int               `json:"pid"`
	Phase      Phase             `json:"phase"`
	Error      string            `json:"error,omitempty"`
	APIAddr    string            `json:"api_addr"`
	Roles      []Role            `json:"roles"`
	Labels     map[string]string `json:"labels,omitempty"`
	Voter      bool              `json:"voter"`
	Learner    bool              `json:"learner,omitempty"`
	Serving    ServingStatus     `json:"serving"`
	Leadership Leadership        `json:"leadership"`
	// RaftLeader is the etcd member id of the raft leader as this node's
	// embedded member sees it (voters only).
	RaftLeader string    `json:"raft_leader,omitempty"`
	MemberID   string    `json:"member_id,omitempty"`
	Endpoints  []string  `json:"endpoints"`
	Time       time.Time `json:"time"`
}

// Status returns this node's own view (no cluster store access).
func (n *Node) Status() Status {
	n.mu.Lock()
	phase, ferr := n.phase, n.err
	l := n.leadershipLocked()
	n.mu.Unlock()
	st := Status{
		Cluster: n.ClusterID(), Name: n.ident.Name, ID: n.ident.NodeID, Version: n.cfg.Version, Pid: os.Getpid(),
		Phase: phase, APIAddr: n.apiAddr, Roles: n.cfg.Roles, Labels: n.cfg.Labels, Voter: n.ident.Voter,
		Serving: n.ServingStatus(), Leadership: l, Time: time.Now().UTC(),
	}
	if ferr != nil {
		st.Error = ferr.Error()
	}
	if n.etcd != nil && phase != PhaseStopped {
		st.MemberID = fmt.Sprintf("%x", uint64(n.etcd.Server.MemberID()))
		if lead := n.etcd.Server.Lead(); lead != 0 {
			st.RaftLeader = fmt.Sprintf("%x", lead)
		}
		st.Learner = n.etcd.Server.IsLearner()
	}
	n.identMu.Lock()
	st.Endpoints = append([]string(nil), n.ident.Endpoints...)
	n.identMu.Unlock()
	return st
}

func (n *Node) handleStatus(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, n.Status())
}

func (n *Node) handleNodes(w http.ResponseWriter, r *http.Request) {
	if n.nodesCache == nil {
		writeError(w, errStatus(http.StatusServiceUnavailable, "this node is not connected to its cluster yet"))
		return
	}
	writeJSON(w, http.StatusOK, n.Members())
}

func (n *Node) handleStandby(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Standby *bool `json:"standby"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&body); err != nil || body.Standby == nil {
		writeError(w, errStatus(http.StatusBadRequest, `want a JSON body {"standby": true} or {"standby": false}`))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	if err := n.SetStandby(ctx, r.PathValue("name"), *body.Standby); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"name": r.PathValue("name"), "standby": *body.Standby})
}

func (n *Node) handleRemove(w http.ResponseWriter, r *http.Request) {
	force, _ := strconv.ParseBool(r.URL.Query().Get("force"))
	ctx, cancel := context.WithTimeout(r.Context(), 20*time.Second)
	defer cancel()
	if err := n.RemoveNode(ctx, r.PathValue("name"), force); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"removed": r.PathValue("name")})
}

func (n *Node) handleEvents(w http.ResponseWriter, r *http.Request) {
	cli := n.Client()
	if cli == nil {
		writeError(w, errStatus(http.StatusServiceUnavailable, "this node is not connected to its cluster yet"))
		return
	}
	q := r.URL.Query()
	f := EventFilter{Node: q.Get("node"), Kind: q.Get("kind"), Resource: q.Get("resource")}
	if s := q.Get("limit"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 0 {
			writeError(w, errStatus(http.StatusBadRequest, "limit %q: want a number", s))
			return
		}
		f.Limit = v
	}
	if s := q.Get("since"); s != "" {
		t, err := time.Parse(time.RFC3339, s)
		if err != nil {
			writeError(w, errStatus(http.StatusBadRequest, "since %q: want an RFC 3339 time", s))
			return
		}
		f.Since = t
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	evs, rev, err := ListEvents(ctx, cli, f)
	if err != nil {
		writeError(w, errStatus(http.StatusServiceUnavailable, "reading events: %v", err))
		return
	}
	if evs == nil {
		evs = []Event{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"rev": rev, "events": evs})
}
