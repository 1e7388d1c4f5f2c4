package cluster

import (
	"context"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// proposalDropped is raft's ErrProposalDropped as etcd returns it (a gRPC
// error of code Unknown): raft refused the proposal outright, while it had
// no leader or while its leadership moved (the DC moves it off the nodes
// that serve volumes). Nothing was appended to the log, so the write can
// be sent again as it was.
const proposalDropped = "raft proposal dropped"

// retryKV sends a write that raft dropped again, every 50 ms until its
// context ends, so that a leadership move is not an error for whoever
// wrote (an API request, a mirror's state update). Reads are not
// proposals and pass through.
type retryKV struct{ clientv3.KV }

func isProposalDropped(err error) bool {
	return err != nil && strings.Contains(err.Error(), proposalDropped)
}

func retryDropped[T any](ctx context.Context, op func() (T, error)) (T, error) {
	for {
		r, err := op()
		if !isProposalDropped(err) {
			return r, err
		}
		select {
		case <-ctx.Done():
			return r, err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (kv retryKV) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	return retryDropped(ctx, func() (*clientv3.PutResponse, error) { return kv.KV.Put(ctx, key, val, opts...) })
}

func (kv retryKV) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	return retryDropped(ctx, func() (*clientv3.DeleteResponse, error) { return kv.KV.Delete(ctx, key, opts...) })
}

func (kv retryKV) Do(ctx context.Context, op clientv3.Op) (clientv3.OpResponse, error) {
	return retryDropped(ctx, func() (clientv3.OpResponse, error) { return kv.KV.Do(ctx, op) })
}

func (kv retryKV) Txn(ctx context.Context) clientv3.Txn { return &retryTxn{kv: kv.KV, ctx: ctx} }

// retryTxn builds a transaction and commits it with retryDropped.
type retryTxn struct {
	kv               clientv3.KV
	ctx              context.Context
	cmps             []clientv3.Cmp
	thenOps, elseOps []clientv3.Op
}

func (t *retryTxn) If(cs ...clientv3.Cmp) clientv3.Txn {
	t.cmps = append(t.cmps, cs...)
	return t
}

func (t *retryTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	t.thenOps = append(t.thenOps, ops...)
	return t
}

func (t *retryTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	t.elseOps = append(t.elseOps, ops...)
	return t
}

func (t *retryTxn) Commit() (*clientv3.TxnResponse, error) {
	return retryDropped(t.ctx, func() (*clientv3.TxnResponse, error) {
		return t.kv.Txn(t.ctx).If(t.cmps...).Then(t.thenOps...).Else(t.elseOps...).Commit()
	})
}
