package tlspsk

import (
	"bytes"
	"context"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/cpu"
)

// Config configures either side of a connection.
type Config struct {
	// Keys: for a server, the identities it accepts; for a client, holds
	// the key of Identity.
	Keys Keys
	// Identity is the identity a client offers.
	Identity string

	// Rand is the source of randomness; crypto/rand if nil.
	Rand io.Reader
	// Time is unused (no tickets) and kept for symmetry with crypto/tls.
	Time func() time.Time
	// HandshakeTimeout bounds the handshake when > 0.
	HandshakeTimeout time.Duration

	// CipherSuites: the suites to offer (client) or accept (server), in
	// order of preference (the server's order decides); nil means
	// AES-128-GCM-SHA256, AES-256-GCM-SHA384, CHACHA20-POLY1305-SHA256, with
	// ChaCha20 first on CPUs without AES instructions. A client makes its
	// PSK binder with the hash of the first one.
	CipherSuites []uint16
	// Groups: the (EC)DHE groups to use (client: the first gets a key
	// share, the others are listed in supported_groups; server: the ones
	// it accepts); nil means x25519, secp256r1, secp384r1.
	Groups []uint16
}

func (c *Config) rand() io.Reader {
	if c.Rand != nil {
		return c.Rand
	}
	return rand.Reader
}

func (c *Config) suites() []uint16 {
	if len(c.CipherSuites) > 0 {
		return c.CipherSuites
	}
	if hasAESHardware {
		return []uint16{TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256}
	}
	return []uint16{TLS_CHACHA20_POLY1305_SHA256, TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384}
}

// hasAESHardware: the CPU has AES and carry-less multiply instructions, so
// AES-GCM is faster than ChaCha20-Poly1305.
var hasAESHardware = (cpu.X86.HasAES && cpu.X86.HasPCLMULQDQ) || (cpu.ARM64.HasAES && cpu.ARM64.HasPMULL) ||
	(cpu.S390X.HasAES && cpu.S390X.HasGHASH)

func (c *Config) groups() []uint16 {
	if len(c.Groups) > 0 {
		return c.Groups
	}
	return defaultGroups
}

// Record layer limits (RFC 8446 section 5).
const (
	recordHeaderLen = 5
	maxPlaintext    = 1 << 14
	maxCiphertext   = maxPlaintext + 256
	aeadOverhead    = 16
	maxHandshake    = 1 << 17 // largest handshake message accepted
	// writeBatch is how many full records one Write hands the socket at once.
	writeBatch      = 8
	maxEmptyRecords = 100
)

// keyUpdateAfter: this side starts a KeyUpdate after this many records
// under one key (well below the AES-GCM limit of 2^24.5 full records); a
// variable for tests.
var keyUpdateAfter uint64 = 1 << 23

// Record content types.
const (
	recordChangeCipherSpec uint8 = 20
	recordAlert            uint8 = 21
	recordHandshake        uint8 = 22
	recordApplicationData  uint8 = 23
)

// halfConn is one direction's protection state.
type halfConn struct {
	suite  *suite
	secret []byte
	aead   cipher.AEAD
	iv     [12]byte
	nonce  [12]byte
	seq    uint64
}

func (h *halfConn) setSecret(s *suite, secret []byte) error {
	key, iv := s.trafficKeys(secret)
	a, err := s.aead(key)
	if err != nil {
		return err
	}
	h.suite, h.secret, h.aead, h.seq = s, secret, a, 0
	copy(h.iv[:], iv)
	return nil
}

func (h *halfConn) makeNonce() []byte {
	h.nonce = h.iv
	for i := 0; i < 8; i++ {
		h.nonce[4+i] ^= byte(h.seq >> (56 - 8*i))
	}
	return h.nonce[:]
}

