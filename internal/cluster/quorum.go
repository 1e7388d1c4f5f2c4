package cluster

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"
)

// Answering at once on a node without quorum.
//
// A node cut off from the majority of its cluster's voters (a partition,
// or the majority down) cannot read its cluster store: a linearizable read
// waits for a leader that does not come. Its API requests would wait as
// long as their callers do; instead they are answered 503 with
// ErrNoQuorumMsg, so that a client asks another node at once. Nothing is
// served from a possibly outdated copy as if it were current.

// ErrNoQuorumMsg is the start of the 503 answer of a node without quorum.
const ErrNoQuorumMsg = "this node has no quorum: its cluster store cannot be read"

// quorumPoll is how often a node checks whether it has lost its quorum
// while requests wait on its cluster store.
const quorumPoll = 100 * time.Millisecond

// storeCheckTimeout bounds the store reads of the API's authentication
// (the API token check): a node with a quorum answers them in
// milliseconds, and an election takes about one etcd election timeout.
const storeCheckTimeout = 1500 * time.Millisecond

// quorumLost reports whether this node knows that it cannot reach a quorum
// now: it does not hold its liveness lease (not renewed for LeaseTTL -
// SafetyMargin), and its embedded etcd member knows no raft leader (a
// follower cut off stops following after an election timeout, a leader cut
// off steps down). A node without an embedded etcd member counts as
// without quorum once it has lost its lease. A node that never held its
// lease and has a raft leader (starting) is not refused here.
func (n *Node) quorumLost() bool {
	n.mu.Lock()
	serving, since, phase := n.serving, n.servingSince, n.phase
	n.mu.Unlock()
	if serving || phase == PhaseStopping || phase == PhaseStopped || phase == PhaseFailed {
		return false
	}
	if e := n.etcdLive.Load(); e != nil {
		return e.Server.Lead() == 0
	}
	return !since.IsZero()
}

// NoQuorumError returns a 503 error saying that this node has no quorum
// when it knows so (quorumLost), else nil.
func (n *Node) NoQuorumError() error {
	if !n.quorumLost() {
		return nil
	}
	return n.noQuorumError("")
}

func (n *Node) noQuorumError(detail string) error {
	if detail != "" {
		detail = " (" + detail + ")"
	}
	return errStatus(http.StatusServiceUnavailable, "%s%s: node %s is cut off from the majority of its cluster's voters (a partition, or they are down); ask another node", ErrNoQuorumMsg, detail, n.Name())
}

// answersLocally reports whether a request is answered from this node's
// own state, without its cluster store: it keeps working without quorum
// (what the node says about itself, its membership view, its metrics, its replicas' state and
// the replica operations between agents, local agent metadata).
func answersLocally(r *http.Request) bool {
	m, p := r.Method, r.URL.Path
	switch {
	// the membership view is marked Stale when this node cannot reach a
	// quorum (`hacs cluster status` reports that)
	case m == http.MethodGet && (p == "/v1/status" || p == "/metrics" || p == "/v1/nodes"),
		m == http.MethodGet && strings.HasPrefix(p, "/v1/volumes/") && strings.HasSuffix(p, "/mirror"),
		m == http.MethodGet && strings.HasPrefix(p, "/v1/clones/") && r.URL.Query().Get("local") == "1",
		m == http.MethodPost && strings.HasPrefix(p, "/v1/replicas/"),
		m == http.MethodGet && (p == "/v1/fence/agents" || strings.HasPrefix(p, "/v1/fence/agents/")),
		m == http.MethodGet && strings.HasPrefix(p, "/v1/resource-agents/"):
		return true
	}
	return false
}

// errQuorumLost is the cause of the cancellation of a request's context
// when its node loses its quorum while the request runs.
var errQuorumLost = errors.New(ErrNoQuorumMsg)

// quorumLoss returns a channel closed when this node has lost its quorum
// (quorumLost); one watcher, started by the first caller, checks every
// quorumPoll and hands out a new channel once the quorum is back.
func (n *Node) quorumLoss() <-chan struct{} {
	n.quorumOnce.Do(func() {
		n.quorumGone = make(chan struct{})
		go n.watchQuorum()
	})
	n.quorumMu.Lock()
	defer n.quorumMu.Unlock()
	return n.quorumGone
}

func (n *Node) watchQuorum() {
	t := time.NewTicker(quorumPoll)
	defer t.Stop()
	closed := false
	for {
		select {
		case <-n.lifeCtx.Done():
			return
		case <-t.C:
		}
		lost := n.quorumLost()
		if lost == closed {
			continue
		}
		n.quorumMu.Lock()
		if lost {
			close(n.quorumGone)
		} else {
			n.quorumGone = make(chan struct{})
		}
		closed = lost
		n.quorumMu.Unlock()
	}
}

// withQuorum runs a request that may wait on the cluster store: when this
// node loses its quorum meanwhile, the request's context is canceled
// (errQuorumLost) and, unless the handler had already begun its answer,
// the answer is the 503 of a node without quorum.
func (n *Node) withQuorum(h http.Handler, w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	gone := n.quorumLoss()
	go func() {
		select {
		case <-gone:
			cancel(errQuorumLost)
		case <-ctx.Done():
		}
	}()
	h.ServeHTTP(&quorumWriter{ResponseWriter: w, n: n, ctx: ctx, method: r.Method}, r.WithContext(ctx))
}

// quorumWriter replaces the answer of a request whose node lost its
// quorum while it ran (its context canceled with errQuorumLost) by the
// 503 of a node without quorum; but not the success (2xx) of a change
// (not a GET or HEAD): it is done, and a 503 would tell the caller to ask
// another node, which the CLI does, sending the change twice. It is used
// by the handler's goroutine only.
type quorumWriter struct {
	http.ResponseWriter
	n        *Node
	ctx      context.Context
	method   string
	wrote    bool
	replaced bool
}

// doneChange tells whether an answer with code reports a change done.
func (w *quorumWriter) doneChange(code int) bool {
	return code/100 == 2 && w.method != http.MethodGet && w.method != http.MethodHead
}

func (w *quorumWriter) WriteHeader(code int) {
	if w.replaced {
		return
	}
	if !w.wrote && code >= 200 {
		w.wrote = true
		if context.Cause(w.ctx) == errQuorumLost && !w.doneChange(code) {
			w.replaced = true
			writeError(w.ResponseWriter, w.n.noQuorumError(""))
			return
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *quorumWriter) Write(b []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	if w.replaced {
		return len(b), nil
	}
	return w.ResponseWriter.Write(b)
}

// Flush keeps streaming answers (the event stream) working.
func (w *quorumWriter) Flush() {
	if w.replaced {
		return
	}
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
		if w.replaced {
			return
		}
	}
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap gives http.ResponseController the connection's writer.
func (w *quorumWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
