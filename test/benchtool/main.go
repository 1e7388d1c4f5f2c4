// Command benchtool summarises the fio JSON files written by scripts/bench.sh.
//
// It reads files laid out as DIR/TRANSPORT/JOB/SERVER.REP.json (any depth
// works: the job label is the path between DIR and the file, the server is
// the file name up to the first dot), optionally with a sidecar
// SERVER.REP.cpu holding "server-cpu-seconds wall-seconds", and prints per
// job and server the medians of IOPS, MiB/s, mean and p99 latency and
// server CPU, and the ratios of the medians against a baseline server.
//
// Ratios are oriented so that >1 always means "better than the baseline":
// IOPS and MiB/s are server/baseline, p99 latency is baseline/server.
//
// --compare names more servers to compare with (e.g. the plain-file hacs
// for pool volumes, one replica for replicated volumes): each adds two
// columns, IOPS × NAME (server/NAME) and lat Δµs NAME (the server's mean
// latency minus NAME's: the extra time per request, meaningful at depth 1).
//
//	go run ./test/benchtool [--baseline nbdkit] [--compare NAME,...] [--markdown] DIR|FILE...
//
// With --gobench, the files are `go test -bench` outputs instead, and it
// prints, per benchmark and metric, the count, median, min and max over the
// runs (-count N):
//
//	go run ./test/benchtool --gobench [--markdown] FILE...
//
// With --warm, it reads the data of the files into the page cache as single
// pages (readahead off), skipping holes; --drop drops their cached pages
// first (bench.sh does this, after a sync, before every run; see warm.go):
//
//	benchtool --warm [--drop] FILE...
//
// With --tlscerts, it writes a CA and a server and a client certificate for
// TLS runs (DIR/server: ca-cert.pem, server-cert.pem, server-key.pem;
// DIR/client: ca-cert.pem, client-cert.pem, client-key.pem):
//
//	benchtool --tlscerts DIR
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
)

// fioOutput is the part of fio's JSON output we use.
type fioOutput struct {
	Jobs []fioJob `json:"jobs"`
}

type fioJob struct {
	Jobname string  `json:"jobname"`
	Error   int     `json:"error"`
	Read    fioDir  `json:"read"`
	Write   fioDir  `json:"write"`
	UsrCPU  float64 `json:"usr_cpu"`
	SysCPU  float64 `json:"sys_cpu"`
}

type fioDir struct {
	IOBytes int64   `json:"io_bytes"`
	BWBytes float64 `json:"bw_bytes"`
	IOPS    float64 `json:"iops"`
	Runtime int64   `json:"runtime"` // ms
	TotalIO int64   `json:"total_ios"`
	Lat     struct {
		Mean float64 `json:"mean"`
	} `json:"lat_ns"` // submission + completion
	Clat struct {
		N          int64              `json:"N"`
		Percentile map[string]float64 `json:"percentile"`
	} `json:"clat_ns"`
}

// sample is one run: one fio job against one server.
type sample struct {
	job, server string
	round       string // REP of SERVER.REP.json: runs of one round ran back to back
	iops        float64
	mibps       float64
	latus       float64 // mean total latency (fio lat_ns), µs
	p99us       float64 // NaN when fio reported no percentile
	cpuPct      float64 // server CPU, % of one core, NaN when unknown
	cpuPerIOus  float64 // server CPU µs per I/O, NaN when unknown
}

