package tlspsk

import (
	"crypto/ecdh"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
)

// clientHelloParams are the fields of a ClientHello the client may send twice.
type clientHelloParams struct {
	random    []byte
	sessionID []byte
	suites    []uint16
	groups    []uint16
	share     *ecdh.PrivateKey
	shareID   uint16
	identity  string
	cookie    []byte
	earlyData bool // tests: offer 0-RTT (this package never sends it otherwise)
}

// buildClientHello encodes a ClientHello with a zeroed binder and returns it
// with the offset of the binders list.
func buildClientHello(p *clientHelloParams, binderLen int) ([]byte, int) {
	b := make([]byte, 0, 512)
	b = appendU16(b, versionTLS12)
	b = append(b, p.random...)
	b = appendVec8(b, p.sessionID)
	var cs []byte
	for _, s := range p.suites {
		cs = appendU16(cs, s)
	}
	b = appendVec16(b, cs)
	b = appendVec8(b, []byte{0})

	var ext []byte
	ext = appendExt(ext, extSupportedVersions, []byte{2, 0x03, 0x04})
	var gl []byte
	for _, g := range p.groups {
		gl = appendU16(gl, g)
	}
	ext = appendExt(ext, extSupportedGroups, appendVec16(nil, gl))
	// Signature algorithms are not used with a PSK, but some servers want
	// the extension in every TLS 1.3 hello.
	ext = appendExt(ext, extSignatureAlgorithms, appendVec16(nil, []byte{0x04, 0x03, 0x08, 0x04, 0x08, 0x07, 0x05, 0x03, 0x08, 0x05}))
	ks := []byte{byte(p.shareID >> 8), byte(p.shareID)}
	ks = appendVec16(ks, p.share.PublicKey().Bytes())
	ext = appendExt(ext, extKeyShare, appendVec16(nil, ks))
	if p.cookie != nil {
		ext = appendExt(ext, extCookie, appendVec16(nil, p.cookie))
	}
	ext = appendExt(ext, extPSKModes, []byte{1, pskModeDHEKE})
	if p.earlyData {
		ext = appendExt(ext, extEarlyData, nil)
	}
	// pre_shared_key, last: one identity (ticket age 0 for an external PSK)
	var ids []byte
	ids = appendVec16(ids, []byte(p.identity))
	ids = append(ids, 0, 0, 0, 0)
	psk := appendVec16(nil, ids)
	bindersOff := len(psk)
	psk = appendU16(psk, uint16(1+binderLen))
	psk = append(psk, byte(binderLen))
	psk = append(psk, make([]byte, binderLen)...)
	ext = appendU16(ext, extPreSharedKey)
	ext = appendU16(ext, uint16(len(psk)))
	extPSKStart := len(ext)
	ext = append(ext, psk...)
	b = appendU16(b, uint16(len(ext)))
	extStart := len(b)
	b = append(b, ext...)
	msg := handshakeMsg(typeClientHello, b)
	return msg, 4 + extStart + extPSKStart + bindersOff
}