// Conn is a TLS 1.3 PSK connection. One goroutine may Read while another
// Writes.
type Conn struct {
	conn     net.Conn
	r        io.Reader
	cfg      *Config
	isClient bool

	hsMu   sync.Mutex
	hsDone atomic.Bool
	hsErr  error
	// written during the handshake, read-only after it
	identity string
	suite    *suite
	didHRR   bool // a HelloRetryRequest was sent or received
	// testEarlyData: tests make the client offer early_data and send these
	// bytes after its ClientHello
	testEarlyData []byte

	// read side, under rmu
	rmu            sync.Mutex
	in             halfConn
	raw            []byte
	rawStart       int
	rawEnd         int
	plain          []byte
	hsBuf          []byte
	readErr        error
	skipEarly      bool // server: skip the client's 0-RTT records we refused
	skipBudget     int
	ignoreCCS      bool // handshake in progress: CCS records are dropped
	emptyRecords   int
	peerKeyUpdates int // KeyUpdates received (tests check them)

	// write side, under wmu
	wmu       sync.Mutex
	out       halfConn
	outBuf    []byte
	writeErr  error
	sentClose bool
	// keyUpdatePending: the peer asked for a KeyUpdate; the writer sends
	// it before its next record.
	keyUpdatePending atomic.Bool
}

// Server returns a server side of conn. If prefix is not nil, those bytes
// (from Sniff) are read first, as if from conn.
func Server(conn net.Conn, prefix []byte, cfg *Config) *Conn {
	c := &Conn{conn: conn, r: conn, cfg: cfg}
	if len(prefix) > 0 {
		c.r = io.MultiReader(bytes.NewReader(prefix), conn)
	}
	return c
}

// Client returns a client side of conn.
func Client(conn net.Conn, cfg *Config) *Conn {
	return &Conn{conn: conn, r: conn, cfg: cfg, isClient: true}
}

// Handshake runs the handshake if it has not run yet; Read and Write call it.
func (c *Conn) Handshake() error { return c.HandshakeContext(context.Background()) }

// HandshakeContext is Handshake that gives up when ctx is done.
func (c *Conn) HandshakeContext(ctx context.Context) error {
	if c.hsDone.Load() {
		return c.hsErr
	}
	c.hsMu.Lock()
	defer c.hsMu.Unlock()
	if c.hsDone.Load() {
		return c.hsErr
	}
	if c.cfg.HandshakeTimeout > 0 {
		c.conn.SetDeadline(time.Now().Add(c.cfg.HandshakeTimeout))
	}
	stop := make(chan struct{})
	watched := make(chan struct{})
	if ctx.Done() != nil {
		go func() {
			defer close(watched)
			select {
			case <-ctx.Done():
				c.conn.SetDeadline(time.Unix(1, 0))
			case <-stop:
			}
		}()
	} else {
		close(watched)
	}
	c.ignoreCCS = true
	var err error
	if c.isClient {
		err = c.clientHandshake()
	} else {
		err = c.serverHandshake()
	}
	close(stop)
	<-watched
	if ctx.Err() != nil && err != nil {
		err = fmt.Errorf("tls-psk handshake: %w (%w)", ctx.Err(), err)
	}
	var ae *AlertError
	if errors.As(err, &ae) && !ae.Received {
		c.sendAlert(ae.Alert)
	}
	if err == nil && (c.cfg.HandshakeTimeout > 0 || ctx.Err() != nil) {
		c.conn.SetDeadline(time.Time{})
	}
	c.ignoreCCS = false
	c.hsErr = err
	if err != nil {
		c.readErr, c.writeErr = err, err
	}
	c.hsDone.Store(true)
	return err
}

// Identity returns the PSK identity agreed in the handshake.
func (c *Conn) Identity() string {
	if !c.hsDone.Load() {
		return ""
	}
	return c.identity
}

// CipherSuite returns the negotiated suite's name, e.g. "TLS_AES_128_GCM_SHA256".
func (c *Conn) CipherSuite() string {
	if !c.hsDone.Load() || c.suite == nil {
		return ""
	}
	return c.suite.name
}

func (c *Conn) LocalAddr() net.Addr                { return c.conn.LocalAddr() }
func (c *Conn) RemoteAddr() net.Addr               { return c.conn.RemoteAddr() }
func (c *Conn) SetDeadline(t time.Time) error      { return c.conn.SetDeadline(t) }
func (c *Conn) SetReadDeadline(t time.Time) error  { return c.conn.SetReadDeadline(t) }
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.conn.SetWriteDeadline(t) }

// NetConn returns the underlying connection.
func (c *Conn) NetConn() net.Conn { return c.conn }

