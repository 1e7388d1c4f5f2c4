package cli

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/hacs/hacs/internal/tlspsk"
)

// pskCheckEvery is how often a server's pre-shared key file is checked
// for changes.
const pskCheckEvery = 2 * time.Second

// pskReloader re-reads a pre-shared key file while a server runs: at once
// on SIGHUP, and when the file changes (checked every interval; re-read
// once the change has held still for one check, so that a file being
// written is not read half-way). A file that does not parse is refused,
// logged, and the keys in force stay.
type pskReloader struct {
	path     string
	apply    func(tlspsk.Keys) (cut int, err error)
	log      *slog.Logger
	interval time.Duration

	keys          tlspsk.Keys // in force
	seen, loaded  fileStamp   // at the last check, at the last read
	statErrLogged bool
}

// fileStamp tells whether a file changed: its inode (a file replaced by
// a rename), size and modification time.
type fileStamp struct {
	ino   uint64
	size  int64
	mtime time.Time
}

func stampOf(path string) (fileStamp, error) {
	st, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	s := fileStamp{size: st.Size(), mtime: st.ModTime()}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		s.ino = sys.Ino
	}
	return s, nil
}

func newPSKReloader(path string, keys tlspsk.Keys, apply func(tlspsk.Keys) (int, error), log *slog.Logger) *pskReloader {
	r := &pskReloader{path: path, keys: keys, apply: apply, log: log, interval: pskCheckEvery}
	r.loaded, _ = stampOf(path)
	r.seen = r.loaded
	return r
}

// start reloads the file on SIGHUP and when it changes, until ctx ends.
func (r *pskReloader) start(ctx context.Context) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer signal.Stop(hup)
		r.run(ctx, hup)
	}()
}

func (r *pskReloader) run(ctx context.Context, hup <-chan os.Signal) {
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			r.reload("SIGHUP")
		case <-t.C:
			r.check()
		}
	}
}

// check reloads the file when it changed since the last read and has not
// changed since the last check.
func (r *pskReloader) check() {
	st, err := stampOf(r.path)
	if err != nil {
		if !r.statErrLogged {
			r.log.Error("pre-shared key file: cannot check it for changes; the keys in force stay", "file", r.path, "err", err)
			r.statErrLogged = true
		}
		return
	}
	r.statErrLogged = false
	prev := r.seen
	r.seen = st
	if st == r.loaded || st != prev {
		return // unchanged, or still changing
	}
	r.reload("the file changed")
}

// reload reads the file and puts its keys in force, or leaves the keys in
// force when it does not parse.
func (r *pskReloader) reload(trigger string) error {
	if st, err := stampOf(r.path); err == nil {
		r.loaded, r.seen = st, st
	}
	keys, err := tlspsk.LoadKeys(r.path)
	if err != nil {
		r.log.Error("pre-shared key file NOT reloaded: it is refused, the keys in force stay", "file", r.path, "trigger", trigger, "err", err)
		return err
	}
	added, removed, changed := diffKeys(r.keys, keys)
	if len(added)+len(removed)+len(changed) == 0 {
		r.log.Info("pre-shared key file re-read: no change", "file", r.path, "trigger", trigger, "identities", len(keys))
		return nil
	}
	cut, err := r.apply(keys)
	if err != nil {
		r.log.Error("pre-shared key file NOT reloaded: the keys in force stay", "file", r.path, "trigger", trigger, "err", err)
		return err
	}
	r.keys = keys
	r.log.Info("pre-shared key file reloaded", "file", r.path, "trigger", trigger, "identities", len(keys),
		"added", strings.Join(added, ","), "removed", strings.Join(removed, ","), "key_changed", strings.Join(changed, ","), "connections_cut", cut)
	return nil
}

// diffKeys names the identities new has and old has not, those old has
// and new has not, and those whose key changed, each sorted.
func diffKeys(old, new tlspsk.Keys) (added, removed, changed []string) {
	for id, k := range new {
		if ok, found := old[id]; !found {
			added = append(added, id)
		} else if !bytes.Equal(ok, k) {
			changed = append(changed, id)
		}
	}
	for id := range old {
		if _, found := new[id]; !found {
			removed = append(removed, id)
		}
	}
	slices.Sort(added)
	slices.Sort(removed)
	slices.Sort(changed)
	return added, removed, changed
}