func (c *Conn) clientHandshake() error {
	key, ok := c.cfg.Keys.Lookup(c.cfg.Identity)
	if !ok {
		return &AlertError{Alert: alertInternalError, Msg: "no key for identity " + quoteIDs([]pskIdentity{{identity: []byte(c.cfg.Identity)}}) + " in the client's keys"}
	}
	if c.cfg.Identity == "" || len(c.cfg.Identity) > maxIdentity {
		return &AlertError{Alert: alertInternalError, Msg: "client identity must be 1 to 65535 bytes"}
	}
	var offer []uint16
	for _, id := range c.cfg.suites() {
		if suiteByID(id) != nil {
			offer = append(offer, id)
		}
	}
	var groups []uint16
	for _, g := range c.cfg.groups() {
		if curveOf(g) != nil {
			groups = append(groups, g)
		}
	}
	if len(offer) == 0 || len(groups) == 0 {
		return &AlertError{Alert: alertInternalError, Msg: "no usable cipher suite or group configured"}
	}
	pskSuite := suiteByID(offer[0]) // the PSK's hash: the first suite's
	rnd := c.cfg.rand()
	p := &clientHelloParams{random: make([]byte, 32), sessionID: make([]byte, 32), suites: offer, groups: groups, shareID: groups[0], identity: c.cfg.Identity}
	if _, err := io.ReadFull(rnd, p.random); err != nil {
		return err
	}
	if _, err := io.ReadFull(rnd, p.sessionID); err != nil {
		return err
	}
	var err error
	if p.share, err = generateKey(p.shareID, rnd); err != nil {
		return err
	}
	hello := func(prefix []byte) []byte {
		ch, off := buildClientHello(p, pskSuite.hashLen())
		h := pskSuite.hash()
		h.Write(prefix)
		h.Write(ch[:off])
		binder := newSchedule(pskSuite, key).binder(h.Sum(nil))
		copy(ch[off+3:], binder)
		return ch
	}
	p.earlyData = c.testEarlyData != nil
	ch := hello(nil)
	first := c.appendRecord(nil, recordHandshake, ch)
	if c.testEarlyData != nil {
		// what a 0-RTT client would send: records under a key the server
		// does not have (here: random bytes)
		first = append(first, c.testEarlyData...)
	}
	if err := c.flush(first); err != nil {
		return err
	}
	p.earlyData = false // a second ClientHello must not offer it
	msg, err := c.readHandshake()
	if err != nil {
		return c.helloErr(err)
	}
	if msg[0] != typeServerHello {
		return newAlert(alertUnexpectedMessage, "expected ServerHello, got handshake message %d", msg[0])
	}
	sh, aerr := parseServerHello(msg)
	if aerr != nil {
		return aerr
	}
	var prefix []byte
	var hrrSuite uint16
	sentCCS := false
	if sh.isHRR {
		c.didHRR = true
		if err := c.checkServerHello(sh, p, pskSuite); err != nil {
			return err
		}
		g := sh.hrrGroup
		okGroup := false
		for _, x := range groups {
			okGroup = okGroup || x == g
		}
		if !okGroup || g == p.shareID || !sh.hasKeyShare {
			return newAlert(alertIllegalParameter, "HelloRetryRequest asks for group %d, which we did not offer or already sent", g)
		}
		if err := c.atRecordBoundary(); err != nil {
			return err
		}
		p.shareID, p.cookie = g, sh.cookie
		if p.share, err = generateKey(g, rnd); err != nil {
			return err
		}
		hrrSuite = sh.suite
		prefix = append(messageHash(pskSuite, ch), msg...)
		ch = hello(prefix)
		out := c.appendRecord(nil, recordChangeCipherSpec, []byte{1})
		sentCCS = true
		out = c.appendRecord(out, recordHandshake, ch)
		if err := c.flush(out); err != nil {
			return err
		}
		if msg, err = c.readHandshake(); err != nil {
			return c.helloErr(err)
		}
		if msg[0] != typeServerHello {
			return newAlert(alertUnexpectedMessage, "expected ServerHello, got handshake message %d", msg[0])
		}
		if sh, aerr = parseServerHello(msg); aerr != nil {
			return aerr
		}
		if sh.isHRR {
			return newAlert(alertUnexpectedMessage, "second HelloRetryRequest")
		}
		if sh.suite != hrrSuite {
			return newAlert(alertIllegalParameter, "ServerHello chose another cipher suite than its HelloRetryRequest")
		}
	}
	if err := c.checkServerHello(sh, p, pskSuite); err != nil {
		return err
	}
	if !sh.hasPSK {
		return newAlert(alertHandshakeFailure, "server did not accept the PSK (no pre_shared_key in ServerHello)")
	}
	if sh.selectedPSK != 0 {
		return newAlert(alertIllegalParameter, "server selected PSK %d; we offered one", sh.selectedPSK)
	}
	if !sh.hasKeyShare || sh.keyShare.group != p.shareID {
		return newAlert(alertIllegalParameter, "server's key share is not for the group we sent (%s)", GroupName(p.shareID))
	}
	shared, err := sharedSecret(p.share, sh.keyShare.data)
	if err != nil {
		return newAlert(alertIllegalParameter, "server's %s key share is invalid: %v", GroupName(p.shareID), err)
	}
	if err := c.atRecordBoundary(); err != nil {
		return err
	}
	s := suiteByID(sh.suite) // the server's choice; same hash as the PSK's
	c.suite, c.identity = s, c.cfg.Identity
	transcript := s.hash()
	transcript.Write(prefix)
	transcript.Write(ch)
	transcript.Write(msg)
	ks := newSchedule(s, key)
	ks.setECDHE(shared)
	cHS, sHS := ks.handshakeSecrets(transcript.Sum(nil))
	if err := c.in.setSecret(s, sHS); err != nil {
		return err
	}

	if msg, err = c.readHandshake(); err != nil {
		return c.handshakeReadErr(err, "EncryptedExtensions")
	}
	if msg[0] != typeEncryptedExtensions {
		return newAlert(alertUnexpectedMessage, "expected EncryptedExtensions, got handshake message %d", msg[0])
	}
	if err := checkEncryptedExtensions(msg); err != nil {
		return err
	}
	transcript.Write(msg)
	if msg, err = c.readHandshake(); err != nil {
		return c.handshakeReadErr(err, "server Finished")
	}
	switch msg[0] {
	case typeFinished:
	case typeCertificate, typeCertificateRequest:
		return newAlert(alertUnexpectedMessage, "server wants certificate authentication, not the PSK")
	default:
		return newAlert(alertUnexpectedMessage, "expected server Finished, got handshake message %d", msg[0])
	}
	want := s.finishedMAC(sHS, transcript.Sum(nil))
	if subtle.ConstantTimeCompare(want, msg[4:]) != 1 {
		return newAlert(alertDecryptError, "server Finished does not verify")
	}
	if err := c.atRecordBoundary(); err != nil {
		return err
	}
	transcript.Write(msg)
	thServerFin := transcript.Sum(nil)
	cAP, sAP := ks.applicationSecrets(thServerFin)
	if err := c.in.setSecret(s, sAP); err != nil {
		return err
	}
	var out []byte
	if !sentCCS {
		out = c.appendRecord(out, recordChangeCipherSpec, []byte{1})
	}
	if err := c.out.setSecret(s, cHS); err != nil {
		return err
	}
	out = c.appendRecord(out, recordHandshake, handshakeMsg(typeFinished, s.finishedMAC(cHS, thServerFin)))
	if err := c.flush(out); err != nil {
		return err
	}
	return c.out.setSecret(s, cAP)
}

