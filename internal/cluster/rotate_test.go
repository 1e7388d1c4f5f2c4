package cluster

import (
	"crypto/x509"
	"encoding/pem"
	"testing"
	"time"
)

// TestCrossSignedChain: a node certificate of the new CA, sent with the
// cross certificate, is accepted by verifiers that trust the old CA only,
// the new CA only, or both; a certificate of the old CA is refused once
// only the new CA is trusted.
func TestCrossSignedChain(t *testing.T) {
	oldPEM, oldKey, err := newCA("c1")
	if err != nil {
		t.Fatal(err)
	}
	old, err := parseCA(oldPEM, oldKey)
	if err != nil {
		t.Fatal(err)
	}
	newPEM, newKey, _, err := newCANamed("hacs cluster c1 CA 2")
	if err != nil {
		t.Fatal(err)
	}
	nw, err := parseCA(newPEM, newKey)
	if err != nil {
		t.Fatal(err)
	}
	cross, err := crossSign(old, nw.cert)
	if err != nil {
		t.Fatal(err)
	}
	nw.chain = cross
	_, csr, err := newNodeKey("n1")
	if err != nil {
		t.Fatal(err)
	}
	newLeaf, err := nw.sign(csr, "c1", "id1", "n1", nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	oldLeaf, err := old.sign(csr, "c1", "id1", "n1", nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	raw := func(p []byte) [][]byte {
		var out [][]byte
		for {
			var b *pem.Block
			b, p = pem.Decode(p)
			if b == nil {
				return out
			}
			out = append(out, b.Bytes)
		}
	}
	if len(raw(newLeaf)) != 2 {
		t.Fatalf("a certificate of the new CA should carry the cross certificate: %d certificates", len(raw(newLeaf)))
	}
	cases := []struct {
		name  string
		trust []byte
		leaf  []byte
		ok    bool
	}{
		{"new leaf, old CA trusted", oldPEM, newLeaf, true},
		{"new leaf, new CA trusted", newPEM, newLeaf, true},
		{"new leaf, both trusted", append(append([]byte{}, oldPEM...), newPEM...), newLeaf, true},
		{"old leaf, both trusted", append(append([]byte{}, oldPEM...), newPEM...), oldLeaf, true},
		{"old leaf, new CA trusted", newPEM, oldLeaf, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseCA(tc.trust, nil)
			if err != nil {
				t.Fatal(err)
			}
			cr := &tlsCreds{ca: c}
			if p, n := poolFromPEM(tc.trust); n > 1 {
				cr.trust.Store(p)
			}
			_, err = cr.verify(raw(tc.leaf), x509.ExtKeyUsageClientAuth)
			if (err == nil) != tc.ok {
				t.Fatalf("verify: %v, want ok=%v", err, tc.ok)
			}
		})
	}
}
