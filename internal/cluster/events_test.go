package cluster

import (
	"context"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

func TestClusterEvents(t *testing.T) {
	_, cli := startTestEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	base := time.Now().Add(-time.Hour)
	for i := range 1200 {
		node := "a"
		if i%2 == 1 {
			node = "b"
		}
		if err := AppendEvent(ctx, cli, Event{Time: base.Add(time.Duration(i) * time.Second), Node: node, Kind: "k", Resource: fmt.Sprint(i % 3), Message: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	all, rev, err := ListEvents(ctx, cli, EventFilter{})
	if err != nil || len(all) != 1200 || rev == 0 {
		t.Fatalf("ListEvents: %d events, rev %d, %v", len(all), rev, err)
	}
	for i, e := range all {
		if e.Message != fmt.Sprint(i) {
			t.Fatalf("event %d is %q: not in time order", i, e.Message)
		}
	}
	last, _, _ := ListEvents(ctx, cli, EventFilter{Limit: 10, Node: "b"})
	if len(last) != 10 || last[0].Message != "1181" || last[9].Message != "1199" {
		t.Fatalf("newest 10 of node b: %+v", last)
	}
	since, _, _ := ListEvents(ctx, cli, EventFilter{Since: base.Add(1190 * time.Second), Resource: "0"})
	if len(since) != 3 { // 1191, 1194 and 1197
		t.Fatalf("since + resource: %+v", since)
	}

	// follow from the listed revision
	got := make(chan Event, 10)
	fctx, fcancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- FollowEvents(fctx, cli, rev, EventFilter{Kind: "x"}, func(e Event) { got <- e }) }()
	AppendEvent(ctx, cli, Event{Node: "c", Kind: "y", Message: "ignored"})
	AppendEvent(ctx, cli, Event{Node: "c", Kind: "x", Message: "followed"})
	select {
	case e := <-got:
		if e.Message != "followed" || e.Node != "c" || e.Time.IsZero() {
			t.Fatalf("followed %+v", e)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("FollowEvents delivered nothing")
	}
	fcancel()
	<-done

	// trimming keeps the newest
	n, err := TrimEvents(ctx, cli, 100)
	if err != nil || n != 1102 {
		t.Fatalf("TrimEvents deleted %d: %v", n, err)
	}
	rest, _, _ := ListEvents(ctx, cli, EventFilter{})
	if len(rest) != 100 || rest[99].Message != "followed" {
		t.Fatalf("after trim: %d events, last %+v", len(rest), rest[len(rest)-1])
	}
	if n, _ := TrimEvents(ctx, cli, 100); n != 0 {
		t.Fatalf("second trim deleted %d", n)
	}
}

func TestClusterCache(t *testing.T) {
	_, cli := startTestEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cli.Put(ctx, "/p/a", "1")
	cli.Put(ctx, "/q/x", "outside")
	c := NewCache(ctx, cli, "/p/", nil)
	if err := c.WaitSynced(ctx, 0); err != nil {
		t.Fatal(err)
	}
	s, ch := c.Snapshot()
	if len(s.KVs) != 1 || string(s.KVs["/p/a"].Value) != "1" {
		t.Fatalf("first snapshot %+v", s)
	}
	r, _ := cli.Put(ctx, "/p/b", "2")
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("no change notification")
	}
	if err := c.WaitSynced(ctx, r.Header.Revision); err != nil {
		t.Fatal(err)
	}
	s2, _ := c.Snapshot()
	if len(s2.KVs) != 2 || len(s.KVs) != 1 {
		t.Fatalf("snapshots %d and %d keys: the old one changed?", len(s.KVs), len(s2.KVs))
	}
	d, _ := cli.Delete(ctx, "/p/a")
	c.WaitSynced(ctx, d.Header.Revision)
	if s3, _ := c.Snapshot(); len(s3.KVs) != 1 || s3.KVs["/p/b"].ModRev == 0 {
		t.Fatalf("after delete: %+v", s3)
	}
	// the cache keeps following across a compaction
	for i := range 5 {
		cli.Put(ctx, "/q/x", fmt.Sprint(i))
	}
	r, _ = cli.Put(ctx, "/p/c", "3")
	if _, err := cli.Compact(ctx, r.Header.Revision); err != nil {
		t.Fatal(err)
	}
	r, _ = cli.Put(ctx, "/p/d", "4")
	if err := c.WaitSynced(ctx, r.Header.Revision); err != nil {
		t.Fatal(err)
	}
	if s4, _ := c.Snapshot(); len(s4.KVs) != 3 {
		t.Fatalf("after compaction: %d keys", len(s4.KVs))
	}
}

// TestAppendEventsRetried: a batch written again (its first write timed
// out after the store had taken it, as when a stopping node cuts the
// event writer's write short and flushes again) is stored once; a batch
// whose events are new is stored, each event at the key of its first
// attempt.
func TestAppendEventsRetried(t *testing.T) {
	_, cli := startTestEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	base := time.Now()
	evs := []Event{{Time: base, Node: "a", Kind: "volume-stopped", Message: "1"}, {Time: base.Add(time.Millisecond), Node: "a", Kind: "node-stopped", Message: "2"}}
	for attempt := range 3 {
		if err := appendEvents(ctx, cli, evs); err != nil {
			t.Fatalf("attempt %d: %v", attempt, err)
		}
	}
	if evs[0].wkey == "" || evs[0].wkey == evs[1].wkey {
		t.Fatalf("keys not kept per event: %q %q", evs[0].wkey, evs[1].wkey)
	}
	more := []Event{{Time: base.Add(2 * time.Millisecond), Node: "a", Kind: "k", Message: "3"}}
	if err := appendEvents(ctx, cli, more); err != nil {
		t.Fatal(err)
	}
	all, msgs := storedEvents(t, ctx, cli, "a")
	if fmt.Sprint(msgs) != "[1 2 3]" {
		t.Fatalf("stored %v, want [1 2 3] (each once)", msgs)
	}
	if all[0].Key != evs[0].wkey {
		t.Fatalf("stored at %q, first attempted at %q", all[0].Key, evs[0].wkey)
	}
}

// TestAppendEventsRetriedWithNewOnes: a batch tried again with new events
// after it (the writer drains the queue before each attempt; a stopping
// node emits node-stopped just before it flushes) stores the new events,
// although those of the first attempt were stored already.
func TestAppendEventsRetriedWithNewOnes(t *testing.T) {
	_, cli := startTestEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	base := time.Now()
	evs := []Event{{Time: base, Node: "a", Kind: "volume-stopped", Message: "1"}}
	// the first attempt, taken by the store though its caller saw it fail
	if err := appendEvents(ctx, cli, evs); err != nil {
		t.Fatal(err)
	}
	evs = append(evs, Event{Time: base.Add(time.Millisecond), Node: "a", Kind: "node-stopped", Message: "2"})
	if err := appendEvents(ctx, cli, evs); err != nil {
		t.Fatal(err)
	}
	_, msgs := storedEvents(t, ctx, cli, "a")
	if fmt.Sprint(msgs) != "[1 2]" {
		t.Fatalf("stored %v, want [1 2] (each once)", msgs)
	}
}

// storedEvents lists node's stored events and their messages.
func storedEvents(t *testing.T, ctx context.Context, cli *clientv3.Client, node string) ([]Event, []string) {
	t.Helper()
	all, _, err := ListEvents(ctx, cli, EventFilter{Node: node})
	if err != nil {
		t.Fatal(err)
	}
	var msgs []string
	for _, e := range all {
		msgs = append(msgs, e.Message)
	}
	return all, msgs
}