func main() {
	baseline := flag.String("baseline", "nbdkit", "server the ratios are computed against")
	compare := flag.String("compare", "", "comma-separated servers to compare with too (IOPS ratio, mean latency difference)")
	markdown := flag.Bool("markdown", false, "print a markdown table")
	gobench := flag.Bool("gobench", false, "summarise `go test -bench` outputs instead of fio JSON")
	warm := flag.Bool("warm", false, "read the data (not the holes) of the files into the page cache, as single pages")
	drop := flag.Bool("drop", false, "with --warm: drop the files' cached pages first")
	tlsCerts := flag.Bool("tlscerts", false, "write a test CA and certificates into DIR/server and DIR/client (x509 layout of nbdkit, libnbd, qemu)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: benchtool [--baseline NAME] [--compare NAME,...] [--markdown] DIR|FILE.json...\n"+
			"       benchtool --gobench [--markdown] FILE...\n"+
			"       benchtool --warm [--drop] FILE...\n"+
			"       benchtool --tlscerts DIR\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	if *tlsCerts {
		if err := writeTLSCerts(flag.Arg(0)); err != nil {
			fmt.Fprintln(os.Stderr, "benchtool:", err)
			os.Exit(1)
		}
		return
	}
	if *warm {
		if _, err := warmFiles(flag.Args(), *drop); err != nil {
			fmt.Fprintln(os.Stderr, "benchtool:", err)
			os.Exit(1)
		}
		return
	}
	if *gobench {
		if err := goBench(os.Stdout, flag.Args(), *markdown); err != nil {
			fmt.Fprintln(os.Stderr, "benchtool:", err)
			os.Exit(1)
		}
		return
	}
	var cmp []string
	for _, c := range strings.Split(*compare, ",") {
		if c = strings.TrimSpace(c); c != "" {
			cmp = append(cmp, c)
		}
	}
	var samples []sample
	for _, arg := range flag.Args() {
		s, err := load(arg)
		if err != nil {
			fmt.Fprintln(os.Stderr, "benchtool:", err)
			os.Exit(1)
		}
		samples = append(samples, s...)
	}
	if len(samples) == 0 {
		fmt.Fprintln(os.Stderr, "benchtool: no fio JSON files found")
		os.Exit(1)
	}
	rows := summarise(samples, *baseline, cmp...)
	if *markdown {
		printMarkdown(os.Stdout, rows, *baseline, cmp...)
	} else {
		printText(os.Stdout, rows, *baseline, cmp...)
	}
}

// load reads one file or every *.json below a directory.
func load(arg string) ([]sample, error) {
	st, err := os.Stat(arg)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		s, err := loadFile(arg, "")
		if err != nil {
			return nil, err
		}
		return []sample{s}, nil
	}
	var out []sample
	err = filepath.WalkDir(arg, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !strings.HasSuffix(path, ".json") {
			return nil
		}
		rel, err := filepath.Rel(arg, filepath.Dir(path))
		if err != nil {
			return err
		}
		if rel == "." {
			rel = ""
		}
		s, err := loadFile(path, filepath.ToSlash(rel))
		if err != nil {
			return err
		}
		out = append(out, s)
		return nil
	})
	return out, err
}

// loadFile parses one fio JSON file. job is the label derived from its
// directory; when empty, fio's job name is used.
func loadFile(path, job string) (sample, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return sample{}, err
	}
	// Some engines print a line before the JSON when --output is not used.
	if i := bytes.IndexByte(raw, '{'); i > 0 {
		raw = raw[i:]
	}
	var fo fioOutput
	if err := json.Unmarshal(raw, &fo); err != nil {
		return sample{}, fmt.Errorf("%s: %w", path, err)
	}
	if len(fo.Jobs) != 1 {
		return sample{}, fmt.Errorf("%s: want exactly one fio job, got %d", path, len(fo.Jobs))
	}
	j := fo.Jobs[0]
	if j.Error != 0 {
		return sample{}, fmt.Errorf("%s: fio job failed with error %d", path, j.Error)
	}
	base := filepath.Base(path)
	server, rest, _ := strings.Cut(base, ".")
	round, _, _ := strings.Cut(rest, ".")
	if round == "json" {
		round = ""
	}
	if job == "" {
		job = j.Jobname
	}
	s := sample{job: job, server: server, round: round, p99us: math.NaN(), cpuPct: math.NaN(), cpuPerIOus: math.NaN()}
	var ios int64
	var secs, latSum float64
	for _, d := range []fioDir{j.Read, j.Write} {
		if d.IOBytes == 0 {
			continue
		}
		s.iops += d.IOPS
		s.mibps += d.BWBytes / (1 << 20)
		latSum += d.Lat.Mean / 1000 * float64(d.TotalIO)
		ios += d.TotalIO
		secs = math.Max(secs, float64(d.Runtime)/1000)
		if p, ok := d.Clat.Percentile["99.000000"]; ok {
			us := p / 1000
			if math.IsNaN(s.p99us) || us > s.p99us {
				s.p99us = us
			}
		}
	}
	if ios == 0 {
		return sample{}, fmt.Errorf("%s: no I/O was done", path)
	}
	s.latus = latSum / float64(ios)
	if s.latus == 0 {
		s.latus = math.NaN() // an fio without lat_ns
	}
	if cpu, wall, err := readCPU(strings.TrimSuffix(path, ".json") + ".cpu"); err == nil && wall > 0 {
		s.cpuPct = 100 * cpu / wall
		// The CPU window includes the ramp time; scale the I/O count
		// measured over fio's runtime to the whole window.
		if secs > 0 {
			s.cpuPerIOus = cpu * 1e6 / (float64(ios) / secs * wall)
		}
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return sample{}, err
	}
	return s, nil
}

