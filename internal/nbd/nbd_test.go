package nbd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"syscall"
	"testing"

	"github.com/hacs/hacs/internal/device"
)

func TestClientServerRoundTrip(t *testing.T) {
	for _, structured := range []bool{true, false} {
		t.Run(fmt.Sprintf("structured=%v", structured), func(t *testing.T) {
			const size = 8 << 20
			_, sock := startServer(t, memExport("vol", size))
			c := dialT(t, sock, ClientOptions{Export: "vol", NoStructured: !structured})
			if c.Size() != size {
				t.Fatalf("size %d, want %d", c.Size(), size)
			}
			info := c.Info()
			if info.Structured != structured || info.BlockStatus != structured {
				t.Fatalf("structured=%v blockstatus=%v", info.Structured, info.BlockStatus)
			}
			if info.MaxPayload != MaxPayload || info.PrefBlock != device.BlockSize || info.MinBlock != 1 {
				t.Fatalf("block sizes %+v", info)
			}
			model := device.NewMemory(size)
			rng := rand.New(rand.NewPCG(1, 2))
			for i := 0; i < 200; i++ {
				off := rng.Int64N(size - 70000)
				n := 1 + rng.IntN(70000)
				switch rng.IntN(4) {
				case 0, 1:
					p := make([]byte, n)
					for j := range p {
						p[j] = byte(rng.IntN(4)) // many zero runs
					}
					mustOK(t, c.WriteAt(p, off, rng.IntN(2) == 0))
					mustOK(t, model.WriteAt(p, off, false))
				case 2:
					mustOK(t, c.Trim(off, int64(n)))
					mustOK(t, model.Trim(off, int64(n)))
				case 3:
					mustOK(t, c.WriteZeroes(off, int64(n), device.ZeroNoHole))
					mustOK(t, model.WriteZeroes(off, int64(n), 0))
				}
			}
			mustOK(t, c.Flush())
			got, want := make([]byte, size), make([]byte, size)
			mustOK(t, c.ReadAt(got, 0))
			mustOK(t, model.ReadAt(want, 0))
			if !bytes.Equal(got, want) {
				t.Fatal("content differs from the model")
			}
			exts, err := c.Extents(0, size)
			mustOK(t, err)
			var total int64
			for _, e := range exts {
				total += e.Length
			}
			if total != size {
				t.Fatalf("extents cover %d bytes, want %d", total, size)
			}
		})
	}
}

func TestSparseReadChunks(t *testing.T) {
	// A read spanning data, a long hole and data comes back as several
	// chunks; the client reassembles it exactly.
	_, sock := startServer(t, memExport("", 4<<20))
	c := dialT(t, sock, ClientOptions{})
	a := bytes.Repeat([]byte{0xaa}, 5000)
	mustOK(t, c.WriteAt(a, 0, false))
	mustOK(t, c.WriteAt(a, 1<<20, false))
	got := make([]byte, 2<<20)
	for i := range got {
		got[i] = 0xff // must be overwritten by the hole
	}
	mustOK(t, c.ReadAt(got, 0))
	want := make([]byte, 2<<20)
	copy(want, a)
	copy(want[1<<20:], a)
	if !bytes.Equal(got, want) {
		t.Fatal("sparse read reassembled wrongly")
	}
	// And through a raw connection: more than one chunk arrives.
	r := dialRaw(t, c.nc.RemoteAddr().String())
	r.transmission("", true)
	r.request(cmdRead, 0, 7, 0, 2<<20, nil)
	chunks := 0
	holes := 0
	for {
		ch := r.chunk()
		chunks++
		if ch.typ == replyTypeOffsetHole {
			holes++
		}
		if ch.flags&replyFlagDone != 0 {
			break
		}
	}
	if chunks < 3 || holes < 1 {
		t.Fatalf("got %d chunks with %d holes, want data/hole/data", chunks, holes)
	}
	// DF forces a single chunk.
	r.request(cmdRead, cmdFlagDF, 8, 0, 2<<20, nil)
	if ch := r.chunk(); ch.flags&replyFlagDone == 0 || ch.typ != replyTypeOffsetData || len(ch.payload) != 8+2<<20 {
		t.Fatalf("DF read: type %d flags %d len %d", ch.typ, ch.flags, len(ch.payload))
	}
}

