package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

// streamHeartbeat is how often an idle event stream sends a comment, so
// that proxies and clients see the connection alive.
var streamHeartbeat = 15 * time.Second

// streamMaxAge ends a stream after a while: its client reconnects (the
// dashboard and EventSource do) and is authenticated again, so that a
// revoked token or certificate does not keep a stream for good.
var streamMaxAge atomic.Int64 // time.Duration; 5 min (set in init)

func init() { streamMaxAge.Store(int64(5 * time.Minute)) }

// handleEventStream serves GET /v1/events/stream: the cluster event log as
// Server-Sent Events (text/event-stream). Each event is sent as
//
//	id: REV
//	event: hacs
//	data: {...the Event as JSON...}
//
// Query parameters: node, kind, resource filter as for /v1/events; limit=N
// first sends the newest N matching events already in the log. A client
// reconnecting with the Last-Event-ID header (EventSource does this)
// continues after that revision instead. The stream ends when the watch of
// the cluster store fails, and after streamMaxAge (the client reconnects,
// authenticated again).
func (n *Node) handleEventStream(w http.ResponseWriter, r *http.Request) {
	cli := n.Client()
	if cli == nil {
		writeError(w, errStatus(http.StatusServiceUnavailable, "this node is not connected to its cluster yet"))
		return
	}
	fl, ok := w.(http.Flusher)
	if !ok {
		writeError(w, errStatus(http.StatusInternalServerError, "streaming is not supported on this connection"))
		return
	}
	q := r.URL.Query()
	f := EventFilter{Node: q.Get("node"), Kind: q.Get("kind"), Resource: q.Get("resource")}
	backlog := 0
	if s := q.Get("limit"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 0 || v > 10000 {
			writeError(w, errStatus(http.StatusBadRequest, "limit %q: want a number from 0 to 10000", s))
			return
		}
		backlog = v
	}
	var after int64
	if s := r.Header.Get("Last-Event-ID"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v < 0 {
			writeError(w, errStatus(http.StatusBadRequest, "Last-Event-ID %q: want a revision", s))
			return
		}
		after = v
	}
	ctx := r.Context()
	var first []Event
	if after == 0 {
		lf := f
		lf.Limit = backlog
		if backlog == 0 {
			lf.Limit = 1 // only the revision to follow from
		}
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		evs, rev, err := ListEvents(lctx, cli, lf)
		cancel()
		if err != nil {
			writeError(w, errStatus(http.StatusServiceUnavailable, "reading events: %v", err))
			return
		}
		if backlog > 0 {
			first = evs
		}
		after = rev
	}

	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	send := func(ev Event) error {
		b, err := json.Marshal(ev)
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintf(w, "id: %d\nevent: hacs\ndata: %s\n\n", ev.Rev, b); err != nil {
			return err
		}
		fl.Flush()
		return nil
	}
	fmt.Fprint(w, ": hacs event stream\nretry: 2000\n\n")
	for _, ev := range first {
		if send(ev) != nil {
			return
		}
	}
	fl.Flush()

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	evc := make(chan Event, 64)
	errc := make(chan error, 1)
	go func() {
		errc <- FollowEvents(wctx, cli, after, f, func(ev Event) {
			select {
			case evc <- ev:
			case <-wctx.Done():
			}
		})
	}()
	hb := time.NewTicker(streamHeartbeat)
	defer hb.Stop()
	maxAge := time.NewTimer(time.Duration(streamMaxAge.Load()))
	defer maxAge.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-maxAge.C:
			// the client reconnects (after the retry delay) and is
			// authenticated again
			fmt.Fprint(w, "event: reconnect\ndata: {}\n\n")
			fl.Flush()
			return
		case ev := <-evc:
			if send(ev) != nil {
				return
			}
		case <-hb.C:
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
				return
			}
			fl.Flush()
		case err := <-errc:
			// drain what the watch delivered before it ended
			for {
				select {
				case ev := <-evc:
					if send(ev) != nil {
						return
					}
					continue
				default:
				}
				break
			}
			msg := "the watch of the cluster store ended"
			if err != nil {
				msg += ": " + err.Error()
			}
			b, _ := json.Marshal(map[string]string{"error": msg})
			fmt.Fprintf(w, "event: error\ndata: %s\n\n", b)
			fl.Flush()
			return
		}
	}
}
