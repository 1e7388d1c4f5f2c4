package cli

import (
	"crypto/tls"
	"fmt"

	"github.com/spf13/pflag"

	"github.com/hacs/hacs/internal/nbd"
	"github.com/hacs/hacs/internal/tlspsk"
)

// tlsServerFlags are the NBD server's TLS options: x509 certificates (the
// layout of --tls-certificates is nbdkit's and qemu's) and/or pre-shared
// keys (nbdkit's --tls-psk file).
type tlsServerFlags struct {
	prefix     string // flag name prefix ("" or "export-")
	mode       string
	psk        string
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
	fs.StringVar(&f.mode, prefix+"tls", defaultMode, what+" TLS: off, on (plaintext or TLS) or require (plaintext clients refused); default: on when a certificate or --"+prefix+"tls-psk is given, else off")
	fs.StringVar(&f.psk, prefix+"tls-psk", "", "pre-shared keys file (psktool format, IDENTITY:HEXKEY lines, as nbdkit --tls-psk): clients offering one of these identities with its key get TLS 1.3 with that key; with or without certificates; re-read on SIGHUP and when the file changes (an identity removed or whose key changed loses its connections)")
	fs.StringVar(&f.dir, prefix+"tls-certificates", "", "directory with ca-cert.pem, server-cert.pem and server-key.pem (nbdkit/qemu layout)")
	fs.StringVar(&f.cert, prefix+"tls-cert", "", "server certificate (PEM; overrides "+p+"tls-certificates)")
	fs.StringVar(&f.key, prefix+"tls-key", "", "server private key (PEM; overrides "+p+"tls-certificates)")
	fs.StringVar(&f.ca, prefix+"tls-ca", "", "CA certificate that signs client certificates (for "+p+"tls-verify-peer)")
	fs.BoolVar(&f.verifyPeer, prefix+"tls-verify-peer", false, "require clients to present a certificate signed by the CA (mutual TLS)")
}

func (f *tlsServerFlags) files() nbd.TLSFiles { return tlsFiles(f.dir, f.ca, f.cert, f.key, false) }

// files are the client's TLS files: those of --tls-certificates, each
// replaced by its own flag when given.
func (f *tlsClientFlags) files() nbd.TLSFiles { return tlsFiles(f.dir, f.ca, f.cert, f.key, true) }

// tlsFiles are the files of an x509 directory (nbdkit's and qemu's layout,
// the server's or the client's side), each replaced by ca, cert or key
// when given.
func tlsFiles(dir, ca, cert, key string, client bool) nbd.TLSFiles {
	var files nbd.TLSFiles
	if dir != "" {
		files = nbd.TLSFilesFromDir(dir, client)
	}
	if cert != "" {
		files.Cert = cert
	}
	if key != "" {
		files.Key = key
	}
	if ca != "" {
		files.CA = ca
	}
	return files
}

