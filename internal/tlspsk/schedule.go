package tlspsk

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"hash"
)

// Cipher suites (RFC 8446 appendix B.4).
const (
	TLS_AES_128_GCM_SHA256       uint16 = 0x1301
	TLS_AES_256_GCM_SHA384       uint16 = 0x1302
	TLS_CHACHA20_POLY1305_SHA256 uint16 = 0x1303
)

// suite describes one TLS 1.3 cipher suite: its AEAD and hash.
type suite struct {
	id     uint16
	name   string
	keyLen int
	hash   func() hash.Hash
	hashID int // 256 or 384, to compare hashes of suites
	aead   func(key []byte) (cipher.AEAD, error)
}

func (s *suite) hashLen() int {
	if s.hashID == 384 {
		return 48
	}
	return 32
}

func aesGCM(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

var suites = []*suite{
	{id: TLS_AES_128_GCM_SHA256, name: "TLS_AES_128_GCM_SHA256", keyLen: 16, hash: sha256.New, hashID: 256, aead: aesGCM},
	{id: TLS_AES_256_GCM_SHA384, name: "TLS_AES_256_GCM_SHA384", keyLen: 32, hash: sha512.New384, hashID: 384, aead: aesGCM},
	{id: TLS_CHACHA20_POLY1305_SHA256, name: "TLS_CHACHA20_POLY1305_SHA256", keyLen: 32, hash: sha256.New, hashID: 256, aead: chachaAEAD},
}

func suiteByID(id uint16) *suite {
	for _, s := range suites {
		if s.id == id {
			return s
		}
	}
	return nil
}

// CipherSuiteName returns the IANA name of a TLS 1.3 suite this package knows.
func CipherSuiteName(id uint16) string {
	if s := suiteByID(id); s != nil {
		return s.name
	}
	return "unknown"
}

// extract is HKDF-Extract(salt, ikm); a nil salt or ikm means a string of
// hash-length zeros, as RFC 8446 section 7.1 uses.
func (s *suite) extract(ikm, salt []byte) []byte {
	if ikm == nil {
		ikm = make([]byte, s.hashLen())
	}
	if salt == nil {
		salt = make([]byte, s.hashLen())
	}
	prk, err := hkdf.Extract(s.hash, ikm, salt)
	if err != nil {
		panic("tlspsk: hkdf extract: " + err.Error())
	}
	return prk
}

// expandLabel is HKDF-Expand-Label(secret, label, context, length).
func (s *suite) expandLabel(secret []byte, label string, context []byte, length int) []byte {
	full := "tls13 " + label
	info := make([]byte, 0, 4+len(full)+len(context))
	info = append(info, byte(length>>8), byte(length), byte(len(full)))
	info = append(info, full...)
	info = append(info, byte(len(context)))
	info = append(info, context...)
	out, err := hkdf.Expand(s.hash, secret, string(info), length)
	if err != nil {
		panic("tlspsk: hkdf expand: " + err.Error())
	}
	return out
}

// deriveSecret is Derive-Secret(secret, label, messages) with the transcript
// hash already computed (nil: the hash of the empty string).
func (s *suite) deriveSecret(secret []byte, label string, transcriptHash []byte) []byte {
	if transcriptHash == nil {
		h := s.hash()
		transcriptHash = h.Sum(nil)
	}
	return s.expandLabel(secret, label, transcriptHash, s.hashLen())
}

// finishedMAC is HMAC(finished_key(base), transcriptHash) (section 4.4.4).
func (s *suite) finishedMAC(base, transcriptHash []byte) []byte {
	fk := s.expandLabel(base, "finished", nil, s.hashLen())
	m := hmac.New(s.hash, fk)
	m.Write(transcriptHash)
	return m.Sum(nil)
}

// trafficKeys derives the AEAD key and IV of a traffic secret.
func (s *suite) trafficKeys(secret []byte) (key, iv []byte) {
	return s.expandLabel(secret, "key", nil, s.keyLen), s.expandLabel(secret, "iv", nil, 12)
}

// nextTrafficSecret is the KeyUpdate step (section 7.2).
func (s *suite) nextTrafficSecret(secret []byte) []byte {
	return s.expandLabel(secret, "traffic upd", nil, s.hashLen())
}

// schedule holds the secrets of one handshake with an external PSK.
type schedule struct {
	s         *suite
	early     []byte
	handshake []byte
	master    []byte
}

func newSchedule(s *suite, psk []byte) *schedule {
	return &schedule{s: s, early: s.extract(psk, nil)}
}

// binderKey is the key the PSK binder is made with ("ext binder": external PSK).
// A resumption PSK would use "res binder"; RFC 8448's trace is one.
func (k *schedule) binderKey(label string) []byte { return k.s.deriveSecret(k.early, label, nil) }

// binder computes the PSK binder over the hash of the truncated transcript.
func (k *schedule) binder(truncatedHash []byte) []byte {
	return k.s.finishedMAC(k.binderKey("ext binder"), truncatedHash)
}

// setECDHE moves to the handshake secret.
func (k *schedule) setECDHE(shared []byte) {
	k.handshake = k.s.extract(shared, k.s.deriveSecret(k.early, "derived", nil))
	k.master = k.s.extract(nil, k.s.deriveSecret(k.handshake, "derived", nil))
}

func (k *schedule) handshakeSecrets(chsh []byte) (client, server []byte) {
	return k.s.deriveSecret(k.handshake, "c hs traffic", chsh), k.s.deriveSecret(k.handshake, "s hs traffic", chsh)
}

func (k *schedule) applicationSecrets(chsf []byte) (client, server []byte) {
	return k.s.deriveSecret(k.master, "c ap traffic", chsf), k.s.deriveSecret(k.master, "s ap traffic", chsf)
}
