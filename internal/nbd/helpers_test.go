package nbd

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/device"
)

// startServer serves the exports on a Unix socket and returns its path.
func startServer(t testing.TB, exports ...Export) (*Server, string) {
	t.Helper()
	srv := NewServer(slog.New(slog.NewTextHandler(io.Discard, nil)))
	srv.HandshakeTimeout = 5 * time.Second
	return srv, serveUnix(t, srv, exports...)
}

// startLoggedServer is startServer with the server's debug log in the
// returned buffer; configure, if set, sets the server up before it serves.
func startLoggedServer(t testing.TB, configure func(*Server), exports ...Export) (*Server, string, *syncBuf) {
	t.Helper()
	logs := &syncBuf{}
	srv := NewServer(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	srv.HandshakeTimeout = 5 * time.Second
	if configure != nil {
		configure(srv)
	}
	return srv, serveUnix(t, srv, exports...), logs
}

// serveUnix adds the exports to srv and serves them on a Unix socket until
// the test ends; it returns the socket's path.
func serveUnix(t testing.TB, srv *Server, exports ...Export) string {
	t.Helper()
	for _, e := range exports {
		mustOK(t, srv.AddExport(e))
	}
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	ln, err := net.Listen("unix", sock)
	mustOK(t, err)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func dialT(t testing.TB, sock string, opts ClientOptions) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, "unix", sock, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// raw is a hand-driven protocol connection for bad-input tests.
type raw struct {
	t  testing.TB
	nc net.Conn
}

func dialRaw(t testing.TB, sock string) *raw {
	t.Helper()
	nc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { nc.Close() })
	return &raw{t: t, nc: nc}
}

func (r *raw) write(b []byte) {
	r.t.Helper()
	if _, err := r.nc.Write(b); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

func (r *raw) read(n int) []byte {
	r.t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(r.nc, b); err != nil {
		r.t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

// greet reads the server greeting and sends client flags.
func (r *raw) greet(flags uint32) {
	r.t.Helper()
	g := r.read(18)
	if binary.BigEndian.Uint64(g) != magicNBD || binary.BigEndian.Uint64(g[8:]) != magicOpt {
		r.t.Fatalf("bad greeting % x", g)
	}
	r.write(binary.BigEndian.AppendUint32(nil, flags))
}

func (r *raw) opt(opt uint32, data []byte) {
	b := binary.BigEndian.AppendUint64(nil, magicOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	r.write(append(b, data...))
}

func (r *raw) optReply(opt uint32) (uint32, []byte) {
	r.t.Helper()
	h := r.read(20)
	if binary.BigEndian.Uint64(h) != magicOptReply {
		r.t.Fatalf("bad option reply magic % x", h)
	}
	if got := binary.BigEndian.Uint32(h[8:]); got != opt {
		r.t.Fatalf("reply for option %d, want %d", got, opt)
	}
	return binary.BigEndian.Uint32(h[12:]), r.read(int(binary.BigEndian.Uint32(h[16:])))
}

// finalReply reads option replies until a final one (ACK or error).
func (r *raw) finalReply(opt uint32) uint32 {
	for {
		typ, _ := r.optReply(opt)
		if typ == repAck || typ&(1<<31) != 0 {
			return typ
		}
	}
}

func goData(name string) []byte {
	d := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	d = append(d, name...)
	return binary.BigEndian.AppendUint16(d, 0)
}

func metaData(name string, queries ...string) []byte {
	d := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	d = append(d, name...)
	d = binary.BigEndian.AppendUint32(d, uint32(len(queries)))
	for _, q := range queries {
		d = binary.BigEndian.AppendUint32(d, uint32(len(q)))
		d = append(d, q...)
	}
	return d
}

// transmission negotiates (optionally structured replies and
// base:allocation) and enters the transmission phase on export name.
func (r *raw) transmission(name string, structured bool) {
	r.t.Helper()
	r.greet(clientFixedNewstyle | clientNoZeroes)
	if structured {
		r.opt(optStructuredReply, nil)
		if typ := r.finalReply(optStructuredReply); typ != repAck {
			r.t.Fatalf("structured reply refused: %#x", typ)
		}
		r.opt(optSetMetaContext, metaData(name, MetaBaseAllocation))
		if typ := r.finalReply(optSetMetaContext); typ != repAck {
			r.t.Fatalf("meta context refused: %#x", typ)
		}
	}
	r.opt(optGo, goData(name))
	if typ := r.finalReply(optGo); typ != repAck {
		r.t.Fatalf("GO refused: %#x", typ)
	}
}

func (r *raw) request(typ, flags uint16, cookie, off uint64, length uint32, payload []byte) {
	var h [requestHeaderLen]byte
	request{flags: flags, typ: typ, cookie: cookie, offset: off, length: length}.encode(h[:])
	r.write(append(h[:], payload...))
}

// simpleReply reads a simple reply header and returns error and cookie.
func (r *raw) simpleReply() (uint32, uint64) {
	r.t.Helper()
	h := r.read(16)
	if binary.BigEndian.Uint32(h) != magicSimpleReply {
		r.t.Fatalf("bad simple reply magic % x", h)
	}
	return binary.BigEndian.Uint32(h[4:]), binary.BigEndian.Uint64(h[8:])
}

type chunk struct {
	flags, typ uint16
	cookie     uint64
	payload    []byte
}

func (r *raw) chunk() chunk {
	r.t.Helper()
	h := r.read(20)
	if binary.BigEndian.Uint32(h) != magicStructReply {
		r.t.Fatalf("bad structured reply magic % x", h)
	}
	return chunk{
		flags:   binary.BigEndian.Uint16(h[4:]),
		typ:     binary.BigEndian.Uint16(h[6:]),
		cookie:  binary.BigEndian.Uint64(h[8:]),
		payload: r.read(int(binary.BigEndian.Uint32(h[16:]))),
	}
}

// expectClosed asserts the server hung up.
func (r *raw) expectClosed() {
	r.t.Helper()
	r.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [1]byte
	for {
		_, err := r.nc.Read(b[:])
		if err == io.EOF || err != nil && !isTimeout(err) {
			return
		}
		if isTimeout(err) {
			r.t.Fatal("server did not close the connection")
		}
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func memExport(name string, size int64) Export {
	return Export{Name: name, Description: "test " + name, Device: device.NewMemory(size)}
}
