package tlspsk

import (
	"crypto/ecdh"
	"crypto/hmac"
	"crypto/subtle"
	"fmt"
	"hash"
	"io"
	"strings"
)

// serverChoice is what the server picked from a ClientHello.
type serverChoice struct {
	suite    *suite
	identity int    // index into the client's identities
	name     string // the identity
	key      []byte
	group    uint16
	share    []byte // the client's key share for group; nil: HelloRetryRequest needed
}

// quoteIDs lists identities for an error message, at most a few.
func quoteIDs(ids []pskIdentity) string {
	var s []string
	for i, id := range ids {
		if i == 4 {
			s = append(s, fmt.Sprintf("and %d more", len(ids)-4))
			break
		}
		v := string(id.identity)
		if len(v) > 64 {
			v = v[:64] + "..."
		}
		s = append(s, fmt.Sprintf("%q", v))
	}
	return strings.Join(s, ", ")
}

func versionList(v []uint16) string {
	var s []string
	for _, x := range v {
		switch x {
		case 0x0301:
			s = append(s, "TLS 1.0")
		case 0x0302:
			s = append(s, "TLS 1.1")
		case 0x0303:
			s = append(s, "TLS 1.2")
		case 0x0304:
			s = append(s, "TLS 1.3")
		default:
			s = append(s, fmt.Sprintf("%#04x", x))
		}
	}
	return strings.Join(s, ", ")
}

// choose checks a ClientHello and picks identity, suite and group. prefix is
// the transcript before this ClientHello (message_hash and HRR after a
// HelloRetryRequest), needed for the binder. want, if not nil, is the
// choice made for the first ClientHello, which the second must agree with.
func (c *Conn) choose(ch *clientHello, prefix []byte, want *serverChoice) (*serverChoice, error) {
	if !ch.hasVersions || !ch.offersVersion(versionTLS13) {
		offered := "TLS 1.2 or older (no supported_versions)"
		if ch.hasVersions {
			offered = versionList(ch.versions)
		}
		return nil, newAlert(alertProtocolVersion, "client does not offer TLS 1.3 (it offers %s); PSK mode needs TLS 1.3", offered)
	}
	if len(ch.compression) != 1 || ch.compression[0] != 0 {
		return nil, newAlert(alertIllegalParameter, "ClientHello offers compression")
	}
	if !ch.hasPSK {
		return nil, newAlert(alertHandshakeFailure, "client offers no PSK (no pre_shared_key extension): configure the client for PSK")
	}
	if !ch.hasPSKModes {
		return nil, newAlert(alertMissingExtension, "client offers a PSK without psk_key_exchange_modes")
	}
	dhe := false
	for _, m := range ch.pskModes {
		if m == pskModeDHEKE {
			dhe = true
		}
	}
	if !dhe {
		return nil, newAlert(alertHandshakeFailure, "client offers only psk_ke (PSK without (EC)DHE, no forward secrecy); this server requires psk_dhe_ke")
	}
	ch2 := want != nil
	pick := &serverChoice{identity: -1}
	for i, id := range ch.identities {
		if key, ok := c.cfg.Keys.Lookup(string(id.identity)); ok {
			pick.identity, pick.name, pick.key = i, string(id.identity), key
			break
		}
	}
	if pick.identity < 0 {
		return nil, newAlert(alertUnknownPSKIdentity, "unknown PSK identity %s", quoteIDs(ch.identities))
	}
	if ch2 && (pick.name != want.name || pick.identity != want.identity) {
		return nil, newAlert(alertIllegalParameter, "second ClientHello offers a different PSK identity")
	}

	// The binder's length tells the PSK's hash; find a suite with it.
	binder := ch.binders[pick.identity]
	hashID := 0
	switch len(binder) {
	case 32:
		hashID = 256
	case 48:
		hashID = 384
	default:
		return nil, newAlert(alertIllegalParameter, "PSK binder of %d bytes (not SHA-256 or SHA-384)", len(binder))
	}
	if ch2 {
		pick.suite = want.suite
		found := false
		for _, id := range ch.suites {
			found = found || id == want.suite.id
		}
		if !found || want.suite.hashID != hashID {
			return nil, newAlert(alertIllegalParameter, "second ClientHello does not offer the cipher suite chosen in HelloRetryRequest")
		}
	} else {
		// our order of preference (AES-GCM first on CPUs with AES
		// instructions: it is several times faster there than ChaCha20)
		offered := map[uint16]bool{}
		for _, id := range ch.suites {
			offered[id] = true
		}
		for _, id := range c.cfg.suites() {
			if s := suiteByID(id); s != nil && offered[id] && s.hashID == hashID {
				pick.suite = s
				break
			}
		}
		if pick.suite == nil {
			return nil, newAlert(alertHandshakeFailure, "no TLS 1.3 cipher suite in common with the client for a SHA-%d PSK (client offers %s)", hashID, suiteList(ch.suites))
		}
	}
	// Verify the binder over the transcript up to the binders list.
	h := pick.suite.hash()
	h.Write(prefix)
	h.Write(ch.raw[:ch.bindersStart])
	sum := h.Sum(nil)
	expect := newSchedule(pick.suite, pick.key).binder(sum)
	if !hmac.Equal(expect, binder) {
		return nil, newAlert(alertDecryptError, "PSK binder mismatch: wrong key for identity %q", pick.name)
	}

	// Group: a key share we accept, else ask for one (HelloRetryRequest).
	ours := c.cfg.groups()
	accept := func(g uint16) bool {
		for _, x := range ours {
			if x == g && curveOf(g) != nil {
				return true
			}
		}
		return false
	}
	if ch2 {
		for _, ks := range ch.keyShares {
			if ks.group == want.group {
				pick.group, pick.share = ks.group, ks.data
			}
		}
		if pick.share == nil || len(ch.keyShares) != 1 {
			return nil, newAlert(alertIllegalParameter, "second ClientHello lacks the key share for %s asked for", GroupName(want.group))
		}
		return pick, nil
	}
	for _, ks := range ch.keyShares {
		if accept(ks.group) {
			pick.group, pick.share = ks.group, ks.data
			return pick, nil
		}
	}
	for _, g := range ch.groups {
		if accept(g) {
			pick.group = g
			return pick, nil
		}
	}
	return nil, newAlert(alertHandshakeFailure, "no key exchange group in common with the client (this server accepts x25519, secp256r1, secp384r1)")
}

