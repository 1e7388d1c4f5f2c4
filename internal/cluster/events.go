package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Event is one entry of the cluster event log: append-only keys under
// /hacs/events/, ordered by time (the writer's clock).
type Event struct {
	Time     time.Time         `json:"time"`
	Node     string            `json:"node"`
	Kind     string            `json:"kind"`
	Resource string            `json:"resource,omitempty"`
	Message  string            `json:"message"`
	Fields   map[string]string `json:"fields,omitempty"`
	// Key and Rev are filled when an event is read back.
	Key string `json:"key,omitempty"`
	Rev int64  `json:"rev,omitempty"`
	// wkey is the key an event being written was first tried at
	// (appendEvents).
	wkey string
}

// Event kinds written by this package. Other layers add their own (such as
// "volume-failover"); kinds are short, lower-case, dash-separated.
const (
	EventClusterCreated  = "cluster-created"
	EventNodeJoined      = "node-joined"
	EventNodeStarted     = "node-started"
	EventNodeStopped     = "node-stopped"
	EventNodeOnline      = "node-online"
	EventNodeOffline     = "node-offline"
	EventNodeRemoved     = "node-removed"
	EventNodeStandby     = "node-standby"
	EventNodeActive      = "node-active"
	EventServingLost     = "serving-lost"
	EventServingRegained = "serving-regained"
	EventLeaseExpired    = "lease-expired"
	EventDCElected       = "dc-elected"
	EventDCLost          = "dc-lost"
)

// DefaultEventRetention is how many events the DC keeps.
const DefaultEventRetention = 10000

func eventKey(ev Event) string {
	return fmt.Sprintf("%s%020d-%s-%s", PrefixEvents, ev.Time.UnixNano(), ev.Node, randomHex(3))
}

// AppendEvent writes ev to the event log (Time defaults to now).
func AppendEvent(ctx context.Context, cli *clientv3.Client, ev Event) error {
	op, err := eventPut(ev)
	if err != nil {
		return err
	}
	_, err = cli.Do(ctx, op)
	return err
}

// eventPut stamps ev (Time defaults to now, in UTC; Key and Rev are the
// store's) and returns the write that appends it.
func eventPut(ev Event) (clientv3.Op, error) {
	op, _, err := eventPutKey(ev, "")
	return op, err
}

// eventPutKey is eventPut at key (a new key if "") and returns the key.
func eventPutKey(ev Event, key string) (clientv3.Op, string, error) {
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	ev.Time = ev.Time.UTC()
	ev.Key, ev.Rev, ev.wkey = "", 0, ""
	if key == "" {
		key = eventKey(ev)
	}
	b, err := json.Marshal(ev)
	if err != nil {
		return clientv3.Op{}, "", err
	}
	return clientv3.OpPut(key, string(b)), key, nil
}

// maxEventBatch is the most events written in one transaction (etcd
// allows 128 operations per transaction by default).
const maxEventBatch = 64

// appendEvents writes events in one transaction: a node emitting many
// (a thousand volumes starting) keeps up with one round trip per batch.
// Each event's key is chosen at its first attempt (kept in wkey) and each
// event is written only if its key does not exist yet (one nested
// transaction per event): a batch whose write timed out after the store
// took it is not written twice when it is tried again, and the events
// added to it since are written (a condition on the whole batch would
// skip them too).
func appendEvents(ctx context.Context, cli *clientv3.Client, evs []Event) error {
	ops := make([]clientv3.Op, 0, len(evs))
	for i := range evs {
		if evs[i].Time.IsZero() {
			evs[i].Time = time.Now()
		}
		op, key, err := eventPutKey(evs[i], evs[i].wkey)
		if err != nil {
			return err
		}
		evs[i].wkey = key
		ops = append(ops, clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", 0)}, []clientv3.Op{op}, nil))
	}
	_, err := cli.Txn(ctx).Then(ops...).Commit()
	return err
}

// EventFilter selects events; zero fields match everything.
type EventFilter struct {
	Since    time.Time
	Node     string
	Kind     string
	Resource string
	// Limit keeps the newest Limit matching events (0: all).
	Limit int
}

func (f EventFilter) match(ev Event) bool {
	return (f.Node == "" || ev.Node == f.Node) && (f.Kind == "" || ev.Kind == f.Kind) &&
		(f.Resource == "" || ev.Resource == f.Resource) && (f.Since.IsZero() || !ev.Time.Before(f.Since))
}

func decodeEvent(key, value []byte, rev int64) (Event, bool) {
	var ev Event
	if json.Unmarshal(value, &ev) != nil {
		return Event{}, false
	}
	ev.Key, ev.Rev = string(key), rev
	return ev, true
}

// ListEvents returns the matching events, oldest first, and the revision
// they were read at (to Follow from).
func ListEvents(ctx context.Context, cli *clientv3.Client, f EventFilter) ([]Event, int64, error) {
	start := PrefixEvents
	if !f.Since.IsZero() {
		start = fmt.Sprintf("%s%020d", PrefixEvents, f.Since.UnixNano())
	}
	end := clientv3.GetPrefixRangeEnd(PrefixEvents)
	var out []Event
	var rev int64
	// page backwards from the newest, so that Limit reads little
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(500)}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := cli.Get(ctx, start, opts...)
		if err != nil {
			return nil, 0, err
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			if ev, ok := decodeEvent(kv.Key, kv.Value, kv.ModRevision); ok && f.match(ev) {
				out = append(out, ev)
			}
		}
		if f.Limit > 0 && len(out) >= f.Limit {
			out = out[:f.Limit]
			break
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		end = string(resp.Kvs[len(resp.Kvs)-1].Key)
	}
	slices.Reverse(out)
	return out, rev, nil
}

// FollowEvents calls fn for every matching event appended after revision
// rev (from ListEvents), until ctx is done or the watch fails (then it
// returns the error; a compaction means events were missed).
func FollowEvents(ctx context.Context, cli *clientv3.Client, rev int64, f EventFilter, fn func(Event)) error {
	wch := cli.Watch(clientv3.WithRequireLeader(ctx), PrefixEvents, clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithFilterDelete())
	for wr := range wch {
		if err := wr.Err(); err != nil {
			return err
		}
		for _, e := range wr.Events {
			if ev, ok := decodeEvent(e.Kv.Key, e.Kv.Value, e.Kv.ModRevision); ok && f.match(ev) {
				fn(ev)
			}
		}
	}
	return ctx.Err()
}

// TrimEvents deletes the oldest events beyond keep and returns how many it
// deleted.
func TrimEvents(ctx context.Context, cli *clientv3.Client, keep int) (int64, error) {
	resp, err := cli.Get(ctx, PrefixEvents, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, err
	}
	excess := resp.Count - int64(keep)
	if excess <= 0 {
		return 0, nil
	}
	// the key of the first event to keep bounds the range to delete
	kresp, err := cli.Get(ctx, PrefixEvents, clientv3.WithPrefix(), clientv3.WithKeysOnly(),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend), clientv3.WithLimit(excess+1), clientv3.WithRev(resp.Header.Revision))
	if err != nil {
		return 0, err
	}
	if int64(len(kresp.Kvs)) <= excess {
		return 0, nil
	}
	firstKept := string(kresp.Kvs[excess].Key)
	dresp, err := cli.Delete(ctx, PrefixEvents, clientv3.WithRange(firstKept))
	if err != nil {
		return 0, err
	}
	return dresp.Deleted, nil
}
