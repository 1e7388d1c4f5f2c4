// Package testnet hands tests the TCP addresses of daemons they start
// later: an agent, an embedded etcd, a peer program such as gnutls-serv.
//
// A port taken with Listen("127.0.0.1:0") and closed again comes from the
// kernel's ephemeral range (32768-60999 by default), and until the daemon
// binds it, any outgoing connection on the machine may take it as its local
// port: CI saw "address already in use" that way, at a daemon's first start
// and at a restart on its remembered port. FreeAddr draws from 10000-20999
// instead, below that range, and never hands out the same address twice in
// one test binary.
package testnet

import (
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"testing"
)

// The range FreeAddr draws from, and the block it leaves to `hacs demo`.
const (
	firstPort      = 10000
	portCount      = 11000
	demoFirstPort  = 17700
	demoPortsAfter = 17800
)

var (
	handedOutMu sync.Mutex
	handedOut   = map[int]bool{}
)

// FreeAddr returns "127.0.0.1:PORT" with a port that was free a moment ago
// and was not handed out before in this test binary.
func FreeAddr(t testing.TB) string {
	t.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t)))
}

// FreePort is FreeAddr's port alone.
func FreePort(t testing.TB) int {
	t.Helper()
	for range 1000 {
		port := firstPort + rand.IntN(portCount)
		if port >= demoFirstPort && port < demoPortsAfter {
			continue // hacs demo's default ports
		}
		if !reserve(port) {
			continue
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue // in use by someone else; stays reserved, never tried again
		}
		ln.Close()
		return port
	}
	t.Fatalf("testnet: no free TCP port in %d-%d that was not handed out already", firstPort, firstPort+portCount-1)
	return 0
}

// reserve marks port as handed out; false if it was already.
func reserve(port int) bool {
	handedOutMu.Lock()
	defer handedOutMu.Unlock()
	if handedOut[port] {
		return false
	}
	handedOut[port] = true
	return true
}