// ---- record layer: reading ----

// fill makes at least n bytes available in raw[rawStart:rawEnd].
func (c *Conn) fill(n int) error {
	if c.raw == nil {
		c.raw = make([]byte, 4*(recordHeaderLen+maxCiphertext))
	}
	if c.rawEnd-c.rawStart >= n {
		return nil
	}
	if c.rawStart+n > len(c.raw) {
		copy(c.raw, c.raw[c.rawStart:c.rawEnd])
		c.rawEnd -= c.rawStart
		c.rawStart = 0
	}
	for c.rawEnd-c.rawStart < n {
		m, err := c.r.Read(c.raw[c.rawEnd:])
		c.rawEnd += m
		if c.rawEnd-c.rawStart >= n {
			break
		}
		if err != nil {
			if err == io.EOF {
				if c.rawEnd-c.rawStart > 0 {
					return io.ErrUnexpectedEOF
				}
			}
			return err
		}
		if m == 0 {
			return io.ErrNoProgress
		}
	}
	return nil
}

// readRecord reads and, once keys are set, decrypts one record. It returns
// the content type and the plaintext, which stays valid until the next
// call. CCS records during the handshake are dropped here.
func (c *Conn) readRecord() (uint8, []byte, error) {
	for {
		if err := c.fill(recordHeaderLen); err != nil {
			return 0, nil, err
		}
		hdr := c.raw[c.rawStart : c.rawStart+recordHeaderLen]
		typ := hdr[0]
		n := int(hdr[3])<<8 | int(hdr[4])
		switch typ {
		case recordChangeCipherSpec, recordAlert, recordHandshake, recordApplicationData:
		default:
			return 0, nil, newAlert(alertUnexpectedMessage, "not a TLS record (content type %d); is the peer speaking TLS?", typ)
		}
		if hdr[1] != 3 {
			return 0, nil, newAlert(alertDecodeError, "not a TLS record (version %#02x%02x)", hdr[1], hdr[2])
		}
		if n > maxCiphertext || (c.in.aead == nil && n > maxPlaintext && typ != recordApplicationData) {
			return 0, nil, newAlert(alertRecordOverflow, "record of %d bytes is too long", n)
		}
		if err := c.fill(recordHeaderLen + n); err != nil {
			return 0, nil, err
		}
		// fill may have moved the buffered bytes to the front of raw.
		hdr = c.raw[c.rawStart : c.rawStart+recordHeaderLen]
		body := c.raw[c.rawStart+recordHeaderLen : c.rawStart+recordHeaderLen+n]
		c.rawStart += recordHeaderLen + n

		if typ == recordChangeCipherSpec {
			if c.ignoreCCS && n == 1 && body[0] == 1 {
				continue
			}
			return 0, nil, newAlert(alertUnexpectedMessage, "unexpected change_cipher_spec record")
		}
		if c.in.aead == nil {
			if typ == recordApplicationData {
				if c.skipEarly && c.skipBudget >= n {
					c.skipBudget -= n
					continue
				}
				return 0, nil, newAlert(alertUnexpectedMessage, "application data before the handshake finished")
			}
			if n == 0 && typ != recordApplicationData {
				return 0, nil, newAlert(alertDecodeError, "empty %s record", recordName(typ))
			}
			return typ, body, nil
		}
		if typ != recordApplicationData {
			if typ == recordAlert && n == 2 && !c.hsDone.Load() {
				// a plaintext alert during the handshake, e.g. from a peer
				// that failed before switching keys (or could not decrypt
				// ours); after it, an unprotected close_notify would be a
				// truncation anyone on the path can forge
				return typ, body, nil
			}
			if typ == recordAlert {
				return 0, nil, newAlert(alertUnexpectedMessage, "unprotected alert record after the handshake (forged by someone on the path?)")
			}
			return 0, nil, newAlert(alertUnexpectedMessage, "unprotected %s record after keys were set", recordName(typ))
		}
		if n < aeadOverhead+1 {
			return 0, nil, newAlert(alertBadRecordMAC, "encrypted record too short")
		}
		plain, err := c.in.aead.Open(body[:0], c.in.makeNonce(), body, hdr)
		if err != nil {
			if c.skipEarly && c.skipBudget >= n {
				c.skipBudget -= n
				continue
			}
			return 0, nil, newAlert(alertBadRecordMAC, "record decryption failed (bad_record_mac)")
		}
		c.skipEarly = false
		c.in.seq++
		i := len(plain) - 1
		for i >= 0 && plain[i] == 0 {
			i--
		}
		if i < 0 {
			return 0, nil, newAlert(alertUnexpectedMessage, "encrypted record without content type")
		}
		typ = plain[i]
		plain = plain[:i]
		if len(plain) > maxPlaintext {
			return 0, nil, newAlert(alertRecordOverflow, "record plaintext of %d bytes is too long", len(plain))
		}
		switch typ {
		case recordAlert, recordHandshake:
			if len(plain) == 0 {
				return 0, nil, newAlert(alertUnexpectedMessage, "empty %s record", recordName(typ))
			}
		case recordApplicationData:
		default:
			return 0, nil, newAlert(alertUnexpectedMessage, "unexpected inner content type %d", typ)
		}
		return typ, plain, nil
	}
}

