package cluster

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// readSSE reads Server-Sent Events from r: each event's id, type and data.
func readSSE(t *testing.T, sc *bufio.Scanner, n int) []sseEvent {
	t.Helper()
	var out []sseEvent
	var cur sseEvent
	for len(out) < n && sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if cur.data != "" {
				out = append(out, cur)
			}
			cur = sseEvent{}
		case strings.HasPrefix(line, "id: "):
			cur.id = line[4:]
		case strings.HasPrefix(line, "event: "):
			cur.typ = line[7:]
		case strings.HasPrefix(line, "data: "):
			cur.data = line[6:]
		}
	}
	return out
}

type sseEvent struct{ id, typ, data string }

func TestEventStream(t *testing.T) {
	n, _ := startSoloNode(t, "solo")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, m := range []string{"old1", "old2"} {
		if err := AppendEvent(ctx, n.Client(), Event{Node: "solo", Kind: "test-old", Message: m}); err != nil {
			t.Fatal(err)
		}
	}
	base := n.Scheme() + "://" + n.APIAddr()

	for _, tc := range []struct{ query, status string }{{"?limit=x", "400"}, {"?limit=-1", "400"}} {
		resp, err := n.HTTPClient().Get(base + "/v1/events/stream" + tc.query)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Status[:3]; got != tc.status {
			t.Errorf("%s: status %s, want %s", tc.query, resp.Status, tc.status)
		}
	}

	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/v1/events/stream?limit=2&kind=test-old", nil)
	resp, err := n.HTTPClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	sc := bufio.NewScanner(resp.Body)
	// the backlog first, then a new event live; other kinds filtered out
	go func() {
		time.Sleep(200 * time.Millisecond)
		AppendEvent(ctx, n.Client(), Event{Node: "solo", Kind: "test-other", Message: "filtered"})
		AppendEvent(ctx, n.Client(), Event{Node: "solo", Kind: "test-old", Message: "live"})
	}()
	evs := readSSE(t, sc, 3)
	var msgs []string
	var lastID string
	for _, e := range evs {
		var ev Event
		if err := json.Unmarshal([]byte(e.data), &ev); err != nil || e.typ != "hacs" {
			t.Fatalf("event %+v: %v", e, err)
		}
		msgs = append(msgs, ev.Message)
		lastID = e.id
	}
	if strings.Join(msgs, ",") != "old1,old2,live" {
		t.Fatalf("stream sent %v", msgs)
	}
	resp.Body.Close()

	// Reconnecting with Last-Event-ID resumes after it.
	AppendEvent(ctx, n.Client(), Event{Node: "solo", Kind: "test-old", Message: "missed"})
	req, _ = http.NewRequestWithContext(ctx, "GET", base+"/v1/events/stream?kind=test-old", nil)
	req.Header.Set("Last-Event-ID", lastID)
	resp2, err := n.HTTPClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp2.Body.Close()
	evs = readSSE(t, bufio.NewScanner(resp2.Body), 1)
	if len(evs) != 1 || !strings.Contains(evs[0].data, `"missed"`) {
		t.Fatalf("resumed stream sent %+v", evs)
	}

	// A stream ends after streamMaxAge, telling the client to reconnect.
	old := streamMaxAge.Swap(int64(300 * time.Millisecond))
	defer streamMaxAge.Store(old)
	req, _ = http.NewRequestWithContext(ctx, "GET", base+"/v1/events/stream", nil)
	resp3, err := n.HTTPClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp3.Body.Close()
	start := time.Now()
	rest, err := io.ReadAll(resp3.Body)
	if err != nil || !strings.HasSuffix(string(rest), "event: reconnect\ndata: {}\n\n") || time.Since(start) > 10*time.Second {
		t.Fatalf("stream after its max age: %v %q", err, rest)
	}
}
