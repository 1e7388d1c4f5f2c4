package tlspsk

import (
	"errors"
	"fmt"
	"io"
)

// ClientHelloInfo is what Sniff learned from a client's first flight.
type ClientHelloInfo struct {
	OffersPSK  bool     // pre_shared_key extension present
	Identities []string // the PSK identities offered
	TLS13      bool     // supported_versions includes TLS 1.3
}

// ErrNotTLS is wrapped by Sniff's error when the first bytes are not a TLS
// handshake record.
var ErrNotTLS = errors.New("not a TLS handshake")

// Sniff reads the client's first handshake message (a ClientHello, possibly
// across several records) from r, reading whole records and nothing after
// the one that ends the ClientHello. It returns the bytes read (also on
// error), to replay
// (into Server's prefix, or into crypto/tls for a certificate client), and
// what the hello offers. Malformed input gives an error.
func Sniff(r io.Reader) (raw []byte, info ClientHelloInfo, err error) {
	// readN appends exactly n bytes from r to raw; raw keeps whatever was
	// read, also on error, so that it is exactly the bytes consumed.
	readN := func(n int) error {
		start := len(raw)
		raw = append(raw, make([]byte, n)...)
		m, err := io.ReadFull(r, raw[start:])
		raw = raw[:start+m]
		return err
	}
	var msg []byte
	for {
		start := len(raw)
		if err := readN(recordHeaderLen); err != nil {
			return raw, info, fmt.Errorf("tls-psk: reading ClientHello record: %w", err)
		}
		hdr := raw[start:]
		if hdr[0] != recordHandshake || hdr[1] != 3 {
			return raw, info, fmt.Errorf("tls-psk: first bytes %x: %w", hdr, ErrNotTLS)
		}
		n := int(hdr[3])<<8 | int(hdr[4])
		if n == 0 || n > maxPlaintext {
			return raw, info, fmt.Errorf("tls-psk: ClientHello record of %d bytes", n)
		}
		start = len(raw)
		if err := readN(n); err != nil {
			return raw, info, fmt.Errorf("tls-psk: reading ClientHello record: %w", err)
		}
		msg = append(msg, raw[start:]...)
		if len(msg) >= 4 {
			if msg[0] != typeClientHello {
				return raw, info, fmt.Errorf("tls-psk: first handshake message is type %d, not ClientHello", msg[0])
			}
			l := int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3])
			if l > maxHandshake {
				return raw, info, fmt.Errorf("tls-psk: ClientHello of %d bytes is too long", l)
			}
			if len(msg) > 4+l {
				return raw, info, fmt.Errorf("tls-psk: data after the ClientHello in its record")
			}
			if len(msg) == 4+l {
				break
			}
		}
	}
	ch, aerr := parseClientHello(msg)
	if aerr != nil {
		return raw, info, fmt.Errorf("tls-psk: %s", aerr.Msg)
	}
	info.OffersPSK = ch.hasPSK
	for _, id := range ch.identities {
		info.Identities = append(info.Identities, string(id.identity))
	}
	info.TLS13 = ch.offersVersion(versionTLS13)
	return raw, info, nil
}
