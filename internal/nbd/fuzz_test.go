package nbd

import (
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/device"
)

// fuzzServe feeds input to a fresh server connection as the client's bytes
// and requires the server to finish (not hang, not panic) once the input
// ends.
func fuzzServe(t *testing.T, input []byte) {
	srv := NewServer(slog.New(slog.NewTextHandler(io.Discard, nil)))
	srv.HandshakeTimeout = 2 * time.Second
	ro := memExport("ro", 1<<20)
	ro.ReadOnly = true
	srv.AddExport(memExport("", 1<<20))
	srv.AddExport(ro)
	client, server := net.Pipe()
	srv.ServeConn(server)
	go io.Copy(io.Discard, client) // drain replies
	client.SetWriteDeadline(time.Now().Add(2 * time.Second))
	client.Write(input)
	client.Close()
	done := make(chan struct{})
	go func() { srv.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("server connection did not finish after the client hung up")
	}
}

func optBytes(opt uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, magicOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// handshakePrefix negotiates structured replies, base:allocation and GO.
func handshakePrefix() []byte {
	b := binary.BigEndian.AppendUint32(nil, clientFixedNewstyle|clientNoZeroes)
	b = append(b, optBytes(optStructuredReply, nil)...)
	b = append(b, optBytes(optSetMetaContext, metaData("", MetaBaseAllocation))...)
	return append(b, optBytes(optGo, goData(""))...)
}

func FuzzHandshake(f *testing.F) {
	flags := binary.BigEndian.AppendUint32(nil, clientFixedNewstyle)
	f.Add(handshakePrefix())
	f.Add(append(flags, optBytes(optList, nil)...))
	f.Add(append(flags, optBytes(optInfo, append(goData("ro"), 0, 1, 0, 3))...))
	f.Add(append(flags, optBytes(optListMetaContext, metaData("", "base:"))...))
	f.Add(append(flags, optBytes(optExportName, []byte("ro"))...))
	f.Add(append(flags, optBytes(optStartTLS, nil)...))
	f.Add(append(flags, optBytes(optAbort, nil)...))
	f.Add([]byte{0, 0, 0, 3, 0x49, 0x48})
	f.Fuzz(func(t *testing.T, input []byte) {
		fuzzServe(t, input)
	})
}

func FuzzTransmission(f *testing.F) {
	req := func(typ, flags uint16, off uint64, length uint32, payload []byte) []byte {
		var h [requestHeaderLen]byte
		request{typ: typ, flags: flags, cookie: 1, offset: off, length: length}.encode(h[:])
		return append(h[:], payload...)
	}
	f.Add(req(cmdRead, 0, 0, 4096, nil))
	f.Add(req(cmdWrite, cmdFlagFUA, 100, 8, []byte("abcdefgh")))
	f.Add(req(cmdBlockStatus, cmdFlagReqOne, 0, 1<<20, nil))
	f.Add(req(cmdWriteZeroes, cmdFlagNoHole|cmdFlagFastZero, 0, 65536, nil))
	f.Add(req(cmdTrim, 0, 4096, 4096, nil))
	f.Add(req(cmdRead, cmdFlagDF, 0, 1<<20, nil))
	f.Add(req(cmdWrite, 0, 1<<20-4, 8, []byte("12345678")))
	f.Add(req(cmdDisc, 0, 0, 0, nil))
	f.Add(req(cmdFlush, 0, 0, 0, nil))
	prefix := handshakePrefix()
	f.Fuzz(func(t *testing.T, input []byte) {
		fuzzServe(t, append(prefix[:len(prefix):len(prefix)], input...))
	})
}

// The memory devices used above must stay tiny for fuzzing speed.
var _ device.Device = (*device.Memory)(nil)
