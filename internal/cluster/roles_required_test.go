package cluster

import "testing"

// TestRequiredRole: what each route needs. Whatever grants access to
// volume data or to the cluster (certificates, tokens, the CA, a volume's
// export policy) is the admin's.
func TestRequiredRole(t *testing.T) {
	for _, c := range []struct {
		method, path string
		want         AuthRole
	}{
		{"GET", "/v1/volumes", AuthReadOnly},
		{"POST", "/v1/volumes", AuthOperator},
		{"POST", "/v1/volumes/vm1/standby", AuthOperator},
		{"POST", "/v1/volumes/vm1/snapshots", AuthOperator},
		// tls off|allowed opens a volume to anyone who reaches the export
		// port: more than a client certificate, which needs admin
		{"POST", "/v1/volumes/vm1/tls", AuthAdmin},
		// which export clients may open a volume
		{"POST", "/v1/volumes/vm1/grants", AuthAdmin},
		{"GET", "/v1/volumes/vm1/grants", AuthReadOnly},
		{"POST", "/v1/auth/client-certs", AuthAdmin},
		{"DELETE", "/v1/auth/client-certs/h1", AuthAdmin},
		{"GET", "/v1/auth/client-certs", AuthAdmin},
		{"POST", "/v1/auth/tokens", AuthAdmin},
		{"POST", "/v1/join-tokens", AuthAdmin},
		{"GET", "/v1/join-tokens", AuthAdmin},
		{"DELETE", "/v1/join-tokens/0123abcd", AuthAdmin},
		{"GET", "/v1/token", AuthAdmin},
		{"POST", "/v1/pki/rotate", AuthAdmin},
		{"GET", "/v1/pki/rotate", AuthReadOnly},
		{"POST", "/v1/pki/renew", AuthAdmin},
		{"DELETE", "/v1/nodes/n2", AuthAdmin},
		{"POST", "/v1/nodes/n2/roles", AuthAdmin},
		{"POST", "/v1/fence/n2", AuthAdmin},
	} {
		if got := requiredRole(c.method, c.path); got != c.want {
			t.Errorf("%s %s needs %s, want %s", c.method, c.path, got, c.want)
		}
	}
}
