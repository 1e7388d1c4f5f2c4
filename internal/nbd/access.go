package nbd

import "fmt"

// SetExportAccess changes who may open a served export: its TLS policy and
// ClientAuth (see Export). Options naming the export from now on see the
// new access; connections that opened it already keep it until they end.
// changed is false when the export already had this access.
func (s *Server) SetExportAccess(name string, tls TLSPolicy, clientAuth bool) (changed bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.exports[name]
	if e == nil {
		return false, fmt.Errorf("nbd: no export named %q", name)
	}
	if e.TLS == tls && e.ClientAuth == clientAuth {
		return false, nil
	}
	e.TLS, e.ClientAuth = tls, clientAuth
	return true, nil
}

// access is an export's TLS policy and ClientAuth (SetExportAccess may
// change them while connections negotiate).
func (s *Server) access(e *Export) (TLSPolicy, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return e.TLS, e.ClientAuth
}
