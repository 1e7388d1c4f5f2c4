package cluster

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// droppingKV answers the first drops writes as etcd does while raft has no
// leader or moves it, then passes them on.
type droppingKV struct {
	clientv3.KV
	drops, calls int
}

func (kv *droppingKV) Txn(ctx context.Context) clientv3.Txn {
	kv.calls++
	if kv.calls <= kv.drops {
		return failingTxn{}
	}
	return kv.KV.Txn(ctx)
}

type failingTxn struct{}

func (t failingTxn) If(...clientv3.Cmp) clientv3.Txn  { return t }
func (t failingTxn) Then(...clientv3.Op) clientv3.Txn { return t }
func (t failingTxn) Else(...clientv3.Op) clientv3.Txn { return t }
func (t failingTxn) Commit() (*clientv3.TxnResponse, error) {
	return nil, status.Error(codes.Unknown, "raft proposal dropped")
}

// TestWritesDroppedByRaftAreSentAgain: a transaction refused with "raft
// proposal dropped" (the DC moving the raft leadership) is committed on a
// later attempt instead of failing its caller; other errors and the
// context's end still fail it.
func TestWritesDroppedByRaftAreSentAgain(t *testing.T) {
	_, cli := startTestEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d := &droppingKV{KV: cli.KV, drops: 3}
	kv := retryKV{d}
	resp, err := kv.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision("k"), "=", 0)).Then(clientv3.OpPut("k", "v")).Commit()
	if err != nil || !resp.Succeeded || d.calls != 4 {
		t.Fatalf("commit: %v %+v after %d attempts, want success at the 4th", err, resp, d.calls)
	}
	if g, err := cli.Get(ctx, "k"); err != nil || len(g.Kvs) != 1 || string(g.Kvs[0].Value) != "v" {
		t.Fatalf("stored: %+v %v", g, err)
	}
	// a context that ends stops the retries with the error
	d = &droppingKV{KV: cli.KV, drops: 1 << 30}
	short, cancel2 := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel2()
	if _, err := (retryKV{d}).Txn(short).Then(clientv3.OpPut("k2", "v")).Commit(); !isProposalDropped(err) || d.calls < 2 {
		t.Fatalf("with the context ended: %v after %d attempts", err, d.calls)
	}
	// other errors are not retried
	if isProposalDropped(errors.New("etcdserver: request timed out")) {
		t.Fatal("a timeout taken for a dropped proposal")
	}
}
