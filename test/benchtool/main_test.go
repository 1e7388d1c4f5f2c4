package main

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fioJSON is a minimal fio --output-format=json document for one job.
func fioJSON(rw string, iops, bwBytes float64, p99ns int64, ios int64) string {
	dir := fmt.Sprintf(`{"io_bytes": %d, "bw_bytes": %g, "iops": %g, "runtime": 5000, "total_ios": %d,
		"clat_ns": {"N": %d, "percentile": {"50.000000": 1000, "99.000000": %d}}}`, ios*4096, bwBytes, iops, ios, ios, p99ns)
	empty := `{"io_bytes": 0, "bw_bytes": 0, "iops": 0, "runtime": 0, "total_ios": 0, "clat_ns": {"N": 0}}`
	read, write := dir, empty
	if rw == "write" {
		read, write = empty, dir
	}
	return fmt.Sprintf(`fio: connected to NBD server
{"fio version": "fio-3.33", "jobs": [{"jobname": "x", "error": 0, "read": %s, "write": %s}]}`, read, write)
}

func TestSummary(t *testing.T) {
	dir := t.TempDir()
	write := func(rel, content string) { writeFile(t, filepath.Join(dir, rel), content) }
	// hacs: IOPS 100, 300, 200 -> median 200; nbdkit: 100 each.
	for i, iops := range []float64{100, 300, 200} {
		write(fmt.Sprintf("unix/randread4k/hacs.%d.json", i+1), fioJSON("read", iops, iops*4096, 2000_000, int64(iops*5)))
		write(fmt.Sprintf("unix/randread4k/nbdkit.%d.json", i+1), fioJSON("read", 100, 100*4096, 4000_000, 500))
	}
	write("unix/randread4k/hacs.1.cpu", "1.0 2.0\n")
	write("tcp/seqwrite1m/hacs.1.json", fioJSON("write", 50, 50<<20, 1000_000, 250))
	samples, err := load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(samples) != 7 {
		t.Fatalf("got %d samples, want 7", len(samples))
	}
	rows := summarise(samples, "nbdkit")
	if len(rows) != 3 {
		t.Fatalf("got %d rows, want 3: %+v", len(rows), rows)
	}
	h, n, w := rows[0], rows[1], rows[2]
	if h.job != "unix/randread4k" || h.server != "hacs" || n.server != "nbdkit" || w.job != "tcp/seqwrite1m" {
		t.Fatalf("order: %+v", rows)
	}
	if h.iops != 200 || h.rIOPS != 2 || h.rP99 != 2 || h.p99 != 2000 {
		t.Errorf("hacs row: %+v", h)
	}
	if h.spread != 1 { // (300-100)/200
		t.Errorf("spread %v, want 1", h.spread)
	}
	if math.Abs(h.cpu-50) > 1e-9 {
		t.Errorf("cpu %v, want 50%%", h.cpu)
	}
	if !math.IsNaN(w.rIOPS) || w.mibps != 50 {
		t.Errorf("row without baseline: %+v", w)
	}
	var buf bytes.Buffer
	printMarkdown(&buf, rows, "nbdkit")
	if !strings.Contains(buf.String(), "| unix/randread4k | hacs | 3 | 200 |") || !strings.Contains(buf.String(), "**2.00**") {
		t.Errorf("markdown:\n%s", buf.String())
	}
}

func TestMedian(t *testing.T) {
	if m := median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Errorf("median = %v, want 2.5", m)
	}
	if !math.IsNaN(median(nil)) {
		t.Error("median of nothing should be NaN")
	}
}

