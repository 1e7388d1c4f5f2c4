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
	prefix     string // flag name prefix ("" or "export-")
	mode       string
	dir        string
	cert, key  string
	ca         string
	verifyPeer bool
}

// register adds --PREFIXtls and its companions. defaultMode "" means on
// when a certificate is given, else off.
func (f *tlsServerFlags) register(fs *pflag.FlagSet, prefix, defaultMode, what string) {
	f.prefix = prefix
	p := "--" + prefix
	fs.StringVar(&f.mode, prefix+"tls", defaultMode, what+" TLS: off, on (plaintext or TLS) or require (plaintext clients refused); default: on when a certificate is given, else off")
	fs.StringVar(&f.dir, prefix+"tls-certificates", "", "directory with ca-cert.pem, server-cert.pem and server-key.pem (nbdkit/qemu layout)")
	fs.StringVar(&f.cert, prefix+"tls-cert", "", "server certificate (PEM; overrides "+p+"tls-certificates)")
	fs.StringVar(&f.key, prefix+"tls-key", "", "server private key (PEM; overrides "+p+"tls-certificates)")
	fs.StringVar(&f.ca, prefix+"tls-ca", "", "CA certificate that signs client certificates (for "+p+"tls-verify-peer)")
	fs.BoolVar(&f.verifyPeer, prefix+"tls-verify-peer", false, "require clients to present a certificate signed by the CA (mutual TLS)")
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
		return nil, 0, fmt.Errorf("--%stls: %w", f.prefix, err)
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
			return nil, 0, fmt.Errorf("--%stls off: TLS certificate options given", f.prefix)
		}
		return nil, nbd.TLSOff, nil
	}
	if !certGiven {
		return nil, 0, fmt.Errorf("--%[1]stls %[2]s needs a certificate: --%[1]stls-certificates DIR or --%[1]stls-cert and --%[1]stls-key", f.prefix, f.mode)
	}
	files := f.files()
	if f.dir != "" && (files.Cert == "" || files.Key == "") && (f.cert == "" || f.key == "") {
		return nil, 0, fmt.Errorf("--%stls-certificates %s: no server-cert.pem and server-key.pem there", f.prefix, f.dir)
	}
	if f.verifyPeer && files.CA == "" {
		return nil, 0, fmt.Errorf("--%stls-verify-peer needs the CA of the client certificates: ca-cert.pem in --%[1]stls-certificates or --%[1]stls-ca", f.prefix)
	}
	cfg, err := files.ServerConfig(f.verifyPeer)
	if err != nil {
		return nil, 0, fmt.Errorf("TLS: %w", err)
	}
	return cfg, policy, nil
}

// tlsClientFlags are an NBD client's TLS options.
type tlsClientFlags struct {
	dir       string
	ca        string
	cert, key string
}

func (f *tlsClientFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.dir, "tls-certificates", "", "directory with ca-cert.pem and optionally client-cert.pem, client-key.pem (nbdkit/qemu layout)")
	fs.StringVar(&f.ca, "tls-ca", "", "CA certificate that signs the servers' certificates (overrides --tls-certificates)")
	fs.StringVar(&f.cert, "tls-cert", "", "client certificate for servers that verify clients (PEM)")
	fs.StringVar(&f.key, "tls-key", "", "client private key (PEM)")
}

func (f *tlsClientFlags) given() bool {
	return f.dir != "" || f.ca != "" || f.cert != "" || f.key != ""
}

// config returns the client configuration (nil when no option is given).
// The server name is filled in by nbd.Dial from the address.
func (f *tlsClientFlags) config() (*tls.Config, error) {
	if !f.given() {
		return nil, nil
	}
	var files nbd.TLSFiles
	if f.dir != "" {
		files = nbd.TLSFilesFromDir(f.dir, true)
	}
	if f.ca != "" {
		files.CA = f.ca
	}
	if f.cert != "" {
		files.Cert = f.cert
	}
	if f.key != "" {
		files.Key = f.key
	}
	if files.CA == "" {
		return nil, fmt.Errorf("TLS: no CA certificate (--tls-ca or ca-cert.pem in --tls-certificates)")
	}
	cfg, err := files.ClientConfig("")
	if err != nil {
		return nil, fmt.Errorf("TLS: %w", err)
	}
	return cfg, nil
}
