package tlspsk

import (
	"crypto/sha256"
	"fmt"
)

// Handshake message types (RFC 8446 section 4).
const (
	typeClientHello         uint8 = 1
	typeServerHello         uint8 = 2
	typeNewSessionTicket    uint8 = 4
	typeEndOfEarlyData      uint8 = 5
	typeEncryptedExtensions uint8 = 8
	typeCertificate         uint8 = 11
	typeCertificateRequest  uint8 = 13
	typeCertificateVerify   uint8 = 15
	typeFinished            uint8 = 20
	typeKeyUpdate           uint8 = 24
	typeMessageHash         uint8 = 254
)

// Extension types.
const (
	extServerName          uint16 = 0
	extSupportedGroups     uint16 = 10
	extSignatureAlgorithms uint16 = 13
	extPreSharedKey        uint16 = 41
	extEarlyData           uint16 = 42
	extSupportedVersions   uint16 = 43
	extCookie              uint16 = 44
	extPSKModes            uint16 = 45
	extKeyShare            uint16 = 51
)

const (
	versionTLS12 uint16 = 0x0303
	versionTLS13 uint16 = 0x0304

	pskModeKE    uint8 = 0 // psk_ke: PSK only, no forward secrecy
	pskModeDHEKE uint8 = 1 // psk_dhe_ke
)

// helloRetryRandom is ServerHello.random of a HelloRetryRequest: SHA-256 of
// "HelloRetryRequest" (RFC 8446 section 4.1.3).
var helloRetryRandom = sha256.Sum256([]byte("HelloRetryRequest"))

type keyShare struct {
	group uint16
	data  []byte
}

type pskIdentity struct {
	identity []byte
	age      uint32
}

// clientHello is a parsed ClientHello; raw is the whole message with its
// 4-byte header.
type clientHello struct {
	raw          []byte
	version      uint16
	random       []byte
	sessionID    []byte
	suites       []uint16
	compression  []byte
	hasVersions  bool
	versions     []uint16
	groups       []uint16
	hasKeyShare  bool
	keyShares    []keyShare
	hasPSKModes  bool
	pskModes     []uint8
	hasPSK       bool
	identities   []pskIdentity
	binders      [][]byte
	bindersStart int // offset in raw of the binders list: raw[:bindersStart] is the truncated hello
	earlyData    bool
	cookie       []byte
}

// errDecode is a malformed message.
func errDecode(what string) *AlertError {
	return newAlert(alertDecodeError, "malformed %s", what)
}

// parseClientHello decodes a ClientHello message (with header).
func parseClientHello(raw []byte) (*clientHello, *AlertError) {
	ch := &clientHello{raw: raw}
	p := parser{b: raw}
	if p.u8() != typeClientHello {
		return nil, newAlert(alertUnexpectedMessage, "expected ClientHello")
	}
	body := p.vec24()
	if !p.ok() || !p.empty() {
		return nil, errDecode("ClientHello (length)")
	}
	p = parser{b: body}
	ch.version = p.u16()
	ch.random = p.take(32)
	ch.sessionID = p.vec8()
	cs := p.vec16()
	ch.compression = p.vec8()
	if !p.ok() || len(ch.sessionID) > 32 || len(cs)%2 != 0 || len(cs) == 0 {
		return nil, errDecode("ClientHello")
	}
	for i := 0; i < len(cs); i += 2 {
		ch.suites = append(ch.suites, uint16(cs[i])<<8|uint16(cs[i+1]))
	}
	if p.empty() { // no extensions at all: an old client
		return ch, nil
	}
	extStart := len(raw) - len(p.b) + 2 // offset in raw of the first extension
	exts := p.vec16()
	if !p.ok() || !p.empty() {
		return nil, errDecode("ClientHello extensions")
	}
	seen := map[uint16]bool{}
	ep := parser{b: exts}
	for !ep.empty() {
		off := extStart + len(exts) - len(ep.b)
		typ := ep.u16()
		data := ep.vec16()
		if !ep.ok() {
			return nil, errDecode("ClientHello extension")
		}
		if seen[typ] {
			return nil, newAlert(alertIllegalParameter, "ClientHello has extension %d twice", typ)
		}
		seen[typ] = true
		if ch.hasPSK {
			return nil, newAlert(alertIllegalParameter, "pre_shared_key is not the last ClientHello extension")
		}
		d := parser{b: data}
		switch typ {
		case extSupportedVersions:
			ch.hasVersions = true
			l := d.vec8()
			if !d.ok() || !d.empty() || len(l)%2 != 0 || len(l) == 0 {
				return nil, errDecode("supported_versions")
			}
			for i := 0; i < len(l); i += 2 {
				ch.versions = append(ch.versions, uint16(l[i])<<8|uint16(l[i+1]))
			}
		case extSupportedGroups:
			l := d.vec16()
			if !d.ok() || !d.empty() || len(l)%2 != 0 {
				return nil, errDecode("supported_groups")
			}
			for i := 0; i < len(l); i += 2 {
				ch.groups = append(ch.groups, uint16(l[i])<<8|uint16(l[i+1]))
			}
		case extKeyShare:
			ch.hasKeyShare = true
			l := d.vec16()
			if !d.ok() || !d.empty() {
				return nil, errDecode("key_share")
			}
			kp := parser{b: l}
			for !kp.empty() {
				g := kp.u16()
				k := kp.vec16()
				if !kp.ok() || len(k) == 0 {
					return nil, errDecode("key_share entry")
				}
				ch.keyShares = append(ch.keyShares, keyShare{group: g, data: k})
			}
		case extPSKModes:
			ch.hasPSKModes = true
			l := d.vec8()
			if !d.ok() || !d.empty() || len(l) == 0 {
				return nil, errDecode("psk_key_exchange_modes")
			}
			ch.pskModes = l
		case extEarlyData:
			if len(data) != 0 {
				return nil, errDecode("early_data")
			}
			ch.earlyData = true
		case extCookie:
			c := d.vec16()
			if !d.ok() || !d.empty() || len(c) == 0 {
				return nil, errDecode("cookie")
			}
			ch.cookie = c
		case extPreSharedKey:
			ch.hasPSK = true
			ids := d.vec16()
			ch.bindersStart = off + 4 + (len(data) - len(d.b))
			bs := d.vec16()
			if !d.ok() || !d.empty() || len(ids) == 0 || len(bs) == 0 {
				return nil, errDecode("pre_shared_key")
			}
			ip := parser{b: ids}
			for !ip.empty() {
				id := ip.vec16()
				age := ip.u32()
				if !ip.ok() || len(id) == 0 {
					return nil, errDecode("pre_shared_key identity")
				}
				ch.identities = append(ch.identities, pskIdentity{identity: id, age: age})
			}
			bp := parser{b: bs}
			for !bp.empty() {
				b := bp.vec8()
				if !bp.ok() || len(b) < 32 {
					return nil, errDecode("pre_shared_key binder")
				}
				ch.binders = append(ch.binders, b)
			}
			if len(ch.binders) != len(ch.identities) {
				return nil, newAlert(alertIllegalParameter, "pre_shared_key has %d identities but %d binders", len(ch.identities), len(ch.binders))
			}
		}
	}
	return ch, nil
}