func readCPU(path string) (cpu, wall float64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		return 0, 0, err
	}
	fields := strings.Fields(string(b))
	if len(fields) != 2 {
		return 0, 0, fmt.Errorf("%s: want \"cpu-seconds wall-seconds\"", path)
	}
	if cpu, err = strconv.ParseFloat(fields[0], 64); err != nil {
		return 0, 0, fmt.Errorf("%s: %w", path, err)
	}
	if wall, err = strconv.ParseFloat(fields[1], 64); err != nil {
		return 0, 0, fmt.Errorf("%s: %w", path, err)
	}
	return cpu, wall, nil
}

// row is the summary of one (job, server).
type row struct {
	job, server            string
	n                      int
	iops, mibps, lat, p99  float64
	cpu, cpuPerIO          float64
	spread                 float64 // (max-min)/median of IOPS
	rIOPS, rMiBps, rP99    float64 // ratios against the baseline, NaN if none
	rCPUPerIO              float64 // baseline/server CPU per I/O
	isBaseline, hasBaseRow bool
	cmp                    []paired // per compared server
	cmpSelf                []bool   // the row is that compared server
}

func summarise(samples []sample, baseline string, compare ...string) []row {
	type key struct{ job, server string }
	groups := map[key][]sample{}
	var jobs []string
	seenJob := map[string]bool{}
	serverOrder := map[string]int{}
	for _, s := range samples {
		k := key{s.job, s.server}
		groups[k] = append(groups[k], s)
		if !seenJob[s.job] {
			seenJob[s.job] = true
			jobs = append(jobs, s.job)
		}
		if _, ok := serverOrder[s.server]; !ok {
			serverOrder[s.server] = len(serverOrder)
		}
	}
	sort.Slice(jobs, func(a, b int) bool { return jobLess(jobs[a], jobs[b]) })
	var servers []string
	for s := range serverOrder {
		servers = append(servers, s)
	}
	// Others in name order, the baseline last: it is what they compare to.
	sort.Slice(servers, func(a, b int) bool {
		if (servers[a] == baseline) != (servers[b] == baseline) {
			return servers[b] == baseline
		}
		return servers[a] < servers[b]
	})
	var rows []row
	for _, job := range jobs {
		base, haveBase := groups[key{job, baseline}]
		var b row
		if haveBase {
			b = stats(base)
		}
		for _, srv := range servers {
			g, ok := groups[key{job, srv}]
			if !ok {
				continue
			}
			r := stats(g)
			r.job, r.server = job, srv
			r.isBaseline = srv == baseline
			r.hasBaseRow = haveBase
			r.rIOPS, r.rMiBps, r.rP99, r.rCPUPerIO = math.NaN(), math.NaN(), math.NaN(), math.NaN()
			if haveBase {
				r.rIOPS = ratio(r.iops, b.iops)
				r.rMiBps = ratio(r.mibps, b.mibps)
				r.rP99 = ratio(b.p99, r.p99)
				r.rCPUPerIO = ratio(b.cpuPerIO, r.cpuPerIO)
			}
			for _, c := range compare {
				r.cmp = append(r.cmp, pair(g, groups[key{job, c}]))
				r.cmpSelf = append(r.cmpSelf, srv == c)
			}
			rows = append(rows, r)
		}
	}
	return rows
}

