package main

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestAnalyse(t *testing.T) {
	const ms = int64(time.Millisecond)
	kill := 1000 * ms
	log := strings.Join([]string{
		"ok 1 0 1000000",                                                  // 0-1 ms
		"ok 2 990000000 991000000",                                        // 990-991 ms, before the kill
		"ok 3 1000000000 1000100000",                                      // in flight at the kill, answered by the old primary (start == kill counts)
		"err 4 1010000000 1500000000 write: broken pipe",                  // an error after the kill
		"ok 5 1500000000 3200000000",                                      // stalled across the failover
		"check 5 3200000000 3260000000 LOST 2 slot 3 holds seq 1, want 3", // lost writes
		"ok 6 3260000000 3261000000",                                      // after
		"ok 7 3270000000 3271000000",
		"ok 8 3280", // a line being written: ignored
	}, "\n")
	r, done, err := analyse(strings.NewReader(log), kill)
	if err != nil || !done {
		t.Fatalf("done %v err %v", done, err)
	}
	// seq 3 started at the kill: it ends 0.1 ms after it.
	if math.Abs(r.failoverMS-0.1) > 1e-9 {
		t.Errorf("failover %v ms, want 0.1", r.failoverMS)
	}

	// Strictly after the kill: seq 5 is the first verified write.
	r, done, err = analyse(strings.NewReader(log), kill+1)
	if err != nil || !done {
		t.Fatalf("done %v err %v", done, err)
	}
	if math.Abs(r.failoverMS-(3200-1000-1e-6)) > 1e-3 || r.errors != 1 {
		t.Errorf("result %+v", r)
	}
	// The longest pause: from seq 3's end (1000.1 ms) to seq 5's end (3200 ms).
	if math.Abs(r.pauseMS-2199.9) > 1e-6 {
		t.Errorf("pause %v ms, want 2199.9", r.pauseMS)
	}

	// Lost writes are counted when the check comes before the first
	// verified write after the kill (here: a kill at 3100 ms).
	r, done, _ = analyse(strings.NewReader(log), 3100*ms)
	if !done || r.lost != 2 || math.Abs(r.failoverMS-161) > 1e-6 {
		t.Errorf("result %+v done %v", r, done)
	}

	// The first verified write is the last line: not done yet (its check
	// may follow).
	if _, done, _ := analyse(strings.NewReader("ok 1 0 1\nok 2 2000 3000\n"), 1500); done {
		t.Error("done before the line after the first verified write")
	}
	r, done, _ = analyse(strings.NewReader("ok 1 0 1\nok 2 2000 3000\ncheck 2 3000 4000 LOST 3 x\n"), 1500)
	if !done || r.lost != 3 {
		t.Errorf("check after the first verified write: %+v done %v", r, done)
	}

	// Nothing after the kill yet: not done.
	if _, done, _ := analyse(strings.NewReader(log), 3265*ms); done {
		t.Error("done without a verified write after the kill")
	}
}

func TestTimeline(t *testing.T) {
	kill := time.Date(2026, 1, 1, 0, 0, 10, 0, time.UTC)
	at := func(ms int) time.Time { return kill.Add(time.Duration(ms) * time.Millisecond) }
	evs := []event{
		{Time: at(-5000), Node: "node1", Kind: "volume-serving", Resource: "volume/v"},
		{Time: at(2300), Node: "node2", Kind: "node-offline", Message: "node node1 is offline"},
		{Time: at(2310), Node: "node2", Kind: "plan-promote", Resource: "volume/v"},
		{Time: at(2320), Node: "node2", Kind: "plan-promote", Resource: "volume/w"},
		{Time: at(2330), Node: "node2", Kind: "volume-serving", Resource: "volume/v"},
		{Time: at(2400), Node: "node2", Kind: "volume-serving", Resource: "volume/v"},
	}
	tl := timeline(evs, kill, "node1", "v")
	if tl.detectMS != 2300 || tl.promoteMS != 2310 || tl.servingMS != 2330 {
		t.Errorf("timeline %+v", tl)
	}
	// The DC died: a new DC elected is the detection.
	evs[1] = event{Time: at(2200), Node: "node3", Kind: "dc-elected"}
	if tl := timeline(evs, kill, "node1", "v"); tl.detectMS != 2200 {
		t.Errorf("timeline %+v", tl)
	}
	if tl := timeline(nil, kill, "node1", "v"); !math.IsNaN(tl.detectMS) || !math.IsNaN(tl.servingMS) {
		t.Errorf("empty timeline %+v", tl)
	}
}

func TestFillAndSummary(t *testing.T) {
	a, b := make([]byte, blockSize), make([]byte, blockSize)
	fill(a, 7, 12345)
	if string(fillFor(b, 7, a)) != string(a) {
		t.Error("fillFor does not rebuild the pattern")
	}
	fill(b, 8, 12345)
	if string(a) == string(b) {
		t.Error("two sequence numbers give the same block")
	}
	s := summarise([]float64{3, 1, 2, 10})
	if s.n != 4 || s.median != 2.5 || s.min != 1 || s.max != 10 || s.mean != 4 {
		t.Errorf("summary %+v", s)
	}
}