func (ch *clientHello) offersVersion(v uint16) bool {
	for _, x := range ch.versions {
		if x == v {
			return true
		}
	}
	return false
}

// buildServerHello encodes a ServerHello (or HelloRetryRequest) message.
func buildServerHello(random, sessionID []byte, suite uint16, exts []byte) []byte {
	b := make([]byte, 0, 128)
	b = appendU16(b, versionTLS12)
	b = append(b, random...)
	b = appendVec8(b, sessionID)
	b = appendU16(b, suite)
	b = append(b, 0)
	b = appendVec16(b, exts)
	return handshakeMsg(typeServerHello, b)
}

func appendExt(b []byte, typ uint16, data []byte) []byte {
	return appendVec16(appendU16(b, typ), data)
}

// serverHello is a parsed ServerHello or HelloRetryRequest.
type serverHello struct {
	raw         []byte
	random      []byte
	sessionID   []byte
	suite       uint16
	compression uint8
	version     uint16 // from supported_versions, 0 if absent
	keyShare    keyShare
	hasKeyShare bool
	hrrGroup    uint16 // HelloRetryRequest: the group asked for
	hasPSK      bool
	selectedPSK uint16
	cookie      []byte
	isHRR       bool
}

func parseServerHello(raw []byte) (*serverHello, *AlertError) {
	sh := &serverHello{raw: raw}
	p := parser{b: raw[4:]}
	legacy := p.u16()
	sh.random = p.take(32)
	sh.sessionID = p.vec8()
	sh.suite = p.u16()
	sh.compression = p.u8()
	if !p.ok() {
		return nil, errDecode("ServerHello")
	}
	sh.isHRR = string(sh.random) == string(helloRetryRandom[:])
	if p.empty() {
		if legacy < versionTLS13 {
			return nil, newAlert(alertProtocolVersion, "server chose TLS version %#04x; PSK mode needs TLS 1.3", legacy)
		}
		return nil, errDecode("ServerHello (no extensions)")
	}
	exts := p.vec16()
	if !p.ok() || !p.empty() {
		return nil, errDecode("ServerHello extensions")
	}
	seen := map[uint16]bool{}
	ep := parser{b: exts}
	for !ep.empty() {
		typ := ep.u16()
		data := ep.vec16()
		if !ep.ok() {
			return nil, errDecode("ServerHello extension")
		}
		if seen[typ] {
			return nil, newAlert(alertIllegalParameter, "ServerHello has extension %d twice", typ)
		}
		seen[typ] = true
		d := parser{b: data}
		switch typ {
		case extSupportedVersions:
			sh.version = d.u16()
		case extKeyShare:
			sh.hasKeyShare = true
			if sh.isHRR {
				sh.hrrGroup = d.u16()
			} else {
				sh.keyShare.group = d.u16()
				sh.keyShare.data = d.vec16()
			}
		case extPreSharedKey:
			sh.hasPSK = true
			sh.selectedPSK = d.u16()
		case extCookie:
			sh.cookie = d.vec16()
		default:
			return nil, newAlert(alertUnsupportedExtension, "ServerHello has unexpected extension %d", typ)
		}
		if !d.ok() || !d.empty() {
			return nil, errDecode(fmt.Sprintf("ServerHello extension %d", typ))
		}
	}
	if sh.version == 0 {
		return nil, newAlert(alertProtocolVersion, "server does not speak TLS 1.3 (it chose version %#04x); PSK mode needs TLS 1.3", legacy)
	}
	if sh.version != versionTLS13 {
		return nil, newAlert(alertIllegalParameter, "server chose version %#04x in supported_versions", sh.version)
	}
	return sh, nil
}

// messageHash replaces ClientHello1 in the transcript after a
// HelloRetryRequest (RFC 8446 section 4.4.1).
func messageHash(s *suite, ch1 []byte) []byte {
	h := s.hash()
	h.Write(ch1)
	return handshakeMsg(typeMessageHash, h.Sum(nil))
}
