// Package tlspsk implements TLS 1.3 (RFC 8446) with an external pre-shared
// key, server and client, for NBD's PSK mode: the psktool key files that
// nbdkit --tls-psk, qemu's tls-creds-psk and libnbd use with GnuTLS.
// crypto/tls has no PSK support, hence this package. It is written from the
// RFC on top of Go's crypto primitives.
//
// What it does: TLS 1.3 only; key exchange psk_dhe_ke (the PSK plus an
// ephemeral x25519, secp256r1 or secp384r1 share, so past sessions stay
// secret if a key leaks later), with HelloRetryRequest when the client's key
// share is for a group we do not accept; cipher suites TLS_AES_128_GCM_SHA256,
// TLS_AES_256_GCM_SHA384 and TLS_CHACHA20_POLY1305_SHA256; the PSK's hash
// is SHA-256 or SHA-384, told by the binder's length (server) or the first
// configured suite (client) — GnuTLS and OpenSSL make external PSKs SHA-256,
// so with them the suite is AES-128-GCM or ChaCha20 (the server prefers
// AES-GCM on CPUs with AES instructions); middlebox-compatibility mode (session id echo,
// dummy change_cipher_spec); KeyUpdate both ways (and on its own after 2^23
// records); close_notify and clear alerts.
//
// Limits: no certificates (use crypto/tls for those: Sniff tells the two
// kinds of client apart), no psk_ke (PSK without (EC)DHE is refused: no
// forward secrecy), no finite-field DHE groups, no 0-RTT (early data is
// refused and skipped), no session tickets (none are issued; a client
// ignores those it receives), no resumption, one identity offered by a
// client, no post-handshake authentication.
package tlspsk
