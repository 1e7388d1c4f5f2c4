package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"
)

// Progress of long work (verify, resync): on a terminal, a one-line bar
// redrawn in place; otherwise plain lines, one per 10 % step (and at least
// every 30 s while it moves), so that logs stay readable. Other commands
// use it as:
//
//	p := newProgress(cmd.ErrOrStderr(), "clone vm1", isTerminal(cmd.ErrOrStderr()))
//	p.Set(done, total) // as often as wanted
//	p.Done()
//
// or pollProgress to ask an API every interval.
type progress interface {
	// Set reports done of total bytes.
	Set(done, total int64)
	// Done ends the report (a bar is erased).
	Done()
}

// newProgress returns a bar when tty is set, else plain lines.
func newProgress(w io.Writer, label string, tty bool) progress {
	if tty {
		return newProgressBar(w, label)
	}
	return &lineProgress{w: w, label: label, lastStep: -1, every: 30 * time.Second, now: time.Now}
}

// barWidth is the number of cells of a bar.
const barWidth = 30

// renderBar is the text of a bar: label, cells, percent, bytes, and after
// half a second the rate and the time left.
func renderBar(label string, done, total int64, elapsed time.Duration) string {
	done = min(max(done, 0), total)
	fill := int(int64(barWidth) * done / total)
	line := fmt.Sprintf("%s [%s%s] %3d%% %s / %s", label, strings.Repeat("#", fill), strings.Repeat(".", barWidth-fill),
		100*done/total, human(done), human(total))
	if el := elapsed.Seconds(); el > 0.5 && done > 0 {
		rate := float64(done) / el
		line += fmt.Sprintf("  %s/s", human(int64(rate)))
		if done < total {
			line += fmt.Sprintf("  ETA %v", time.Duration(float64(total-done)/rate*float64(time.Second)).Round(time.Second))
		}
	}
	return line
}

// progressBar draws a one-line progress bar on a terminal, redrawn in
// place; Done clears it.
type progressBar struct {
	w     io.Writer
	label string
	start time.Time
	now   func() time.Time
	drawn bool
}

func newProgressBar(w io.Writer, label string) *progressBar {
	return &progressBar{w: w, label: label, start: time.Now(), now: time.Now}
}

// Set draws done of total bytes.
func (p *progressBar) Set(done, total int64) {
	if total <= 0 {
		return
	}
	fmt.Fprintf(p.w, "\r\x1b[K%s", renderBar(p.label, done, total, p.now().Sub(p.start)))
	p.drawn = true
}

// Done erases the bar.
func (p *progressBar) Done() {
	if p.drawn {
		fmt.Fprint(p.w, "\r\x1b[K")
	}
}

// lineProgress prints a line at each new 10 % step, or when the work moved
// and the last line is older than every.
type lineProgress struct {
	w        io.Writer
	label    string
	lastStep int64
	lastDone int64
	lastAt   time.Time
	every    time.Duration
	now      func() time.Time
}

func (p *lineProgress) Set(done, total int64) {
	if total <= 0 {
		return
	}
	done = min(max(done, 0), total)
	step := 10 * done / total
	now := p.now()
	if step == p.lastStep && (done == p.lastDone || now.Sub(p.lastAt) < p.every) {
		return
	}
	p.lastStep, p.lastDone, p.lastAt = step, done, now
	fmt.Fprintf(p.w, "%s: %d%% %s / %s\n", p.label, 100*done/total, human(done), human(total))
}

func (p *lineProgress) Done() {}

// pollProgress calls get every interval and reports what it returns until
// the returned function is called; that stops it and ends the report.
func pollProgress(ctx context.Context, p progress, interval time.Duration, get func(context.Context) (done, total int64, ok bool)) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			gctx, gcancel := context.WithTimeout(ctx, 5*time.Second)
			done, total, ok := get(gctx)
			gcancel()
			if ok && ctx.Err() == nil {
				p.Set(done, total)
			}
		}
	}()
	return func() {
		cancel()
		<-finished
		p.Done()
	}
}
