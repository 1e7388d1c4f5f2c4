package testnet

import (
	"net"
	"strconv"
	"testing"
)

func TestFreeAddrBelowEphemeralRangeAndUnique(t *testing.T) {
	seen := map[string]bool{}
	for range 200 {
		addr := FreeAddr(t)
		host, p, err := net.SplitHostPort(addr)
		if err != nil || host != "127.0.0.1" {
			t.Fatalf("FreeAddr = %q", addr)
		}
		port, _ := strconv.Atoi(p)
		if port < firstPort || port >= firstPort+portCount || (port >= demoFirstPort && port < demoPortsAfter) {
			t.Fatalf("port %d outside %d-%d or in the demo's block", port, firstPort, firstPort+portCount-1)
		}
		if seen[addr] {
			t.Fatalf("%s handed out twice", addr)
		}
		seen[addr] = true
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("handed-out %s cannot be bound: %v", addr, err)
		}
		ln.Close()
	}
}
