package cluster

import (
	"context"
	"fmt"
	"testing"
	"time"
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