// jobLess orders jobs by transport, then in the order bench.sh runs them.
func jobLess(a, b string) bool {
	rank := func(s string) (string, int, string) {
		dir, name := "", s
		if i := strings.LastIndexByte(s, '/'); i >= 0 {
			dir, name = s[:i], s[i+1:]
		}
		order := map[string]int{"randread4k": 0, "randwrite4k": 1, "seqread1m": 2, "seqwrite1m": 3, "randwrite4k-qd1": 4}
		if o, ok := order[name]; ok {
			return dir, o, name
		}
		return dir, len(order), name
	}
	da, oa, na := rank(a)
	db, ob, nb := rank(b)
	if da != db {
		return transportRank(da) < transportRank(db) || (transportRank(da) == transportRank(db) && da < db)
	}
	if oa != ob {
		return oa < ob
	}
	return na < nb
}

func transportRank(t string) int {
	switch t {
	case "unix":
		return 0
	case "tcp":
		return 1
	}
	return 2
}

// paired compares a server with another run by run: the runs of one round
// (same REP) ran next to each other, so their ratio is little affected by
// the load of the machine drifting between rounds.
type paired struct {
	n                    int
	iops, iopsLo, iopsHi float64 // median, min and max of the per-round IOPS ratios
	latDelta             float64 // median of the per-round mean latency differences, µs
}

func pair(g, other []sample) paired {
	byRound := map[string]sample{}
	for _, s := range other {
		byRound[s.round] = s
	}
	var rs, ds []float64
	for _, s := range g {
		o, ok := byRound[s.round]
		if !ok {
			continue
		}
		if x := ratio(s.iops, o.iops); !math.IsNaN(x) {
			rs = append(rs, x)
		}
		if d := s.latus - o.latus; !math.IsNaN(d) {
			ds = append(ds, d)
		}
	}
	p := paired{n: len(rs), iops: median(rs), iopsLo: math.NaN(), iopsHi: math.NaN(), latDelta: median(ds)}
	if len(rs) > 0 {
		p.iopsLo, p.iopsHi = rs[0], rs[0]
		for _, x := range rs {
			p.iopsLo, p.iopsHi = math.Min(p.iopsLo, x), math.Max(p.iopsHi, x)
		}
	}
	return p
}