// config returns the server TLS configuration (x509, nil without a
// certificate), the pre-shared keys (nil without --tls-psk) and the policy;
// TLS is off when both are nil.
func (f *tlsServerFlags) config() (*tls.Config, tlspsk.Keys, nbd.TLSPolicy, error) {
	policy, err := nbd.ParseTLSPolicy(f.mode)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("--%stls: %w", f.prefix, err)
	}
	certGiven := f.dir != "" || f.cert != "" || f.key != ""
	if policy == nbd.TLSDefault {
		policy = nbd.TLSOff
		if certGiven || f.psk != "" {
			policy = nbd.TLSAllowed
		}
	}
	if policy == nbd.TLSOff {
		if certGiven || f.verifyPeer || f.psk != "" {
			return nil, nil, 0, fmt.Errorf("--%stls off: TLS certificate or pre-shared key options given", f.prefix)
		}
		return nil, nil, nbd.TLSOff, nil
	}
	var keys tlspsk.Keys
	if f.psk != "" {
		if keys, err = tlspsk.LoadKeys(f.psk); err != nil {
			return nil, nil, 0, fmt.Errorf("--%stls-psk: %w", f.prefix, err)
		}
		if len(keys) == 0 {
			return nil, nil, 0, fmt.Errorf("--%stls-psk %s: no keys in the file", f.prefix, f.psk)
		}
	}
	if !certGiven {
		if keys != nil {
			if f.verifyPeer {
				return nil, nil, 0, fmt.Errorf("--%stls-verify-peer needs certificates (with --%[1]stls-psk alone, the key is what authenticates a client)", f.prefix)
			}
			return nil, keys, policy, nil
		}
		return nil, nil, 0, fmt.Errorf("--%[1]stls %[2]s needs a certificate or pre-shared keys: --%[1]stls-certificates DIR, --%[1]stls-cert and --%[1]stls-key, or --%[1]stls-psk FILE", f.prefix, f.mode)
	}
	files := f.files()
	if f.dir != "" && (files.Cert == "" || files.Key == "") && (f.cert == "" || f.key == "") {
		return nil, nil, 0, fmt.Errorf("--%stls-certificates %s: no server-cert.pem and server-key.pem there", f.prefix, f.dir)
	}
	if f.verifyPeer && files.CA == "" {
		return nil, nil, 0, fmt.Errorf("--%stls-verify-peer needs the CA of the client certificates: ca-cert.pem in --%[1]stls-certificates or --%[1]stls-ca", f.prefix)
	}
	cfg, err := files.ServerConfig(f.verifyPeer)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("TLS: %w", err)
	}
	return cfg, keys, policy, nil
}

// tlsClientFlags are an NBD client's TLS options.
type tlsClientFlags struct {
	dir       string
	ca        string
	cert, key string
	psk, user string
}

func (f *tlsClientFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.dir, "tls-certificates", "", "directory with ca-cert.pem and optionally client-cert.pem, client-key.pem (nbdkit/qemu layout; hacs cluster auth client-cert create writes one)")
	fs.StringVar(&f.ca, "tls-ca", "", "CA certificate that signs the servers' certificates (overrides --tls-certificates)")
	fs.StringVar(&f.cert, "tls-cert", "", "client certificate for servers that verify clients (PEM)")
	fs.StringVar(&f.key, "tls-key", "", "client private key (PEM)")
	fs.StringVar(&f.psk, "tls-psk", "", "use TLS with a pre-shared key from this file (psktool format, IDENTITY:HEXKEY lines) instead of certificates")
	fs.StringVar(&f.user, "tls-username", "", "the identity of --tls-psk to use (default: the file's only identity)")
}

// pskConfig returns the pre-shared key client configuration (nil without
// --tls-psk).
func (f *tlsClientFlags) pskConfig() (*tlspsk.Config, error) {
	if f.psk == "" {
		if f.user != "" {
			return nil, fmt.Errorf("--tls-username needs --tls-psk FILE")
		}
		return nil, nil
	}
	if f.dir != "" || f.ca != "" || f.cert != "" || f.key != "" {
		return nil, fmt.Errorf("--tls-psk and certificate options (--tls-certificates, --tls-ca, --tls-cert, --tls-key) are exclusive")
	}
	keys, err := tlspsk.LoadKeys(f.psk)
	if err != nil {
		return nil, fmt.Errorf("--tls-psk: %w", err)
	}
	user := f.user
	if user == "" {
		if len(keys) != 1 {
			return nil, fmt.Errorf("--tls-psk %s holds %d identities: choose one with --tls-username", f.psk, len(keys))
		}
		for id := range keys {
			user = id
		}
	}
	if _, ok := keys.Lookup(user); !ok {
		return nil, fmt.Errorf("--tls-username %q: no such identity in %s", user, f.psk)
	}
	return &tlspsk.Config{Keys: keys, Identity: user}, nil
}

func (f *tlsClientFlags) given() bool {
	return f.dir != "" || f.ca != "" || f.cert != "" || f.key != ""
}