func TestConcurrentClients(t *testing.T) {
	const size = 16 << 20
	_, sock := startServer(t, memExport("vol", size))
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for cl := 0; cl < 4; cl++ {
		c := dialT(t, sock, ClientOptions{Export: "vol"})
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func(id int) {
				defer wg.Done()
				// Each goroutine owns its own 64 KiB stripes.
				rng := rand.New(rand.NewPCG(uint64(id), 9))
				buf := make([]byte, 4096)
				back := make([]byte, 4096)
				for i := 0; i < 100; i++ {
					stripe := int64(rng.IntN(size/(32*65536)))*32 + int64(id)
					off := stripe*65536 + int64(rng.IntN(16))*4096
					for j := range buf {
						buf[j] = byte(id + i + j)
					}
					if err := c.WriteAt(buf, off, false); err != nil {
						errs <- err
						return
					}
					if err := c.ReadAt(back, off); err != nil {
						errs <- err
						return
					}
					if !bytes.Equal(buf, back) {
						errs <- fmt.Errorf("goroutine %d: read back differs at %d", id, off)
						return
					}
				}
			}(cl*8 + g)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestHandshakeOptions(t *testing.T) {
	_, sock := startServer(t, memExport("a", 1<<20), memExport("b", 2<<20))
	r := dialRaw(t, sock)
	r.greet(clientFixedNewstyle)

	// LIST returns both exports, with descriptions.
	r.opt(optList, nil)
	names := map[string]bool{}
	for {
		typ, data := r.optReply(optList)
		if typ == repAck {
			break
		}
		if typ != repServer {
			t.Fatalf("LIST reply type %#x", typ)
		}
		n := binary.BigEndian.Uint32(data)
		names[string(data[4:4+n])] = true
		if desc := string(data[4+n:]); desc != "test "+string(data[4:4+n]) {
			t.Fatalf("description %q", desc)
		}
	}
	if !names["a"] || !names["b"] {
		t.Fatalf("LIST names %v", names)
	}

	cases := []struct {
		name string
		opt  uint32
		data []byte
		want uint32
	}{
		{"unknown option", 99, []byte("xyz"), repErrUnsup},
		{"starttls without tls", optStartTLS, nil, repErrPolicy},
		{"starttls with data", optStartTLS, []byte{1}, repErrInvalid},
		{"list with data", optList, []byte{1}, repErrInvalid},
		{"extended headers", optExtendedHeaders, nil, repErrUnsup},
		{"meta context before structured", optSetMetaContext, metaData("a", MetaBaseAllocation), repErrInvalid},
		{"info unknown export", optInfo, goData("nope"), repErrUnknown},
		{"info truncated", optInfo, []byte{0, 0, 0, 9, 'a'}, repErrInvalid},
		{"info bad request count", optInfo, append(goData("a")[:5], 0, 3, 0, 1), repErrInvalid},
		{"info name too long", optInfo, binary.BigEndian.AppendUint32(nil, 1<<30), repErrInvalid},
		{"go unknown export", optGo, goData("nope"), repErrUnknown},
		{"oversized option", 99, make([]byte, maxOptionLen+1), repErrTooBig},
	}
	for _, tc := range cases {
		r.opt(tc.opt, tc.data)
		if got := r.finalReply(tc.opt); got != tc.want {
			t.Errorf("%s: reply %#x, want %#x", tc.name, got, tc.want)
		}
	}

	// INFO on a good export returns size and flags, and keeps negotiating.
	r.opt(optInfo, goData("b"))
	var size uint64
	for {
		typ, data := r.optReply(optInfo)
		if typ == repAck {
			break
		}
		if typ == repInfo && binary.BigEndian.Uint16(data) == infoExport {
			size = binary.BigEndian.Uint64(data[2:])
		}
	}
	if size != 2<<20 {
		t.Fatalf("INFO size %d", size)
	}
	// Structured replies twice: the second is refused.
	r.opt(optStructuredReply, nil)
	if typ := r.finalReply(optStructuredReply); typ != repAck {
		t.Fatal("structured refused")
	}
	r.opt(optStructuredReply, nil)
	if typ := r.finalReply(optStructuredReply); typ != repErrInvalid {
		t.Fatalf("second structured: %#x", typ)
	}
	// LIST_META_CONTEXT with no queries lists base:allocation; unknown
	// namespaces are ignored.
	r.opt(optListMetaContext, metaData("a"))
	typ, data := r.optReply(optListMetaContext)
	if typ != repMetaContext || string(data[4:]) != MetaBaseAllocation {
		t.Fatalf("list meta: %#x %q", typ, data)
	}
	if typ := r.finalReply(optListMetaContext); typ != repAck {
		t.Fatal("list meta not acked")
	}
	r.opt(optSetMetaContext, metaData("a", "qemu:dirty-bitmap:x"))
	if typ, _ := r.optReply(optSetMetaContext); typ != repAck {
		t.Fatalf("unknown namespace: %#x", typ)
	}
	// Finally GO works on the same connection.
	r.opt(optGo, goData("a"))
	if typ := r.finalReply(optGo); typ != repAck {
		t.Fatalf("GO after errors: %#x", typ)
	}
	// Block status was set for nothing useful: refused.
	r.request(cmdBlockStatus, 0, 1, 0, 4096, nil)
	if ch := r.chunk(); ch.typ != replyTypeError || binary.BigEndian.Uint32(ch.payload) != errInval {
		t.Fatalf("block status without context: type %d", ch.typ)
	}
}

func TestExportNameAndDefault(t *testing.T) {
	_, sock := startServer(t, memExport("vol", 1<<20))
	// Old-style EXPORT_NAME with zero padding.
	r := dialRaw(t, sock)
	r.greet(clientFixedNewstyle)
	r.opt(optExportName, []byte("vol"))
	b := r.read(134)
	if binary.BigEndian.Uint64(b) != 1<<20 || binary.BigEndian.Uint16(b[8:])&FlagHasFlags == 0 {
		t.Fatalf("EXPORT_NAME reply % x", b[:10])
	}
	r.request(cmdRead, 0, 1, 0, 512, nil)
	if e, ck := r.simpleReply(); e != 0 || ck != 1 {
		t.Fatalf("read: err %d cookie %d", e, ck)
	}
	r.read(512)
	// The empty name reaches the default export.
	c := dialT(t, sock, ClientOptions{Export: ""})
	if c.Size() != 1<<20 {
		t.Fatal("default export not served")
	}
	// An unknown name with EXPORT_NAME is a hard disconnect.
	r2 := dialRaw(t, sock)
	r2.greet(clientFixedNewstyle)
	r2.opt(optExportName, []byte("missing"))
	r2.expectClosed()
}

func TestTransmissionErrors(t *testing.T) {
	ro := memExport("ro", 1<<20)
	ro.ReadOnly = true
	_, sock := startServer(t, memExport("rw", 1<<20), ro)
	type tc struct {
		name    string
		export  string
		typ     uint16
		flags   uint16
		off     uint64
		length  uint32
		payload bool
		want    uint32
	}
	cases := []tc{
		{"read past end", "rw", cmdRead, 0, 1<<20 - 100, 200, false, errInval},
		{"read offset overflow", "rw", cmdRead, 0, ^uint64(0) - 10, 100, false, errInval},
		{"write past end", "rw", cmdWrite, 0, 1<<20 - 100, 200, true, errNoSpc},
		{"trim past end", "rw", cmdTrim, 0, 1 << 20, 1, false, errInval},
		{"zero past end", "rw", cmdWriteZeroes, 0, 1 << 20, 4096, false, errNoSpc},
		{"unknown command", "rw", 42, 0, 0, 0, false, errInval},
		{"bad flag on read", "rw", cmdRead, cmdFlagNoHole, 0, 512, false, errInval},
		{"df without structured", "rw", cmdRead, cmdFlagDF, 0, 512, false, errInval},
		{"unknown flag", "rw", cmdFlush, 1 << 9, 0, 0, false, errInval},
		{"read too big", "rw", cmdRead, 0, 0, MaxPayload + 1, false, errOverflow},
		{"block status without structured", "rw", cmdBlockStatus, 0, 0, 512, false, errInval},
		{"write read-only", "ro", cmdWrite, 0, 0, 512, true, errPerm},
		{"trim read-only", "ro", cmdTrim, 0, 0, 512, false, errPerm},
		{"zero read-only", "ro", cmdWriteZeroes, 0, 0, 512, false, errPerm},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := dialRaw(t, sock)
			r.transmission(c.export, false)
			var payload []byte
			if c.payload {
				payload = bytes.Repeat([]byte{1}, int(c.length))
			}
			r.request(c.typ, c.flags, 5, c.off, c.length, payload)
			if e, ck := r.simpleReply(); e != c.want || ck != 5 {
				t.Fatalf("error %d cookie %d, want error %d", e, ck, c.want)
			}
			// The connection is still in sync and usable.
			r.request(cmdRead, 0, 6, 0, 16, nil)
			if e, ck := r.simpleReply(); e != 0 || ck != 6 {
				t.Fatalf("follow-up read: error %d cookie %d", e, ck)
			}
			r.read(16)
		})
	}
}