// helloErr words a failure while waiting for the ServerHello: an alert
// there is the server's answer to our ClientHello, whose only secret is the
// PSK binder (GnuTLS and OpenSSL answer a bad one with illegal_parameter,
// this package with decrypt_error; GnuTLS also for an unknown identity).
func (c *Conn) helloErr(err error) error {
	var ae *AlertError
	if errors.As(err, &ae) && ae.Received {
		switch ae.Alert {
		case alertDecryptError, alertIllegalParameter:
			ae.Msg = fmt.Sprintf("peer sent alert %s: the server refused the PSK for identity %q (wrong key, or unknown identity?)", AlertName(ae.Alert), c.cfg.Identity)
		case alertUnknownPSKIdentity:
			ae.Msg = fmt.Sprintf("peer sent alert %s: the server does not know PSK identity %q", AlertName(ae.Alert), c.cfg.Identity)
		}
		return ae
	}
	return c.handshakeReadErr(err, "ServerHello")
}

// checkServerHello checks the fields a ServerHello and a HelloRetryRequest share.
func (c *Conn) checkServerHello(sh *serverHello, p *clientHelloParams, pskSuite *suite) error {
	if string(sh.sessionID) != string(p.sessionID) {
		return newAlert(alertIllegalParameter, "server did not echo our session id")
	}
	if sh.compression != 0 {
		return newAlert(alertIllegalParameter, "server chose compression")
	}
	offered := false
	for _, id := range p.suites {
		offered = offered || id == sh.suite
	}
	if !offered {
		return newAlert(alertIllegalParameter, "server chose cipher suite %#04x, which we did not offer", sh.suite)
	}
	if sh.suite != pskSuite.id && suiteByID(sh.suite).hashID != pskSuite.hashID {
		return newAlert(alertIllegalParameter, "server chose %s, whose hash differs from the PSK's", CipherSuiteName(sh.suite))
	}
	return nil
}

func checkEncryptedExtensions(msg []byte) error {
	p := parser{b: msg[4:]}
	exts := p.vec16()
	if !p.ok() || !p.empty() {
		return errDecode("EncryptedExtensions")
	}
	ep := parser{b: exts}
	for !ep.empty() {
		typ := ep.u16()
		ep.vec16()
		if !ep.ok() {
			return errDecode("EncryptedExtensions")
		}
		if typ == extEarlyData || typ == extPreSharedKey || typ == extKeyShare || typ == extSupportedVersions {
			return newAlert(alertUnsupportedExtension, "server sent extension %d in EncryptedExtensions", typ)
		}
	}
	return nil
}
