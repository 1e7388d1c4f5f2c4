package nbd

import (
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/tlspsk"
)

// TestStartTLSForgetsPlaintextOptions: what a client negotiated in
// plaintext (structured replies) is forgotten after STARTTLS (the NBD
// protocol requires it: a man in the middle may have sent it), so a meta
// context inside TLS needs structured replies negotiated again there.
func TestStartTLSForgetsPlaintextOptions(t *testing.T) {
	sock, _ := startPSKServer(t, nil, pskKeys, TLSAllowed, memExport("vol", 1<<20))
	nc, err := net.Dial("unix", sock)
	mustOK(t, err)
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	hello := make([]byte, 18)
	_, err = io.ReadFull(nc, hello)
	mustOK(t, err)
	reply := func(rw io.ReadWriter) (uint32, uint32) {
		t.Helper()
		var h [20]byte
		_, err := io.ReadFull(rw, h[:])
		mustOK(t, err)
		if binary.BigEndian.Uint64(h[:]) != magicOptReply {
			t.Fatalf("bad reply magic %x", h[:8])
		}
		_, err = io.CopyN(io.Discard, rw, int64(binary.BigEndian.Uint32(h[16:])))
		mustOK(t, err)
		return binary.BigEndian.Uint32(h[8:]), binary.BigEndian.Uint32(h[12:])
	}
	nc.Write(binary.BigEndian.AppendUint32(nil, clientFixedNewstyle|clientNoZeroes))
	nc.Write(optBytes(optStructuredReply, nil))
	if _, typ := reply(nc); typ != repAck {
		t.Fatalf("plaintext STRUCTURED_REPLY: reply %#x", typ)
	}
	nc.Write(optBytes(optStartTLS, nil))
	if _, typ := reply(nc); typ != repAck {
		t.Fatalf("STARTTLS: reply %#x", typ)
	}
	tc := tlspsk.Client(nc, pskClient("alice", pskAlice))
	mustOK(t, tc.Handshake())
	tc.Write(optBytes(optSetMetaContext, metaData("vol", MetaBaseAllocation)))
	if _, typ := reply(tc); typ != repErrInvalid {
		t.Fatalf("SET_META_CONTEXT inside TLS after a plaintext STRUCTURED_REPLY: reply %#x, want NBD_REP_ERR_INVALID (structured replies forgotten)", typ)
	}
	// negotiated again inside TLS, it works
	tc.Write(optBytes(optStructuredReply, nil))
	if _, typ := reply(tc); typ != repAck {
		t.Fatalf("STRUCTURED_REPLY inside TLS: reply %#x", typ)
	}
	tc.Write(optBytes(optSetMetaContext, metaData("vol", MetaBaseAllocation)))
	if _, typ := reply(tc); typ != repMetaContext {
		t.Fatalf("SET_META_CONTEXT inside TLS: reply %#x", typ)
	}
}
