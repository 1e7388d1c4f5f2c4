package nbd

import (
	"crypto/tls"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hacs/hacs/internal/device"
	"github.com/hacs/hacs/internal/nbd/tlstest"
	"github.com/hacs/hacs/internal/tlspsk"
)

// fuzzServe feeds input to a fresh server connection as the client's bytes
// and requires the server to finish (not hang, not panic) once the input
// ends.
func fuzzServe(t *testing.T, input []byte) {
	fuzzServeTLS(t, input, nil, nil, TLSDefault)
}

var fuzzTLS struct {
	once sync.Once
	cfg  *tls.Config
}

// fuzzTLSConfig is a server configuration made once per fuzzing process.
func fuzzTLSConfig(t *testing.T) *tls.Config {
	fuzzTLS.once.Do(func() {
		ca, err := tlstest.NewCA("fuzz")
		if err != nil {
			t.Fatal(err)
		}
		pair, err := ca.Issue("server", tlstest.Options{})
		if err != nil {
			t.Fatal(err)
		}
		cert, err := tls.X509KeyPair(pair.CertPEM, pair.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		fuzzTLS.cfg = &tls.Config{Certificates: []tls.Certificate{cert}}
	})
	return fuzzTLS.cfg
}

// fuzzServeTLS is fuzzServe on a server with a TLS configuration and/or
// pre-shared keys and policy (and a TLS-only export "tls").
func fuzzServeTLS(t *testing.T, input []byte, cfg *tls.Config, keys tlspsk.Keys, policy TLSPolicy) {
	srv := NewServer(slog.New(slog.NewTextHandler(io.Discard, nil)))
	srv.HandshakeTimeout = 2 * time.Second
	srv.TLSConfig, srv.PSKKeys, srv.TLSPolicy = cfg, keys, policy
	ro := memExport("ro", 1<<20)
	ro.ReadOnly = true
	srv.AddExport(memExport("", 1<<20))
	srv.AddExport(ro)
	if cfg != nil || keys != nil {
		only := memExport("tls", 1<<20)
		only.TLS = TLSRequired
		srv.AddExport(only)
	}
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
	// STARTTLS paths: garbage or a truncated hello where the TLS handshake
	// should be, options pipelined behind STARTTLS, a TLS-only export asked
	// for in plaintext by GO, INFO and EXPORT_NAME.
	f.Add(append(append(flags[:4:4], optBytes(optStartTLS, nil)...), "garbage in place of a TLS hello"...))
	f.Add(append(append(flags[:4:4], optBytes(optStartTLS, nil)...), 0x16, 0x03, 0x01, 0x00, 0x05, 1, 0, 0, 1, 0))
	f.Add(append(append(flags[:4:4], optBytes(optStartTLS, nil)...), optBytes(optGo, goData(""))...))
	f.Add(append(append(flags[:4:4], optBytes(optStartTLS, []byte("x"))...), optBytes(optList, nil)...))
	f.Add(append(append(flags[:4:4], optBytes(optGo, goData("tls"))...), optBytes(optInfo, goData("tls"))...))
	f.Add(append(append(flags[:4:4], optBytes(optList, nil)...), optBytes(optExportName, []byte("tls"))...))
	f.Add(append(flags[:4:4], optBytes(optSetMetaContext, metaData("tls", MetaBaseAllocation))...))
	// A ClientHello offering the pre-shared key "alice" (TLS 1.3,
	// X25519; its binder is wrong) and the same cut across two records.
	hello := pskHelloSeed()
	f.Add(append(append(flags[:4:4], optBytes(optStartTLS, nil)...), hello...))
	split := append([]byte{0x16, 0x03, 0x01, 0x00, 0x10}, hello[5:21]...)
	split = append(split, 0x16, 0x03, 0x01, byte((len(hello)-21)>>8), byte(len(hello)-21))
	f.Add(append(append(flags[:4:4], optBytes(optStartTLS, nil)...), append(split, hello[21:]...)...))
	f.Fuzz(func(t *testing.T, input []byte) {
		fuzzServe(t, input)
		cfg := fuzzTLSConfig(t)
		fuzzServeTLS(t, input, cfg, nil, TLSAllowed)
		fuzzServeTLS(t, input, cfg, nil, TLSRequired)
		// The ClientHello sniffing and the TLS-PSK handshake.
		fuzzServeTLS(t, input, nil, pskKeys, TLSRequired)
		fuzzServeTLS(t, input, cfg, pskKeys, TLSAllowed)
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

// pskHelloSeed is a TLS 1.3 ClientHello record offering the PSK identity
// "alice" with psk_dhe_ke (an X25519 share of zeros, a binder of zeros).
func pskHelloSeed() []byte {
	u16 := func(b []byte, v int) []byte { return binary.BigEndian.AppendUint16(b, uint16(v)) }
	ext := func(b []byte, typ int, data []byte) []byte { return append(u16(u16(b, typ), len(data)), data...) }
	var exts []byte
	exts = ext(exts, 43, []byte{2, 3, 4})       // supported_versions: TLS 1.3
	exts = ext(exts, 10, []byte{0, 2, 0, 0x1d}) // supported_groups: x25519
	exts = ext(exts, 13, []byte{0, 2, 4, 3})    // signature_algorithms
	exts = ext(exts, 45, []byte{1, 1})          // psk_key_exchange_modes: psk_dhe_ke
	share := append(u16(u16(nil, 0x1d), 32), make([]byte, 32)...)
	exts = ext(exts, 51, append(u16(nil, len(share)), share...)) // key_share
	ids := append(u16(nil, 5), "alice"...)
	ids = append(ids, 0, 0, 0, 0)
	binders := append([]byte{32}, make([]byte, 32)...)
	psk := append(u16(nil, len(ids)), ids...)
	psk = append(u16(psk, len(binders)), binders...)
	exts = ext(exts, 41, psk)                         // pre_shared_key, last
	body := append([]byte{3, 3}, make([]byte, 32)...) // legacy version, random
	body = append(body, 0)                            // session id
	body = append(u16(body, 2), 0x13, 0x01)           // TLS_AES_128_GCM_SHA256
	body = append(body, 1, 0)                         // compression
	body = append(u16(body, len(exts)), exts...)
	hs := append([]byte{1, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}, body...)
	return append([]byte{0x16, 0x03, 0x01, byte(len(hs) >> 8), byte(len(hs))}, hs...)
}