func stats(g []sample) row {
	pick := func(f func(sample) float64) []float64 {
		var v []float64
		for _, s := range g {
			if x := f(s); !math.IsNaN(x) {
				v = append(v, x)
			}
		}
		return v
	}
	iops := pick(func(s sample) float64 { return s.iops })
	r := row{
		n:        len(g),
		iops:     median(iops),
		mibps:    median(pick(func(s sample) float64 { return s.mibps })),
		lat:      median(pick(func(s sample) float64 { return s.latus })),
		p99:      median(pick(func(s sample) float64 { return s.p99us })),
		cpu:      median(pick(func(s sample) float64 { return s.cpuPct })),
		cpuPerIO: median(pick(func(s sample) float64 { return s.cpuPerIOus })),
	}
	if len(iops) > 1 && r.iops > 0 {
		lo, hi := iops[0], iops[0]
		for _, x := range iops {
			lo, hi = math.Min(lo, x), math.Max(hi, x)
		}
		r.spread = (hi - lo) / r.iops
	}
	return r
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func ratio(a, b float64) float64 {
	if b == 0 || math.IsNaN(a) || math.IsNaN(b) {
		return math.NaN()
	}
	return a / b
}

func num(x float64, prec int) string {
	if math.IsNaN(x) {
		return "-"
	}
	return strconv.FormatFloat(x, 'f', prec, 64)
}

func ratioStr(r row, x float64) string {
	if r.isBaseline || !r.hasBaseRow || math.IsNaN(x) {
		return "-"
	}
	return strconv.FormatFloat(x, 'f', 2, 64)
}

var baseHeader = []string{"job", "server", "runs", "IOPS", "MiB/s", "lat µs", "p99 µs", "IOPS spread",
	"srv CPU %", "srv CPU µs/IO", "IOPS ×", "MiB/s ×", "p99 ×", "CPU/IO ×"}

// nRatio is the number of baseline ratio columns at the end of baseHeader.
const nRatio = 4

func header(compare []string) []string {
	h := append([]string(nil), baseHeader...)
	for _, c := range compare {
		h = append(h, "IOPS × "+c+" [range]", "lat Δµs "+c)
	}
	return h
}

func cells(r row) []string {
	c := []string{
		r.job, r.server, strconv.Itoa(r.n),
		num(r.iops, 0), num(r.mibps, 1), num(r.lat, 0), num(r.p99, 0),
		num(100*r.spread, 0) + "%",
		num(r.cpu, 0), num(r.cpuPerIO, 1),
		ratioStr(r, r.rIOPS), ratioStr(r, r.rMiBps), ratioStr(r, r.rP99), ratioStr(r, r.rCPUPerIO),
	}
	for i, p := range r.cmp {
		if r.cmpSelf[i] || p.n == 0 {
			c = append(c, "-", "-")
			continue
		}
		lat := "-"
		if !math.IsNaN(p.latDelta) {
			lat = fmt.Sprintf("%+.0f", p.latDelta)
		}
		c = append(c, fmt.Sprintf("%.2f [%.2f–%.2f]", p.iops, p.iopsLo, p.iopsHi), lat)
	}
	return c
}

func legend(baseline string, compare []string) string {
	s := fmt.Sprintf("Medians over the runs. Ratios (×) compare each server's medians with %s's, oriented so that >1 means better than %s:\n"+
		"IOPS × and MiB/s × are server/%s, p99 × and CPU/IO × are %s/server (lower latency or CPU per I/O gives >1).\n"+
		"lat is fio's mean total latency (submission + completion, lat_ns); p99 is fio's completion latency (clat) 99th percentile. IOPS spread is (max-min)/median over the runs.\n"+
		"srv CPU %% is the server's user+system time (all processes of its process group) over the fio run (ramp included), in %% of one core; srv CPU µs/IO divides it by the I/Os.",
		baseline, baseline, baseline, baseline)
	for _, c := range compare {
		s += fmt.Sprintf("\nIOPS × %s is the median over the rounds of server/%s IOPS, each round's runs side by side, [min–max] of those ratios; "+
			"lat Δµs %s is the median over the rounds of the server's mean latency minus %s's (at depth 1: the extra time per request).", c, c, c, c)
	}
	return s
}

func printText(w io.Writer, rows []row, baseline string, compare ...string) {
	h := header(compare)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, strings.Join(h, "\t")+"\t")
	prev := ""
	for _, r := range rows {
		if prev != "" && r.job != prev {
			fmt.Fprintln(tw, strings.Repeat("\t", len(h)))
		}
		prev = r.job
		fmt.Fprintln(tw, strings.Join(cells(r), "\t")+"\t")
	}
	tw.Flush()
	fmt.Fprintln(w)
	fmt.Fprintln(w, legend(baseline, compare))
}

func printMarkdown(w io.Writer, rows []row, baseline string, compare ...string) {
	h := header(compare)
	fmt.Fprintln(w, "| "+strings.Join(h, " | ")+" |")
	align := make([]string, len(h))
	for i := range align {
		align[i] = "---:"
	}
	align[0], align[1] = "---", "---"
	fmt.Fprintln(w, "|"+strings.Join(align, "|")+"|")
	for _, r := range rows {
		c := cells(r)
		// Make the ratios stand out.
		for i := len(baseHeader) - nRatio; i < len(c); i++ {
			if c[i] != "-" && (i >= len(baseHeader) || !r.isBaseline) {
				c[i] = "**" + c[i] + "**"
			}
		}
		fmt.Fprintln(w, "| "+strings.Join(c, " | ")+" |")
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, strings.ReplaceAll(legend(baseline, compare), "\n", "\n\n"))
}
