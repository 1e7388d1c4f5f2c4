package cli

import (
	"crypto/tls"
	"fmt"

	"github.com/spf13/pflag"

	"github.com/hacs/hacs/internal/nbd"
)

// tlsServerFlags are the NBD server's TLS options (x509 certificates; the
// layout of --tls-certificates is nbdkit's and qemu's).
type tlsServerFlags struct {
	mode       string
	dir        string
	cert, key  string
	ca         string
	verifyPeer bool
}

func (f *tlsServerFlags) register(fs *pflag.FlagSet, defaultMode string) {
	fs.StringVar(&f.mode, "tls", defaultMode, "NBD TLS: off, on (plaintext or TLS) or require (plaintext clients refused)")
	fs.StringVar(&f.dir, "tls-certificates", "", "directory with ca-cert.pem, server-cert.pem and server-key.pem (nbdkit/qemu layout)")
	fs.StringVar(&f.cert, "tls-cert", "", "server certificate (PEM; overrides --tls-certificates)")
	fs.StringVar(&f.key, "tls-key", "", "server private key (PEM; overrides --tls-certificates)")
	fs.StringVar(&f.ca, "tls-ca", "", "CA certificate that signs client certificates (for --tls-verify-peer)")
	fs.BoolVar(&f.verifyPeer, "tls-verify-peer", false, "require clients to present a certificate signed by the CA (mutual TLS)")
}

func (f *tlsServerFlags) files() nbd.TLSFiles {
	var files nbd.TLSFiles
	if f.dir != "" {
		files = nbd.TLSFilesFromDir(f.dir, false)
	}
	if f.cert != "" {
		files.Cert = f.cert
	}
	if f.key != "" {
		files.Key = f.key
	}
	if f.ca != "" {
		files.CA = f.ca
	}
	return files
}

// config returns the server TLS configuration and policy; a nil
// configuration means TLS is off.
func (f *tlsServerFlags) config() (*tls.Config, nbd.TLSPolicy, error) {
	policy, err := nbd.ParseTLSPolicy(f.mode)
	if err != nil {
		return nil, 0, fmt.Errorf("--tls: %w", err)
	}
	certGiven := f.dir != "" || f.cert != "" || f.key != ""
	if policy == nbd.TLSDefault {
		policy = nbd.TLSOff
		if certGiven {
			policy = nbd.TLSAllowed
		}
	}
	if policy == nbd.TLSOff {
		if certGiven || f.verifyPeer {
			return nil, 0, fmt.Errorf("--tls off: TLS certificate options given")
		}
		return nil, nbd.TLSOff, nil
	}
	if !certGiven {
		return nil, 0, fmt.Errorf("--tls %s needs a certificate: --tls-certificates DIR or --tls-cert and --tls-key", f.mode)
	}
	cfg, err := f.files().ServerConfig(f.verifyPeer)
	if err != nil {
		return nil, 0, fmt.Errorf("TLS: %w", err)
	}
	return cfg, policy, nil
}