func recordName(t uint8) string {
	switch t {
	case recordChangeCipherSpec:
		return "change_cipher_spec"
	case recordAlert:
		return "alert"
	case recordHandshake:
		return "handshake"
	case recordApplicationData:
		return "application_data"
	}
	return fmt.Sprintf("type-%d", t)
}

// alertFromRecord turns a received alert record into an error: io.EOF for
// close_notify, nil for a user_canceled warning, *AlertError otherwise.
func alertFromRecord(b []byte) error {
	if len(b) != 2 {
		return newAlert(alertDecodeError, "malformed alert record")
	}
	switch b[1] {
	case alertCloseNotify:
		return io.EOF
	case alertUserCanceled:
		return nil
	}
	return peerAlert(b[1])
}

// readHandshake returns the next handshake message (with its header). It
// is used during the handshake only.
func (c *Conn) readHandshake() ([]byte, error) {
	for {
		if len(c.hsBuf) >= 4 {
			n := int(c.hsBuf[1])<<16 | int(c.hsBuf[2])<<8 | int(c.hsBuf[3])
			if n > maxHandshake {
				return nil, newAlert(alertDecodeError, "handshake message of %d bytes is too long", n)
			}
			if len(c.hsBuf) >= 4+n {
				msg := make([]byte, 4+n)
				copy(msg, c.hsBuf)
				c.hsBuf = append(c.hsBuf[:0], c.hsBuf[4+n:]...)
				return msg, nil
			}
		}
		typ, data, err := c.readRecord()
		if err != nil {
			return nil, err
		}
		switch typ {
		case recordHandshake:
			c.hsBuf = append(c.hsBuf, data...)
		case recordAlert:
			err := alertFromRecord(data)
			if err == io.EOF {
				return nil, &AlertError{Alert: alertCloseNotify, Received: true, Msg: "peer closed the connection during the handshake (close_notify)"}
			}
			if err != nil {
				return nil, handshakeAlertHint(err, c.isClient)
			}
		default:
			return nil, newAlert(alertUnexpectedMessage, "unexpected %s record during the handshake", recordName(typ))
		}
	}
}

// handshakeAlertHint adds the likely cause to an alert received during the
// handshake.
func handshakeAlertHint(err error, client bool) error {
	var ae *AlertError
	if !errors.As(err, &ae) || !ae.Received {
		return err
	}
	switch {
	case ae.Alert == alertDecryptError && client:
		ae.Msg += " (the server's key for this identity differs: wrong PSK?)"
	case ae.Alert == alertDecryptError:
		ae.Msg += " (the client's key for this identity differs: wrong PSK?)"
	case ae.Alert == alertUnknownPSKIdentity:
		ae.Msg += " (the server does not know this PSK identity)"
	case ae.Alert == alertProtocolVersion:
		ae.Msg += " (no TLS version in common; PSK mode is TLS 1.3 only)"
	case ae.Alert == alertHandshakeFailure:
		ae.Msg += " (no parameters in common, or PSK refused)"
	}
	return ae
}