func TestOversizedWriteKeepsStream(t *testing.T) {
	_, sock := startServer(t, memExport("rw", 64<<20))
	r := dialRaw(t, sock)
	r.transmission("rw", true)
	r.request(cmdWrite, 0, 1, 0, MaxPayload+4096, make([]byte, MaxPayload+4096))
	ch := r.chunk()
	if ch.typ != replyTypeError || binary.BigEndian.Uint32(ch.payload) != errOverflow || ch.cookie != 1 {
		t.Fatalf("oversized write: type %d cookie %d", ch.typ, ch.cookie)
	}
	if msg := string(ch.payload[6:]); msg == "" {
		t.Fatal("error chunk carries no message")
	}
	r.request(cmdFlush, 0, 2, 0, 0, nil)
	if ch := r.chunk(); ch.typ != replyTypeNone || ch.cookie != 2 {
		t.Fatalf("flush after oversized write: type %d", ch.typ)
	}
}

func TestBadInputDoesNotDisturbOthers(t *testing.T) {
	_, sock := startServer(t, memExport("vol", 1<<20))
	good := dialT(t, sock, ClientOptions{Export: "vol"})
	data := bytes.Repeat([]byte{7}, 4096)
	mustOK(t, good.WriteAt(data, 0, false))

	// Garbage instead of the client flags.
	r := dialRaw(t, sock)
	r.read(18)
	r.write([]byte{0xff, 0xff, 0xff, 0xff})
	r.expectClosed()
	// Garbage option magic.
	r = dialRaw(t, sock)
	r.greet(clientFixedNewstyle)
	r.write(bytes.Repeat([]byte{0x41}, 64))
	r.expectClosed()
	// Bad request magic in transmission.
	r = dialRaw(t, sock)
	r.transmission("vol", false)
	r.write(bytes.Repeat([]byte{0x42}, requestHeaderLen))
	r.expectClosed()
	// A client that vanishes in the middle of a write payload.
	r = dialRaw(t, sock)
	r.transmission("vol", false)
	var h [requestHeaderLen]byte
	request{typ: cmdWrite, cookie: 1, offset: 0, length: 65536}.encode(h[:])
	r.write(append(h[:], make([]byte, 1000)...))
	r.nc.Close()
	// A client that vanishes during the handshake.
	r = dialRaw(t, sock)
	r.read(10)
	r.nc.Close()

	got := make([]byte, 4096)
	mustOK(t, good.ReadAt(got, 0))
	if !bytes.Equal(got, data) {
		t.Fatal("data changed by bad clients")
	}
	// A new client still connects.
	other := dialT(t, sock, ClientOptions{Export: "vol"})
	mustOK(t, other.ReadAt(got, 0))
}

