// Command failprobe measures failover as a client sees it, for
// scripts/bench-failover.sh (docs/BENCHMARKS.md, "Failover").
//
//	failprobe probe --socket PATH [--export NAME] [--interval 10ms] --log FILE
//
// connects to an NBD endpoint (normally `hacs volume attach NAME --listen
// unix:PATH`, which follows the volume's primary) and, every interval,
// writes one 4 KiB block with a fresh pattern (sequence number, time),
// reads it back and compares. Blocks cycle over --blocks slots. One line is
// appended to the log per operation:
//
//	ok SEQ START_NS END_NS
//	err SEQ START_NS END_NS MESSAGE
//
// (wall-clock nanoseconds since the epoch; an err line is a failed write, a
// failed read or a read that returned other data). After any operation that
// took longer than --check-after, every slot written so far is read back
// and compared with the last acknowledged write to it, so that a write
// acknowledged before a failover and missing after it is reported:
//
//	check SEQ START_NS END_NS OK|LOST N
//
// The probe runs until SIGINT/SIGTERM or --duration.
//
//	failprobe measure --log FILE --kill-ns NS [--timeout 60s]
//
// waits until the log holds an ok line for an operation that started at or
// after NS (the moment the primary was killed), and the line after it, and
// prints one line:
//
//	failover_ms=F pause_ms=P errors=E lost=L
//
// failover_ms is the time from NS to the end of that operation (the first
// write through the new primary that was read back and verified);
// pause_ms is the longest gap between two consecutive ok operations' ends
// in that window (what an application saw); errors counts err lines and
// lost the blocks found missing by a check, since NS up to the line after
// that operation. It exits 1 when no such operation appears within the
// timeout.
//
//	failprobe timeline --events FILE --kill-ns NS --node NODE --volume NAME
//
// reads the cluster event log (`hacs agent events --json`) and prints when,
// after NS, the cluster noticed the death of NODE (detect_ms: its
// node-offline event, or a new DC elected when NODE was the DC), planned the
// failover of the volume (promote_ms: plan-promote) and a new primary
// served it (serving_ms: volume-serving on another node); "NaN" for
// events not found.
//
//	failprobe stats FILE
//
// prints the count, median, min, max and mean of the numbers in FILE (one
// per line, first field), for the script's summary.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hacs/hacs/internal/nbd"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "probe":
		err = probeCmd(os.Args[2:])
	case "measure":
		err = measureCmd(os.Args[2:])
	case "timeline":
		err = timelineCmd(os.Args[2:])
	case "stats":
		err = statsCmd(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "failprobe:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, `usage:
  failprobe probe --socket PATH [--export NAME] [--interval 10ms] [--blocks 256] --log FILE
  failprobe measure --log FILE --kill-ns NS [--timeout 60s]
  failprobe timeline --events FILE --kill-ns NS --node NODE --volume NAME
  failprobe stats FILE`)
	os.Exit(2)
}

// ---- probe -------------------------------------------------------------------

const blockSize = 4096

func probeCmd(args []string) error {
	fs := flag.NewFlagSet("probe", flag.ExitOnError)
	socket := fs.String("socket", "", "Unix socket of the NBD endpoint (hacs volume attach --listen unix:PATH)")
	export := fs.String("export", "", "export name")
	interval := fs.Duration("interval", 10*time.Millisecond, "one write+read every interval")
	blocks := fs.Int("blocks", 256, "number of 4 KiB slots the writes cycle over")
	offset := fs.Int64("offset", 0, "byte offset of the first slot")
	logPath := fs.String("log", "", "append one line per operation to this file")
	checkAfter := fs.Duration("check-after", 200*time.Millisecond, "re-read every slot after an operation that took longer than this")
	duration := fs.Duration("duration", 0, "stop after this long (0: until SIGINT/SIGTERM)")
	fs.Parse(args)
	if *socket == "" || *logPath == "" || *blocks < 1 || *interval <= 0 {
		return errors.New("probe needs --socket and --log (and --blocks ≥ 1, --interval > 0)")
	}
	lf, err := os.OpenFile(*logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer lf.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	p := &probe{socket: *socket, export: *export, blocks: *blocks, offset: *offset, log: lf,
		checkAfter: *checkAfter, last: make([]uint64, *blocks)}
	return p.run(ctx, *interval)
}

type probe struct {
	socket, export string
	blocks         int
	offset         int64
	log            io.Writer
	checkAfter     time.Duration
	c              *nbd.Client
	last           []uint64 // per slot: sequence number of the last acknowledged write (0: none)
}

func (p *probe) logf(format string, a ...any) {
	fmt.Fprintf(p.log, format+"\n", a...)
}

// client returns a connection, dialling (again) when there is none or the
// last one broke. Dial failures are returned, and logged by the caller as
// failed operations.
func (p *probe) client(ctx context.Context) (*nbd.Client, error) {
	if p.c != nil && p.c.Err() == nil {
		return p.c, nil
	}
	if p.c != nil {
		p.c.Close()
		p.c = nil
	}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := nbd.Dial(dctx, "unix", p.socket, nbd.ClientOptions{Export: p.export})
	if err != nil {
		return nil, err
	}
	if c.Size() < p.offset+int64(p.blocks)*blockSize {
		c.Close()
		return nil, fmt.Errorf("export of %d bytes is too small for %d slots at %d", c.Size(), p.blocks, p.offset)
	}
	p.c = c
	return c, nil
}

func (p *probe) run(ctx context.Context, interval time.Duration) error {
	defer func() {
		if p.c != nil {
			p.c.Close()
		}
	}()
	t := time.NewTicker(interval)
	defer t.Stop()
	wbuf := make([]byte, blockSize)
	rbuf := make([]byte, blockSize)
	for seq := uint64(1); ; seq++ {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		slot := int(seq % uint64(p.blocks))
		off := p.offset + int64(slot)*blockSize
		start := time.Now()
		fill(wbuf, seq, start.UnixNano())
		err := p.op(ctx, wbuf, rbuf, off)
		end := time.Now()
		if err != nil {
			p.logf("err %d %d %d %s", seq, start.UnixNano(), end.UnixNano(), oneLine(err.Error()))
			// The write may or may not have landed: the slot's content is
			// unknown until it is written again.
			p.last[slot] = math.MaxUint64
			continue
		}
		p.last[slot] = seq
		p.logf("ok %d %d %d", seq, start.UnixNano(), end.UnixNano())
		if end.Sub(start) > p.checkAfter {
			p.check(ctx, seq, rbuf)
		}
	}
}

// op writes one block, reads it back and compares.
func (p *probe) op(ctx context.Context, wbuf, rbuf []byte, off int64) error {
	c, err := p.client(ctx)
	if err != nil {
		return err
	}
	if err := c.WriteAt(wbuf, off, false); err != nil {
		return fmt.Errorf("write at %d: %w", off, err)
	}
	if err := c.ReadAt(rbuf, off); err != nil {
		return fmt.Errorf("read at %d: %w", off, err)
	}
	if !bytes.Equal(wbuf, rbuf) {
		return fmt.Errorf("read at %d returned other data than written (seq %d)", off, binary.BigEndian.Uint64(rbuf))
	}
	return nil
}

// check reads every slot and compares it with its last acknowledged write.
func (p *probe) check(ctx context.Context, seq uint64, rbuf []byte) {
	start := time.Now()
	want := make([]byte, blockSize)
	lost := 0
	var first error
	for slot, s := range p.last {
		if s == 0 || s == math.MaxUint64 {
			continue
		}
		c, err := p.client(ctx)
		if err == nil {
			err = c.ReadAt(rbuf, p.offset+int64(slot)*blockSize)
		}
		if err != nil {
			p.logf("err %d %d %d check read: %s", seq, start.UnixNano(), time.Now().UnixNano(), oneLine(err.Error()))
			return
		}
		if binary.BigEndian.Uint64(rbuf) != s || !bytes.Equal(rbuf, fillFor(want, s, rbuf)) {
			lost++
			if first == nil {
				first = fmt.Errorf("slot %d holds seq %d, want %d", slot, binary.BigEndian.Uint64(rbuf), s)
			}
		}
	}
	if lost == 0 {
		p.logf("check %d %d %d OK 0", seq, start.UnixNano(), time.Now().UnixNano())
	} else {
		p.logf("check %d %d %d LOST %d %s", seq, start.UnixNano(), time.Now().UnixNano(), lost, first)
	}
}

// fill writes the pattern of sequence number seq: seq, the time, then bytes
// derived from both.
func fill(b []byte, seq uint64, ns int64) {
	binary.BigEndian.PutUint64(b[0:], seq)
	binary.BigEndian.PutUint64(b[8:], uint64(ns))
	x := seq*0x9e3779b97f4a7c15 ^ uint64(ns)
	for i := 16; i < len(b); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.BigEndian.PutUint64(b[i:], x)
	}
}

// fillFor rebuilds the expected block of seq, taking the time stamp from
// got (the time is part of the pattern; the sequence number was checked).
func fillFor(want []byte, seq uint64, got []byte) []byte {
	fill(want, seq, int64(binary.BigEndian.Uint64(got[8:])))
	return want
}

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", " ") }

// ---- measure -----------------------------------------------------------------

func measureCmd(args []string) error {
	fs := flag.NewFlagSet("measure", flag.ExitOnError)
	logPath := fs.String("log", "", "the probe's log")
	killNS := fs.Int64("kill-ns", 0, "when the primary was killed (wall-clock ns since the epoch)")
	timeout := fs.Duration("timeout", 60*time.Second, "give up after this long")
	fs.Parse(args)
	if *logPath == "" || *killNS <= 0 {
		return errors.New("measure needs --log and --kill-ns")
	}
	deadline := time.Now().Add(*timeout)
	for {
		b, err := os.ReadFile(*logPath)
		if err != nil {
			return err
		}
		r, done, err := analyse(bytes.NewReader(b), *killNS)
		if err != nil {
			return err
		}
		if done {
			fmt.Printf("failover_ms=%.1f pause_ms=%.1f errors=%d lost=%d\n", r.failoverMS, r.pauseMS, r.errors, r.lost)
			return nil
		}
		if time.Now().After(deadline) {
			fmt.Printf("failover_ms=NaN pause_ms=NaN errors=%d lost=%d\n", r.errors, r.lost)
			return fmt.Errorf("no verified write started after the kill within %v", *timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type result struct {
	failoverMS, pauseMS float64
	errors, lost        int
}

// analyse reads a probe log and measures the failover that began at killNS.
// done is false while no ok operation started at or after killNS (the
// failover is still under way), and until the line after that operation is
// in the log too: it may be the check that a long operation triggers.
func analyse(r io.Reader, killNS int64) (res result, done bool, err error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var lastOKEnd int64 // end of the last ok operation seen
	var maxGap int64
	found := false
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 {
			continue // a line being written
		}
		start, err1 := strconv.ParseInt(f[2], 10, 64)
		end, err2 := strconv.ParseInt(f[3], 10, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		if found {
			// The line after the first verified write.
			if f[0] == "check" && len(f) >= 6 && f[4] == "LOST" {
				n, _ := strconv.Atoi(f[5])
				res.lost += n
			}
			return res, true, nil
		}
		switch f[0] {
		case "ok":
			if end >= killNS && lastOKEnd > 0 {
				maxGap = max(maxGap, end-lastOKEnd)
			}
			if start >= killNS {
				res.failoverMS = float64(end-killNS) / 1e6
				res.pauseMS = float64(maxGap) / 1e6
				found = true
				continue
			}
			lastOKEnd = end
		case "err":
			if end >= killNS {
				res.errors++
			}
		case "check":
			if end >= killNS && len(f) >= 6 && f[4] == "LOST" {
				n, _ := strconv.Atoi(f[5])
				res.lost += n
			}
		}
	}
	return res, false, sc.Err()
}

// ---- timeline ----------------------------------------------------------------

// event is the part of `hacs agent events --json` used here.
type event struct {
	Time     time.Time `json:"time"`
	Node     string    `json:"node"`
	Kind     string    `json:"kind"`
	Resource string    `json:"resource"`
	Message  string    `json:"message"`
}

func timelineCmd(args []string) error {
	fs := flag.NewFlagSet("timeline", flag.ExitOnError)
	path := fs.String("events", "", "hacs agent events --json output")
	killNS := fs.Int64("kill-ns", 0, "when the node was killed (wall-clock ns since the epoch)")
	node := fs.String("node", "", "the killed node")
	volume := fs.String("volume", "", "the volume")
	fs.Parse(args)
	if *path == "" || *killNS <= 0 || *node == "" || *volume == "" {
		return errors.New("timeline needs --events, --kill-ns, --node and --volume")
	}
	b, err := os.ReadFile(*path)
	if err != nil {
		return err
	}
	var evs []event
	if err := json.Unmarshal(b, &evs); err != nil {
		return fmt.Errorf("%s: %w", *path, err)
	}
	t := timeline(evs, time.Unix(0, *killNS), *node, *volume)
	fmt.Printf("detect_ms=%.1f promote_ms=%.1f serving_ms=%.1f\n", t.detectMS, t.promoteMS, t.servingMS)
	return nil
}

type times struct{ detectMS, promoteMS, servingMS float64 }

func timeline(evs []event, kill time.Time, node, volume string) times {
	t := times{math.NaN(), math.NaN(), math.NaN()}
	since := func(e event) float64 { return float64(e.Time.Sub(kill)) / 1e6 }
	first := func(cur float64, e event) float64 {
		if math.IsNaN(cur) || since(e) < cur {
			return since(e)
		}
		return cur
	}
	res := "volume/" + volume
	for _, e := range evs {
		if e.Time.Before(kill) {
			continue
		}
		switch {
		case e.Kind == "node-offline" && strings.Contains(e.Message, node):
			t.detectMS = first(t.detectMS, e)
		case e.Kind == "dc-elected" && e.Node != node:
			// Only when the killed node was the DC; a DC elected later
			// for another reason comes after the offline event anyway.
			t.detectMS = first(t.detectMS, e)
		case e.Kind == "plan-promote" && e.Resource == res:
			t.promoteMS = first(t.promoteMS, e)
		case e.Kind == "volume-serving" && e.Resource == res && e.Node != node:
			t.servingMS = first(t.servingMS, e)
		}
	}
	return t
}

// ---- stats -------------------------------------------------------------------

func statsCmd(args []string) error {
	if len(args) != 1 {
		usage()
	}
	f, err := os.Open(args[0])
	if err != nil {
		return err
	}
	defer f.Close()
	v, err := readNumbers(f)
	if err != nil {
		return err
	}
	if len(v) == 0 {
		return fmt.Errorf("%s: no numbers", args[0])
	}
	s := summarise(v)
	fmt.Printf("n=%d median=%.1f min=%.1f max=%.1f mean=%.1f\n", s.n, s.median, s.min, s.max, s.mean)
	return nil
}

func readNumbers(r io.Reader) ([]float64, error) {
	var v []float64
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		x, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return nil, fmt.Errorf("not a number: %q", f[0])
		}
		v = append(v, x)
	}
	return v, sc.Err()
}

type summary struct {
	n                      int
	median, min, max, mean float64
}

func summarise(v []float64) summary {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	out := summary{n: len(s), min: s[0], max: s[len(s)-1]}
	if len(s)%2 == 1 {
		out.median = s[len(s)/2]
	} else {
		out.median = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	for _, x := range s {
		out.mean += x
	}
	out.mean /= float64(len(s))
	return out
}
