package cluster

import (
	"context"
	"log/slog"
	"maps"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// KV is one key of a Cache snapshot. Value must not be modified.
type KV struct {
	Value     []byte
	CreateRev int64
	ModRev    int64
	Lease     int64
}

// Snapshot is a consistent copy of a prefix at revision Rev.
type Snapshot struct {
	Rev int64
	KVs map[string]KV
	// Synced is false until the first full read succeeded.
	Synced bool
	// Stale is set while the watch is broken (typically: this node cannot
	// reach a quorum); the snapshot may then be outdated.
	Stale bool
}

// Cache keeps a local copy of every key under a prefix: one read, then a
// watch from the next revision, re-reading after a compaction or a broken
// watch. It is the level-triggered building block for controllers: take
// Snapshot(), act on it, then wait on the channel it returned.
type Cache struct {
	cli    *clientv3.Client
	prefix string
	log    *slog.Logger

	mu      sync.Mutex
	snap    Snapshot
	changed chan struct{}
	done    chan struct{}
}

// NewCache starts watching prefix; the cache stops when ctx is done.
func NewCache(ctx context.Context, cli *clientv3.Client, prefix string, log *slog.Logger) *Cache {
	if log == nil {
		log = slog.Default()
	}
	c := &Cache{
		cli:     cli,
		prefix:  prefix,
		log:     log,
		snap:    Snapshot{KVs: map[string]KV{}},
		changed: make(chan struct{}),
		done:    make(chan struct{}),
	}
	go c.run(ctx)
	return c
}

// Snapshot returns the current copy and a channel closed at the next change.
// The snapshot's map is shared: do not modify it.
func (c *Cache) Snapshot() (Snapshot, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// The map is never modified once handed out (copy on write).
	return c.snap, c.changed
}

// Changed returns a channel closed at the next change.
func (c *Cache) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

// WaitSynced waits for the first full read, or for the cache to reach at
// least revision rev when rev > 0.
func (c *Cache) WaitSynced(ctx context.Context, rev int64) error {
	for {
		c.mu.Lock()
		ok := c.snap.Synced && !c.snap.Stale && c.snap.Rev >= rev
		ch := c.changed
		c.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-c.done:
			return context.Canceled
		}
	}
}

// Done is closed when the cache has stopped.
func (c *Cache) Done() <-chan struct{} { return c.done }

func (c *Cache) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *Cache) setStale() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.snap.Stale {
		c.snap.Stale = true
		c.notifyLocked()
	}
}

func (c *Cache) run(ctx context.Context) {
	defer close(c.done)
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		snap, err := ReadSnapshot(ctx, c.cli, c.prefix)
		if err != nil {
			c.setStale()
			c.log.Debug("cache: read failed", "prefix", c.prefix, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 2*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		c.mu.Lock()
		c.snap = snap
		c.notifyLocked()
		c.mu.Unlock()
		c.watch(ctx, snap.Rev)
		c.setStale()
	}
}

// ReadSnapshot reads every key under prefix straight from the store (a
// linearizable read, not a cache), with a 5 s limit.
func ReadSnapshot(ctx context.Context, cli *clientv3.Client, prefix string) (Snapshot, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := cli.Get(cctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return Snapshot{}, err
	}
	kvs := make(map[string]KV, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		kvs[string(kv.Key)] = toKV(kv)
	}
	return Snapshot{Rev: resp.Header.Revision, KVs: kvs, Synced: true}, nil
}

func toKV(kv *mvccpb.KeyValue) KV {
	return KV{Value: kv.Value, CreateRev: kv.CreateRevision, ModRev: kv.ModRevision, Lease: kv.Lease}
}

// watch applies changes until the watch breaks.
func (c *Cache) watch(ctx context.Context, rev int64) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := c.cli.Watch(wctx, c.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithProgressNotify())
	for wr := range wch {
		if err := wr.Err(); err != nil {
			c.log.Debug("cache: watch broken", "prefix", c.prefix, "err", err)
			return
		}
		c.mu.Lock()
		kvs := c.snap.KVs
		if len(wr.Events) > 0 {
			// copy on write: snapshots handed out share the old map
			kvs = maps.Clone(kvs)
		}
		for _, ev := range wr.Events {
			k := string(ev.Kv.Key)
			if ev.Type == clientv3.EventTypeDelete {
				delete(kvs, k)
			} else {
				kvs[k] = toKV(ev.Kv)
			}
		}
		changed := len(wr.Events) > 0 || c.snap.Stale
		c.snap.KVs = kvs
		c.snap.Stale = false
		if wr.Header.Revision > c.snap.Rev {
			c.snap.Rev = wr.Header.Revision
			changed = true
		}
		if changed {
			c.notifyLocked()
		}
		c.mu.Unlock()
	}
}
