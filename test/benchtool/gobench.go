package main

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
)

// benchMetric is one metric of one benchmark over the runs of -count.
type benchMetric struct {
	bench, unit string
	values      []float64
}

// parseGoBench reads `go test -bench` output: lines such as
//
//	BenchmarkResync-2   1   4052384737 ns/op   261.5 MiB/s   0.98 s/resync
//
// and returns the metrics in the order they first appear.
func parseGoBench(r io.Reader) ([]*benchMetric, error) {
	var out []*benchMetric
	idx := map[[2]string]*benchMetric{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		if _, err := strconv.ParseInt(f[1], 10, 64); err != nil {
			continue // not a result line (e.g. a log line starting with the name)
		}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return nil, fmt.Errorf("%q: bad value %q", sc.Text(), f[i])
			}
			k := [2]string{f[0], f[i+1]}
			m := idx[k]
			if m == nil {
				m = &benchMetric{bench: f[0], unit: f[i+1]}
				idx[k] = m
				out = append(out, m)
			}
			m.values = append(m.values, v)
		}
	}
	return out, sc.Err()
}

func goBench(w io.Writer, paths []string, markdown bool) error {
	var metrics []*benchMetric
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		m, err := parseGoBench(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		metrics = append(metrics, m...)
	}
	if len(metrics) == 0 {
		return fmt.Errorf("no benchmark results in %s", strings.Join(paths, " "))
	}
	h := []string{"benchmark", "metric", "runs", "median", "min", "max"}
	var rows [][]string
	for _, m := range metrics {
		lo, hi := math.Inf(1), math.Inf(-1)
		for _, v := range m.values {
			lo, hi = math.Min(lo, v), math.Max(hi, v)
		}
		rows = append(rows, []string{m.bench, m.unit, strconv.Itoa(len(m.values)),
			fmtNum(median(m.values)), fmtNum(lo), fmtNum(hi)})
	}
	if markdown {
		fmt.Fprintln(w, "| "+strings.Join(h, " | ")+" |")
		fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|")
		for _, r := range rows {
			fmt.Fprintln(w, "| "+strings.Join(r, " | ")+" |")
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, strings.Join(h, "\t")+"\t")
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t")+"\t")
	}
	return tw.Flush()
}

// fmtNum prints with 4 significant digits, without exponent for the usual
// magnitudes.
func fmtNum(x float64) string {
	switch a := math.Abs(x); {
	case a >= 1000:
		return strconv.FormatFloat(x, 'f', 0, 64)
	case a >= 100:
		return strconv.FormatFloat(x, 'f', 1, 64)
	case a >= 10:
		return strconv.FormatFloat(x, 'f', 2, 64)
	default:
		return strconv.FormatFloat(x, 'f', 3, 64)
	}
}
