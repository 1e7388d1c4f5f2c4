package nbd

import (
	"bytes"
	"errors"

	"github.com/hacs/hacs/internal/tlspsk"
)

// pskKeys are the pre-shared keys in force: those of the last SetPSKKeys,
// else PSKKeys.
func (s *Server) pskKeys() tlspsk.Keys {
	if k := s.pskLive.Load(); k != nil {
		return *k
	}
	return s.PSKKeys
}

// SetPSKKeys replaces the server's pre-shared keys while it serves (a key
// file re-read): handshakes from now on use keys, and every connection
// that authenticated with an identity keys lacks, or whose key keys
// changed, is cut at once, in negotiation or in transmission (each
// logged); the others keep going. It returns how many it cut. A
// handshake under way with a key that is gone fails. keys cannot be
// empty: pre-shared keys can be replaced, not taken away.
func (s *Server) SetPSKKeys(keys tlspsk.Keys) (cut int, err error) {
	if len(keys) == 0 {
		return 0, errors.New("nbd: no pre-shared keys (they can be replaced, not removed)")
	}
	type victim struct {
		c      *serverConn
		id     string
		why    string
		export string
	}
	var victims []victim
	s.mu.Lock()
	s.pskLive.Store(&keys)
	for c := range s.conns {
		if c.psk == "" {
			continue
		}
		why := ""
		if k, ok := keys[c.psk]; !ok {
			why = "its pre-shared key identity was removed from the key file"
		} else if !bytes.Equal(k, c.pskKey) {
			why = "the key of its pre-shared key identity changed"
		} else {
			continue
		}
		v := victim{c: c, id: c.psk, why: why}
		if c.export != nil {
			v.export = c.export.Name
		}
		victims = append(victims, v)
	}
	s.mu.Unlock()
	for _, v := range victims {
		v.c.stopped.Store(true) // a request read but not started is dropped
		v.c.nc.Close()
		v.c.log.Warn("nbd connection cut: "+v.why, "peer", "psk:"+v.id, "export", v.export)
	}
	return len(victims), nil
}

// pskCurrentLocked reports whether key is still the key of identity id (a
// SetPSKKeys may have come during the handshake). Called with s.mu held.
func (s *Server) pskCurrentLocked(id string, key []byte) bool {
	k, ok := s.pskKeys()[id]
	return ok && bytes.Equal(k, key)
}