// atRecordBoundary reports whether no handshake bytes are buffered; keys may
// change only there.
func (c *Conn) atRecordBoundary() error {
	if len(c.hsBuf) != 0 {
		return newAlert(alertUnexpectedMessage, "handshake message spans a key change")
	}
	return nil
}

// ---- record layer: writing ----

// appendRecord appends one record of type typ holding data (at most
// maxPlaintext bytes), protected with the current write keys.
func (c *Conn) appendRecord(buf []byte, typ uint8, data []byte) []byte {
	if c.out.aead == nil {
		buf = append(buf, typ, 3, 3, byte(len(data)>>8), byte(len(data)))
		return append(buf, data...)
	}
	n := len(data) + 1 + aeadOverhead
	if cap(buf)-len(buf) < recordHeaderLen+n {
		nb := make([]byte, len(buf), 2*cap(buf)+recordHeaderLen+n)
		copy(nb, buf)
		buf = nb
	}
	start := len(buf)
	buf = append(buf, recordApplicationData, 3, 3, byte(n>>8), byte(n))
	buf = append(buf, data...)
	buf = append(buf, typ)
	payload := buf[start+recordHeaderLen:]
	sealed := c.out.aead.Seal(payload[:0], c.out.makeNonce(), payload, buf[start:start+recordHeaderLen])
	c.out.seq++
	return buf[:start+recordHeaderLen+len(sealed)]
}

// writeRecords writes buf to the connection; errors are sticky.
func (c *Conn) flush(buf []byte) error {
	if len(buf) == 0 {
		return nil
	}
	if _, err := c.conn.Write(buf); err != nil {
		c.writeErr = err
		return err
	}
	return nil
}

// sendAlert sends a fatal alert (best effort). The caller holds wmu or runs
// the handshake.
func (c *Conn) sendAlert(a uint8) {
	level := alertLevelFatal
	if a == alertCloseNotify {
		level = alertLevelWarning
	}
	if c.sentClose {
		return
	}
	c.sentClose = true
	b := c.appendRecord(c.outBuf[:0], recordAlert, []byte{level, a})
	c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	c.conn.Write(b)
	c.conn.SetWriteDeadline(time.Time{})
}

// sendKeyUpdate sends a KeyUpdate and moves to the next write key. The
// caller holds wmu.
func (c *Conn) appendKeyUpdate(buf []byte, requestPeer bool) []byte {
	v := byte(0)
	if requestPeer {
		v = 1
	}
	buf = c.appendRecord(buf, recordHandshake, []byte{typeKeyUpdate, 0, 0, 1, v})
	next := c.out.suite.nextTrafficSecret(c.out.secret)
	if err := c.out.setSecret(c.out.suite, next); err != nil {
		panic("tlspsk: key update: " + err.Error())
	}
	return buf
}

// keyUpdate sends a KeyUpdate now (tests use it; the writer also does it on
// its own after keyUpdateAfter records).
func (c *Conn) keyUpdate(requestPeer bool) error {
	if err := c.Handshake(); err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.writeErr != nil {
		return c.writeErr
	}
	c.outBuf = c.appendKeyUpdate(c.outBuf[:0], requestPeer)
	return c.flush(c.outBuf)
}