func TestBlockStatus(t *testing.T) {
	_, sock := startServer(t, memExport("vol", 1<<20))
	c := dialT(t, sock, ClientOptions{Export: "vol"})
	mustOK(t, c.WriteAt(make([]byte, 8192), 65536, false))
	exts, err := c.Extents(0, 1<<20)
	mustOK(t, err)
	want := []device.Extent{
		{Length: 65536, Flags: device.ExtentHole | device.ExtentZero},
		{Length: 8192, Flags: 0},
		{Length: 1<<20 - 65536 - 8192, Flags: device.ExtentHole | device.ExtentZero},
	}
	if fmt.Sprint(exts) != fmt.Sprint(want) {
		t.Fatalf("extents %v, want %v", exts, want)
	}
	// REQ_ONE returns exactly one descriptor within the request.
	r := dialRaw(t, c.nc.RemoteAddr().String())
	r.transmission("vol", true)
	r.request(cmdBlockStatus, cmdFlagReqOne, 3, 0, 100000, nil)
	ch := r.chunk()
	if ch.typ != replyTypeBlockStatus || len(ch.payload) != 12 || binary.BigEndian.Uint32(ch.payload[4:]) != 65536 {
		t.Fatalf("REQ_ONE chunk type %d payload % x", ch.typ, ch.payload)
	}
	r.request(cmdBlockStatus, 0, 4, 65536, 100, nil)
	ch = r.chunk()
	if l := binary.BigEndian.Uint32(ch.payload[4:]); l != 100 || len(ch.payload) != 12 {
		t.Fatalf("clipped extent length %d, %d bytes", l, len(ch.payload))
	}
}

func TestFastZeroUnsupported(t *testing.T) {
	// A device that cannot zero fast answers ENOTSUP to FAST_ZERO, and the
	// client sees that errno.
	_, sock := startServer(t, Export{Name: "v", Device: slowZero{device.NewMemory(1 << 20)}})
	c := dialT(t, sock, ClientOptions{Export: "v"})
	err := c.WriteZeroes(0, 4096, device.ZeroFast)
	if !errors.Is(err, syscall.ENOTSUP) {
		t.Fatalf("fast zero: %v", err)
	}
	mustOK(t, c.WriteZeroes(0, 4096, 0))
}

type slowZero struct{ *device.Memory }

func (s slowZero) WriteZeroes(off, n int64, f device.ZeroFlags) error {
	if f&device.ZeroFast != 0 {
		return device.ErrUnsupported
	}
	return s.Memory.WriteZeroes(off, n, f)
}

func TestRemoveExportDisconnects(t *testing.T) {
	srv, sock := startServer(t, memExport("vol", 1<<20))
	c := dialT(t, sock, ClientOptions{Export: "vol"})
	mustOK(t, c.Flush())
	srv.RemoveExport("vol")
	<-c.Done()
	if err := c.Flush(); err == nil {
		t.Fatal("flush succeeded on a removed export")
	}
}

func mustOK(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
