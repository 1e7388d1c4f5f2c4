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
	write := func(rel, content string) {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
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
