package nbd

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// TLSPolicy says whether a server, or one export, accepts plaintext clients.
// The server's policy is the protocol's TLS mode: off is NOTLS, allowed is
// SELECTIVETLS (with exports that may require TLS), required is FORCEDTLS.
type TLSPolicy int

const (
	// TLSDefault on a Server means TLSAllowed when it has a TLSConfig and
	// TLSOff otherwise; on an Export it means the server's policy.
	TLSDefault TLSPolicy = iota
	// TLSOff refuses NBD_OPT_STARTTLS with NBD_REP_ERR_POLICY (server only;
	// on an export it does not forbid TLS, it just does not demand it).
	TLSOff
	// TLSAllowed serves plaintext and TLS clients.
	TLSAllowed
	// TLSRequired refuses plaintext clients with NBD_REP_ERR_TLS_REQD. On
	// a server every option but STARTTLS and ABORT is refused before TLS;
	// on an export, INFO and GO naming it are.
	TLSRequired
)

// ParseTLSPolicy reads "off", "allowed" (or "on"), "required" (or
// "require"); "" and "default" give TLSDefault.
func ParseTLSPolicy(s string) (TLSPolicy, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "default":
		return TLSDefault, nil
	case "off", "no", "false":
		return TLSOff, nil
	case "allowed", "allow", "on", "yes", "true":
		return TLSAllowed, nil
	case "required", "require":
		return TLSRequired, nil
	}
	return TLSDefault, fmt.Errorf("unknown TLS policy %q (want off, on/allowed or require/required)", s)
}

func (p TLSPolicy) String() string {
	switch p {
	case TLSOff:
		return "off"
	case TLSAllowed:
		return "allowed"
	case TLSRequired:
		return "required"
	}
	return "default"
}

// MarshalText and UnmarshalText let a TLSPolicy be a JSON string.
func (p TLSPolicy) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

func (p *TLSPolicy) UnmarshalText(b []byte) error {
	v, err := ParseTLSPolicy(string(b))
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// TLSFiles names PEM files for a TLS configuration.
type TLSFiles struct {
	// CA verifies the peer's certificate (a client's, for a server that
	// verifies peers; the server's, for a client). Empty: the system roots
	// on a client, no client verification on a server.
	CA string
	// Cert and Key are this side's certificate chain and private key.
	// A client without them sends no certificate.
	Cert, Key string
}

// TLSFilesFromDir returns the files of an x509 directory laid out as
// nbdkit's and qemu's --tls-certificates / tls-creds-x509 dir= expect:
// ca-cert.pem, and server-cert.pem with server-key.pem (or, with client
// set, client-cert.pem with client-key.pem). Files that do not exist are
// left empty.
func TLSFilesFromDir(dir string, client bool) TLSFiles {
	side := "server"
	if client {
		side = "client"
	}
	pick := func(name string) string {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err != nil {
			return ""
		}
		return p
	}
	return TLSFiles{CA: pick("ca-cert.pem"), Cert: pick(side + "-cert.pem"), Key: pick(side + "-key.pem")}
}

func (f TLSFiles) pool() (*x509.CertPool, error) {
	if f.CA == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, fmt.Errorf("reading CA certificates: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate found", f.CA)
	}
	return pool, nil
}

func (f TLSFiles) keyPair() ([]tls.Certificate, error) {
	if f.Cert == "" && f.Key == "" {
		return nil, nil
	}
	if f.Cert == "" || f.Key == "" {
		return nil, errors.New("a TLS certificate needs both its certificate and its key file")
	}
	kp, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, fmt.Errorf("loading TLS certificate %s: %w", f.Cert, err)
	}
	return []tls.Certificate{kp}, nil
}

// ServerConfig builds a server configuration (TLS 1.2 or later). With
// verifyPeer, clients must present a certificate signed by CA (mutual TLS).
func (f TLSFiles) ServerConfig(verifyPeer bool) (*tls.Config, error) {
	certs, err := f.keyPair()
	if err != nil {
		return nil, err
	}
	if len(certs) == 0 {
		return nil, errors.New("a TLS server needs a certificate and a key")
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: certs}
	if verifyPeer {
		pool, err := f.pool()
		if err != nil {
			return nil, err
		}
		if pool == nil {
			return nil, errors.New("verifying client certificates needs a CA certificate")
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// ClientConfig builds a client configuration (TLS 1.2 or later) that
// verifies the server against CA for serverName (a host name or IP
// address), presenting Cert if it is set.
func (f TLSFiles) ClientConfig(serverName string) (*tls.Config, error) {
	certs, err := f.keyPair()
	if err != nil {
		return nil, err
	}
	pool, err := f.pool()
	if err != nil {
		return nil, err
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: certs, RootCAs: pool, ServerName: serverName}, nil
}