func suiteList(ids []uint16) string {
	var s []string
	for _, id := range ids {
		if su := suiteByID(id); su != nil {
			s = append(s, su.name)
		}
	}
	if len(s) == 0 {
		return "no TLS 1.3 suites"
	}
	return strings.Join(s, ", ")
}

func (c *Conn) serverHandshake() error {
	msg, err := c.readHandshake()
	if err != nil {
		return c.handshakeReadErr(err, "ClientHello")
	}
	ch, aerr := parseClientHello(msg)
	if aerr != nil {
		return aerr
	}
	if err := c.atRecordBoundary(); err != nil {
		return err
	}
	pick, err := c.choose(ch, nil, nil)
	if err != nil {
		return err
	}
	var transcript hash.Hash
	sentCCS := false
	var out []byte
	if pick.share == nil {
		// HelloRetryRequest for pick.group, then the second ClientHello.
		c.didHRR = true
		var ext []byte
		ext = appendExt(ext, extSupportedVersions, []byte{0x03, 0x04})
		ext = appendExt(ext, extKeyShare, []byte{byte(pick.group >> 8), byte(pick.group)})
		hrr := buildServerHello(helloRetryRandom[:], ch.sessionID, pick.suite.id, ext)
		prefix := append(messageHash(pick.suite, ch.raw), hrr...)
		out = c.appendRecord(out, recordHandshake, hrr)
		if len(ch.sessionID) > 0 {
			out = c.appendRecord(out, recordChangeCipherSpec, []byte{1})
			sentCCS = true
		}
		if err := c.flush(out); err != nil {
			return err
		}
		out = out[:0]
		if ch.earlyData {
			// 0-RTT data the client sent with its first hello is skipped
			c.skipEarly, c.skipBudget = true, 1<<20
		}
		msg, err := c.readHandshake()
		if err != nil {
			return c.handshakeReadErr(err, "second ClientHello")
		}
		c.skipEarly = false
		ch2, aerr := parseClientHello(msg)
		if aerr != nil {
			return aerr
		}
		if err := c.atRecordBoundary(); err != nil {
			return err
		}
		if ch2.earlyData {
			return newAlert(alertIllegalParameter, "second ClientHello offers early_data")
		}
		if string(ch2.sessionID) != string(ch.sessionID) {
			return newAlert(alertIllegalParameter, "second ClientHello changed the session id")
		}
		if pick, err = c.choose(ch2, prefix, pick); err != nil {
			return err
		}
		transcript = pick.suite.hash()
		transcript.Write(prefix)
		ch = ch2
	} else {
		transcript = pick.suite.hash()
	}
	transcript.Write(ch.raw)

	s := pick.suite
	c.suite, c.identity = s, pick.name
	priv, err := generateKey(pick.group, c.cfg.rand())
	if err != nil {
		return newAlert(alertInternalError, "generating a key share: %v", err)
	}
	shared, err := sharedSecret(priv, pick.share)
	if err != nil {
		return newAlert(alertIllegalParameter, "client's %s key share is invalid: %v", GroupName(pick.group), err)
	}
	random := make([]byte, 32)
	if _, err := io.ReadFull(c.cfg.rand(), random); err != nil {
		return newAlert(alertInternalError, "reading random: %v", err)
	}
	sh := buildServerHello(random, ch.sessionID, s.id, serverHelloExts(pick, priv))
	transcript.Write(sh)
	out = c.appendRecord(out, recordHandshake, sh)
	if len(ch.sessionID) > 0 && !sentCCS {
		out = c.appendRecord(out, recordChangeCipherSpec, []byte{1})
	}

	ks := newSchedule(s, pick.key)
	ks.setECDHE(shared)
	cHS, sHS := ks.handshakeSecrets(transcript.Sum(nil))
	if err := c.out.setSecret(s, sHS); err != nil {
		return newAlert(alertInternalError, "%v", err)
	}
	if err := c.in.setSecret(s, cHS); err != nil {
		return newAlert(alertInternalError, "%v", err)
	}
	if ch.earlyData {
		// we never accept 0-RTT: skip what the client sent under its early key
		c.skipEarly, c.skipBudget = true, 1<<20
	}
	ee := handshakeMsg(typeEncryptedExtensions, []byte{0, 0})
	transcript.Write(ee)
	out = c.appendRecord(out, recordHandshake, ee)
	fin := handshakeMsg(typeFinished, s.finishedMAC(sHS, transcript.Sum(nil)))
	transcript.Write(fin)
	out = c.appendRecord(out, recordHandshake, fin)
	if err := c.flush(out); err != nil {
		return err
	}
	thServerFin := transcript.Sum(nil)
	cAP, sAP := ks.applicationSecrets(thServerFin)
	if err := c.out.setSecret(s, sAP); err != nil {
		return newAlert(alertInternalError, "%v", err)
	}

	msg, err = c.readHandshake()
	if err != nil {
		return c.handshakeReadErr(err, "client Finished")
	}
	if msg[0] != typeFinished {
		return newAlert(alertUnexpectedMessage, "expected client Finished, got handshake message %d", msg[0])
	}
	want := s.finishedMAC(cHS, thServerFin)
	if subtle.ConstantTimeCompare(want, msg[4:]) != 1 {
		return newAlert(alertDecryptError, "client Finished does not verify")
	}
	if err := c.atRecordBoundary(); err != nil {
		return err
	}
	if err := c.in.setSecret(s, cAP); err != nil {
		return newAlert(alertInternalError, "%v", err)
	}
	return nil
}

func serverHelloExts(pick *serverChoice, priv *ecdh.PrivateKey) []byte {
	var ext []byte
	ext = appendExt(ext, extSupportedVersions, []byte{0x03, 0x04})
	pub := priv.PublicKey().Bytes()
	ks := []byte{byte(pick.group >> 8), byte(pick.group)}
	ks = appendVec16(ks, pub)
	ext = appendExt(ext, extKeyShare, ks)
	ext = appendExt(ext, extPreSharedKey, []byte{byte(pick.identity >> 8), byte(pick.identity)})
	return ext
}

// handshakeReadErr words a failure to read the peer's next message.
func (c *Conn) handshakeReadErr(err error, what string) error {
	if _, ok := err.(*AlertError); ok {
		return err
	}
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return fmt.Errorf("tls-psk: connection closed by the peer while waiting for %s: %w", what, err)
	}
	return fmt.Errorf("tls-psk: reading %s: %w", what, err)
}
