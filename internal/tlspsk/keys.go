package tlspsk

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"
)

// Keys maps a PSK identity (user name) to its key.
type Keys map[string][]byte

// Lookup returns the key of identity.
func (k Keys) Lookup(identity string) ([]byte, bool) {
	key, ok := k[identity]
	return key, ok
}

// minKeyLen is the shortest key a key file may hold: 128 bits. A shorter
// one can be found by trying keys against the binder of one recorded
// ClientHello (psktool makes 32 bytes).
const minKeyLen = 16

// maxIdentity is the longest identity TLS can carry (opaque identity<1..2^16-1>).
const maxIdentity = 1<<16 - 1

// LoadKeys reads a key file in the format GnuTLS's psktool writes: one
// "identity:hexkey" a line. Blank lines and lines starting with # are
// ignored. Errors name the file and line.
func LoadKeys(path string) (Keys, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("PSK key file: %w", err)
	}
	defer f.Close()
	keys, err := parseKeys(f, path)
	if err != nil {
		return nil, err
	}
	return keys, nil
}

func parseKeys(f io.Reader, path string) (Keys, error) {
	keys := Keys{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 4096), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		s := strings.TrimRight(sc.Text(), "\r")
		if strings.TrimSpace(s) == "" || strings.HasPrefix(strings.TrimSpace(s), "#") {
			continue
		}
		// psktool writes "username:hexkey"; the key is after the last colon
		// (hex has none), so an identity may itself contain colons.
		i := strings.LastIndexByte(s, ':')
		if i < 0 {
			return nil, fmt.Errorf("%s:%d: want \"identity:hexkey\", found no ':'", path, line)
		}
		id, hx := s[:i], strings.TrimSpace(s[i+1:])
		if id == "" {
			return nil, fmt.Errorf("%s:%d: empty identity", path, line)
		}
		if len(id) > maxIdentity {
			return nil, fmt.Errorf("%s:%d: identity longer than %d bytes", path, line, maxIdentity)
		}
		if hx == "" {
			return nil, fmt.Errorf("%s:%d: empty key for identity %q", path, line, id)
		}
		key, err := hex.DecodeString(hx)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: key for identity %q is not hex: %w", path, line, id, err)
		}
		if len(key) < minKeyLen {
			return nil, fmt.Errorf("%s:%d: the key of identity %q has %d bytes: want at least %d (make keys with psktool -u NAME -p FILE: 32 random bytes)", path, line, id, len(key), minKeyLen)
		}
		if _, dup := keys[id]; dup {
			return nil, fmt.Errorf("%s:%d: identity %q listed twice", path, line, id)
		}
		keys[id] = key
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s:%d: %w", path, line+1, err)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%s: no keys (want lines \"identity:hexkey\")", path)
	}
	return keys, nil
}
