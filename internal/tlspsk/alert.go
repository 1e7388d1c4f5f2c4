package tlspsk

import (
	"errors"
	"fmt"
)

// Alert descriptions (RFC 8446 section 6).
const (
	alertCloseNotify           uint8 = 0
	alertUnexpectedMessage     uint8 = 10
	alertBadRecordMAC          uint8 = 20
	alertRecordOverflow        uint8 = 22
	alertHandshakeFailure      uint8 = 40
	alertIllegalParameter      uint8 = 47
	alertDecodeError           uint8 = 50
	alertDecryptError          uint8 = 51
	alertProtocolVersion       uint8 = 70
	alertInsufficientSecurity  uint8 = 71
	alertInternalError         uint8 = 80
	alertUserCanceled          uint8 = 90
	alertMissingExtension      uint8 = 109
	alertUnsupportedExtension  uint8 = 110
	alertUnknownPSKIdentity    uint8 = 115
	alertNoApplicationProtocol uint8 = 120
	alertLevelWarning          uint8 = 1
	alertLevelFatal            uint8 = 2
)

var alertNames = map[uint8]string{
	0:   "close_notify",
	10:  "unexpected_message",
	20:  "bad_record_mac",
	22:  "record_overflow",
	40:  "handshake_failure",
	42:  "bad_certificate",
	43:  "unsupported_certificate",
	44:  "certificate_revoked",
	45:  "certificate_expired",
	46:  "certificate_unknown",
	47:  "illegal_parameter",
	48:  "unknown_ca",
	49:  "access_denied",
	50:  "decode_error",
	51:  "decrypt_error",
	70:  "protocol_version",
	71:  "insufficient_security",
	80:  "internal_error",
	86:  "inappropriate_fallback",
	90:  "user_canceled",
	109: "missing_extension",
	110: "unsupported_extension",
	112: "unrecognized_name",
	113: "bad_certificate_status_response",
	115: "unknown_psk_identity",
	116: "certificate_required",
	120: "no_application_protocol",
}

// AlertName returns the RFC 8446 name of an alert description.
func AlertName(a uint8) string {
	if n, ok := alertNames[a]; ok {
		return n
	}
	return fmt.Sprintf("alert(%d)", a)
}

// AlertError is a handshake or record-layer failure tied to a TLS alert:
// either one this side sent to its peer (Received false; Msg says why) or one
// the peer sent (Received true).
type AlertError struct {
	Alert    uint8  // alert description, e.g. 115 unknown_psk_identity
	Msg      string // the reason, e.g. `unknown PSK identity "bob"`
	Received bool   // true: the peer sent this alert
	Err      error  // an underlying cause, if any
}

func (e *AlertError) Error() string {
	s := "tls-psk: " + e.Msg
	if !e.Received {
		s += " (sent alert " + AlertName(e.Alert) + ")"
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *AlertError) Unwrap() error { return e.Err }

// newAlert makes a local failure that sends alert a.
func newAlert(a uint8, format string, args ...any) *AlertError {
	return &AlertError{Alert: a, Msg: fmt.Sprintf(format, args...)}
}

// peerAlert is the error for an alert received from the peer.
func peerAlert(a uint8) *AlertError {
	return &AlertError{Alert: a, Received: true, Msg: "peer sent alert " + AlertName(a)}
}

// ErrClosed is returned by Write after Close or CloseWrite.
var ErrClosed = errors.New("tls-psk: connection closed for writing")
