package cluster

import "testing"

func TestSplitKey(t *testing.T) {
	for _, tc := range []struct {
		key, prefix string
		name, part  string
		ok          bool
		nodeOK      bool // splitNodeKey's answer, for keys under PrefixNodes
	}{
		{PrefixVolumes + "vm1/spec", PrefixVolumes, "vm1", "spec", true, false},
		{PrefixVolumes + "vm1/failures/n1", PrefixVolumes, "vm1", "failures/n1", true, false},
		{PrefixVolumes + "vm1", PrefixVolumes, "vm1", "", false, false},
		{PrefixNodes + "n1/alive", PrefixVolumes, "", "", false, false},
		{PrefixNodes + "n1/alive", PrefixNodes, "n1", "alive", true, true},
		{PrefixNodes + "n1/", PrefixNodes, "n1", "", true, false},
		{PrefixNodes + "/alive", PrefixNodes, "", "alive", true, false},
	} {
		name, part, ok := SplitKey(tc.key, tc.prefix)
		if name != tc.name || part != tc.part || ok != tc.ok {
			t.Errorf("SplitKey(%q, %q) = %q, %q, %v; want %q, %q, %v", tc.key, tc.prefix, name, part, ok, tc.name, tc.part, tc.ok)
		}
		if tc.prefix == PrefixNodes {
			if _, _, ok := splitNodeKey(tc.key); ok != tc.nodeOK {
				t.Errorf("splitNodeKey(%q) ok = %v, want %v", tc.key, ok, tc.nodeOK)
			}
		}
	}
}

func TestAPIErrorMessage(t *testing.T) {
	for _, tc := range []struct{ body, want string }{
		{`{"error": "volume vm1 not found"}`, "volume vm1 not found"},
		{`{"error": ""}`, `{"error": ""}`},
		{"  404 page not found\n", "404 page not found"},
		{"", ""},
	} {
		if got := APIErrorMessage([]byte(tc.body)); got != tc.want {
			t.Errorf("APIErrorMessage(%q) = %q, want %q", tc.body, got, tc.want)
		}
	}
}