// Write encrypts p into records of up to 16 KiB and writes them.
func (c *Conn) Write(p []byte) (int, error) {
	if err := c.Handshake(); err != nil {
		return 0, err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.writeErr != nil {
		return 0, c.writeErr
	}
	if c.sentClose {
		return 0, ErrClosed
	}
	if c.outBuf == nil {
		c.outBuf = make([]byte, 0, writeBatch*(recordHeaderLen+maxPlaintext+1+aeadOverhead)+64)
	}
	written := 0
	for {
		buf := c.outBuf[:0]
		if c.keyUpdatePending.Swap(false) {
			buf = c.appendKeyUpdate(buf, false)
		}
		chunk := 0
		for i := 0; i < writeBatch && len(p) > 0; i++ {
			if c.out.seq >= keyUpdateAfter {
				buf = c.appendKeyUpdate(buf, false)
			}
			n := min(len(p), maxPlaintext)
			buf = c.appendRecord(buf, recordApplicationData, p[:n])
			p = p[n:]
			chunk += n
		}
		c.outBuf = buf[:0]
		if err := c.flush(buf); err != nil {
			return written, err
		}
		written += chunk
		if len(p) == 0 {
			return written, nil
		}
	}
}

// Read reads application data.
func (c *Conn) Read(p []byte) (int, error) {
	if err := c.Handshake(); err != nil {
		return 0, err
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for len(c.plain) == 0 {
		if c.readErr != nil {
			return 0, c.readErr
		}
		if len(p) == 0 {
			return 0, nil
		}
		if err := c.readPostHandshake(); err != nil {
			c.readErr = err
			var ae *AlertError
			// tell the peer, unless a Write is in progress (it may be
			// blocked on a peer that no longer reads: never wait for it)
			if errors.As(err, &ae) && !ae.Received && c.wmu.TryLock() {
				c.sendAlert(ae.Alert)
				c.wmu.Unlock()
			}
			return 0, err
		}
	}
	n := copy(p, c.plain)
	c.plain = c.plain[n:]
	return n, nil
}

// readPostHandshake reads one record after the handshake and handles it.
func (c *Conn) readPostHandshake() error {
	typ, data, err := c.readRecord()
	if err != nil {
		return err
	}
	switch typ {
	case recordApplicationData:
		if len(c.hsBuf) != 0 {
			return newAlert(alertUnexpectedMessage, "application data inside a fragmented handshake message")
		}
		if len(data) == 0 {
			c.emptyRecords++
			if c.emptyRecords > maxEmptyRecords {
				return newAlert(alertUnexpectedMessage, "too many empty records")
			}
			return nil
		}
		c.emptyRecords = 0
		c.plain = data
		return nil
	case recordAlert:
		return alertFromRecord(data)
	case recordHandshake:
		c.hsBuf = append(c.hsBuf, data...)
		for len(c.hsBuf) >= 4 {
			n := int(c.hsBuf[1])<<16 | int(c.hsBuf[2])<<8 | int(c.hsBuf[3])
			if n > maxHandshake {
				return newAlert(alertDecodeError, "handshake message of %d bytes is too long", n)
			}
			if len(c.hsBuf) < 4+n {
				return nil
			}
			msgType, body := c.hsBuf[0], c.hsBuf[4:4+n]
			rest := len(c.hsBuf) - 4 - n
			switch msgType {
			case typeNewSessionTicket:
				if !c.isClient {
					return newAlert(alertUnexpectedMessage, "client sent NewSessionTicket")
				}
				// no resumption: tickets are ignored
			case typeKeyUpdate:
				if len(body) != 1 || body[0] > 1 {
					return errDecode("KeyUpdate")
				}
				if rest != 0 {
					return newAlert(alertUnexpectedMessage, "KeyUpdate not at the end of a record")
				}
				next := c.in.suite.nextTrafficSecret(c.in.secret)
				if err := c.in.setSecret(c.in.suite, next); err != nil {
					return err
				}
				c.peerKeyUpdates++
				if body[0] == 1 {
					c.keyUpdatePending.Store(true)
				}
			default:
				return newAlert(alertUnexpectedMessage, "unexpected handshake message %d after the handshake", msgType)
			}
			c.hsBuf = append(c.hsBuf[:0], c.hsBuf[4+n:]...)
		}
		return nil
	}
	return newAlert(alertUnexpectedMessage, "unexpected %s record", recordName(typ))
}

// CloseWrite sends close_notify and half-closes the connection.
func (c *Conn) CloseWrite() error {
	if err := c.Handshake(); err != nil {
		return err
	}
	c.wmu.Lock()
	if !c.sentClose && c.writeErr == nil {
		c.sendAlert(alertCloseNotify)
	}
	c.wmu.Unlock()
	if cw, ok := c.conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// Close sends close_notify if the handshake completed and no write is in
// progress, then closes the connection.
func (c *Conn) Close() error {
	if c.hsDone.Load() && c.hsErr == nil && c.wmu.TryLock() {
		if !c.sentClose && c.writeErr == nil {
			c.sendAlert(alertCloseNotify)
		}
		c.wmu.Unlock()
	}
	return c.conn.Close()
}
