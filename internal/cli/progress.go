package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"
)

// progressBar draws a one-line progress bar on a terminal, redrawn in
// place; Done clears it.
type progressBar struct {
	w     io.Writer
	label string
	start time.Time
	drawn bool
}

func newProgressBar(w io.Writer, label string) *progressBar {
	return &progressBar{w: w, label: label, start: time.Now()}
}

// Set draws done of total bytes.
func (p *progressBar) Set(done, total int64) {
	if total <= 0 {
		return
	}
	done = min(max(done, 0), total)
	const width = 30
	fill := int(int64(width) * done / total)
	line := fmt.Sprintf("%s [%s%s] %3d%% %s / %s", p.label, strings.Repeat("#", fill), strings.Repeat(".", width-fill),
		100*done/total, human(done), human(total))
	if el := time.Since(p.start).Seconds(); el > 0.5 && done > 0 {
		rate := float64(done) / el
		line += fmt.Sprintf("  %s/s", human(int64(rate)))
		if rate > 0 && done < total {
			line += fmt.Sprintf("  ETA %v", time.Duration(float64(total-done)/rate*float64(time.Second)).Round(time.Second))
		}
	}
	fmt.Fprintf(p.w, "\r\x1b[K%s", line)
	p.drawn = true
}

// Done erases the bar.
func (p *progressBar) Done() {
	if p.drawn {
		fmt.Fprint(p.w, "\r\x1b[K")
	}
}

// pollProgress calls get every interval and draws what it returns until
// ctx ends; the returned function stops it and erases the bar.
func pollProgress(ctx context.Context, w io.Writer, label string, interval time.Duration, get func(context.Context) (done, total int64, ok bool)) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	finished := make(chan struct{})
	bar := newProgressBar(w, label)
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
				bar.Set(done, total)
			}
		}
	}()
	return func() {
		cancel()
		<-finished
		bar.Done()
	}
}
