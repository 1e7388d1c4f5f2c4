package tlspsk

import (
	"crypto/ecdh"
	"io"
)

// Key exchange groups (RFC 8446 section 4.2.7).
const (
	GroupSecp256r1 uint16 = 23
	GroupSecp384r1 uint16 = 24
	GroupX25519    uint16 = 29
)

var defaultGroups = []uint16{GroupX25519, GroupSecp256r1, GroupSecp384r1}

func curveOf(g uint16) ecdh.Curve {
	switch g {
	case GroupX25519:
		return ecdh.X25519()
	case GroupSecp256r1:
		return ecdh.P256()
	case GroupSecp384r1:
		return ecdh.P384()
	}
	return nil
}

// GroupName names a key exchange group.
func GroupName(g uint16) string {
	switch g {
	case GroupX25519:
		return "x25519"
	case GroupSecp256r1:
		return "secp256r1"
	case GroupSecp384r1:
		return "secp384r1"
	}
	return "unknown"
}

func generateKey(g uint16, rand io.Reader) (*ecdh.PrivateKey, error) {
	return curveOf(g).GenerateKey(rand)
}

// sharedSecret computes the (EC)DHE secret with the peer's key share; a
// malformed or invalid point is an error.
func sharedSecret(priv *ecdh.PrivateKey, peer []byte) ([]byte, error) {
	pub, err := priv.Curve().NewPublicKey(peer)
	if err != nil {
		return nil, err
	}
	return priv.ECDH(pub)
}