func TestCompareAndLatency(t *testing.T) {
	dir := t.TempDir()
	write := func(rel, content string) { writeFile(t, filepath.Join(dir, rel), content) }
	withLat := func(doc string, latNS float64) string {
		return strings.Replace(doc, `"write": {"io_bytes"`, fmt.Sprintf(`"write": {"lat_ns": {"mean": %g}, "io_bytes"`, latNS), 1)
	}
	write("tcp/randwrite4k-qd1/rep1.1.json", withLat(fioJSON("write", 4000, 4000*4096, 500_000, 20000), 250_000))
	write("tcp/randwrite4k-qd1/rep2.1.json", withLat(fioJSON("write", 2000, 2000*4096, 900_000, 10000), 500_000))
	write("tcp/randwrite4k-qd1/nbdkit.1.json", withLat(fioJSON("write", 8000, 8000*4096, 200_000, 40000), 125_000))
	write("tcp/randwrite4k/rep2.1.json", fioJSON("write", 1000, 1000*4096, 900_000, 5000))
	samples, err := load(dir)
	if err != nil {
		t.Fatal(err)
	}
	rows := summarise(samples, "nbdkit", "rep1")
	var r2, r1 row
	for _, r := range rows {
		if r.job == "tcp/randwrite4k-qd1" && r.server == "rep2" {
			r2 = r
		}
		if r.job == "tcp/randwrite4k-qd1" && r.server == "rep1" {
			r1 = r
		}
	}
	if r2.lat != 500 || r2.cmp[0].iops != 0.5 || r2.cmp[0].latDelta != 250 || r2.rIOPS != 0.25 {
		t.Errorf("rep2 row: %+v", r2)
	}
	if !r1.cmpSelf[0] {
		t.Errorf("rep1 row should be marked as the compared server: %+v", r1)
	}
	var buf bytes.Buffer
	printMarkdown(&buf, rows, "nbdkit", "rep1")
	out := buf.String()
	if !strings.Contains(out, "| IOPS × rep1 [range] | lat Δµs rep1 |") || !strings.Contains(out, "| **0.50 [0.50–0.50]** | **+250** |") {
		t.Errorf("markdown:\n%s", out)
	}
	// A job without the compared server: dashes.
	if !strings.Contains(out, "| tcp/randwrite4k | rep2 | 1 | 1000 |") {
		t.Errorf("markdown:\n%s", out)
	}
	// Job order: qd1 after randwrite4k.
	if !jobLess("tcp/randwrite4k", "tcp/randwrite4k-qd1") {
		t.Error("randwrite4k-qd1 should come after randwrite4k")
	}
}

func TestPaired(t *testing.T) {
	// Round 1: a=100, b=200; round 2: a=300, b=300; round 3: only a.
	a := []sample{{round: "1", iops: 100, latus: 10}, {round: "2", iops: 300, latus: 30}, {round: "3", iops: 50, latus: 1}}
	b := []sample{{round: "1", iops: 200, latus: 5}, {round: "2", iops: 300, latus: 10}}
	p := pair(a, b)
	if p.n != 2 || p.iops != 0.75 || p.iopsLo != 0.5 || p.iopsHi != 1 || p.latDelta != 12.5 {
		t.Errorf("paired %+v", p)
	}
	if p := pair(a, nil); p.n != 0 || !math.IsNaN(p.iops) {
		t.Errorf("paired with nothing %+v", p)
	}
}

func TestGoBench(t *testing.T) {
	in := `goos: linux
BenchmarkResync-2   	       1	4052384737 ns/op	       250.0 MiB/s	       256.0 MiB-sent	         1.024 s/resync
BenchmarkResync-2   	       1	4052384737 ns/op	       300.0 MiB/s	       256.0 MiB-sent	         0.853 s/resync
BenchmarkResync-2   	       1	4052384737 ns/op	       200.0 MiB/s	       256.0 MiB-sent	         1.280 s/resync
PASS
`
	m, err := parseGoBench(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 4 || m[1].unit != "MiB/s" || len(m[1].values) != 3 || median(m[1].values) != 250 {
		t.Fatalf("parsed: %+v", m)
	}
	p := filepath.Join(t.TempDir(), "b.txt")
	os.WriteFile(p, []byte(in), 0o644)
	var buf bytes.Buffer
	if err := goBench(&buf, []string{p}, true); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "| BenchmarkResync-2 | MiB/s | 3 | 250.0 | 200.0 | 300.0 |") {
		t.Errorf("markdown:\n%s", buf.String())
	}
}

func TestWarmSkipsHoles(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sparse")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(64 << 20); err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{1}, 8192)
	if _, err := f.WriteAt(data, 32<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	n, err := warmFiles([]string{p}, true)
	if err != nil {
		t.Fatal(err)
	}
	// The filesystem may report data in whole blocks (or, without
	// SEEK_DATA support, everything): at least the 8 KiB written, far less
	// than the 64 MiB file on filesystems that keep holes.
	if n < 8192 || n > 64<<20 {
		t.Errorf("read %d bytes", n)
	}
	t.Logf("read %d bytes of a 64 MiB file with 8 KiB of data", n)
}

// writeFile writes content to path, making its directory first.
func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
