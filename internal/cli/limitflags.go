package cli

import (
	"fmt"
	"time"

	"github.com/spf13/pflag"

	"github.com/hacs/hacs/internal/cluster"
	"github.com/hacs/hacs/internal/nbd"
)

// noLimit turns 0 on the command line (no limit) into a negative limit.
func noLimit(v int) int {
	if v == 0 {
		return -1
	}
	return v
}

// nbdLimitFlags bound the NBD connections that have not negotiated (and
// so not authenticated) yet, and the connections of one export.
type nbdLimitFlags struct {
	handshakeTimeout time.Duration
	maxNeg, maxNegIP int
	maxPerExport     int
}

// register adds the flags, named with prefix; perExport names the flag of
// the limit per export ("" leaves it out).
func (f *nbdLimitFlags) register(fs *pflag.FlagSet, prefix, what, perExport, perExportHelp string) {
	fs.DurationVar(&f.handshakeTimeout, prefix+"handshake-timeout", nbd.DefaultHandshakeTimeout, what+": time a client has from connecting to the end of negotiation (TLS handshake and options included); then it is cut")
	fs.IntVar(&f.maxNeg, prefix+"max-negotiating", nbd.DefaultMaxNegotiating, what+": connections that may be negotiating (not authenticated yet) at once; more are closed at once (0: no limit)")
	fs.IntVar(&f.maxNegIP, prefix+"max-negotiating-per-ip", nbd.DefaultMaxNegotiatingPerIP, what+": connections from one IP address that may be negotiating at once; more are closed at once (0: no limit)")
	if perExport != "" {
		fs.IntVar(&f.maxPerExport, perExport, 0, perExportHelp)
	}
}

// limits are the flags' nbd.Limits.
func (f *nbdLimitFlags) limits() (nbd.Limits, error) {
	if f.handshakeTimeout <= 0 {
		return nbd.Limits{}, fmt.Errorf("the handshake timeout must be positive, not %s", f.handshakeTimeout)
	}
	if f.maxNeg < 0 || f.maxNegIP < 0 || f.maxPerExport < 0 {
		return nbd.Limits{}, fmt.Errorf("a connection limit cannot be negative (0: no limit)")
	}
	return nbd.Limits{HandshakeTimeout: f.handshakeTimeout, MaxNegotiating: noLimit(f.maxNeg), MaxNegotiatingPerIP: noLimit(f.maxNegIP), MaxConnsPerExport: f.maxPerExport}, nil
}

// apiLimitFlags bound the agent API's connections that have not
// authenticated yet.
type apiLimitFlags struct {
	handshakeTimeout time.Duration
	max, maxPerIP    int
}

func (f *apiLimitFlags) register(fs *pflag.FlagSet) {
	fs.DurationVar(&f.handshakeTimeout, "api-handshake-timeout", cluster.DefaultAPIHandshakeTimeout, "API and etcd client port (each): time a new connection has from connecting to its first authenticated request (TLS handshake included; the etcd port: the handshake); then it is cut")
	fs.IntVar(&f.max, "api-max-unauthenticated", cluster.DefaultAPIMaxUnauthenticated, "API and etcd client port (each): connections that may be open without an authenticated request yet, at once; more are closed at once (0: no limit)")
	fs.IntVar(&f.maxPerIP, "api-max-unauthenticated-per-ip", cluster.DefaultAPIMaxUnauthenticatedPerIP, "API and etcd client port (each): such connections from one IP address, loopback addresses excepted (0: no limit)")
}

func (f *apiLimitFlags) limits() (cluster.APILimits, error) {
	if f.handshakeTimeout <= 0 {
		return cluster.APILimits{}, fmt.Errorf("--api-handshake-timeout must be positive, not %s", f.handshakeTimeout)
	}
	if f.max < 0 || f.maxPerIP < 0 {
		return cluster.APILimits{}, fmt.Errorf("an API connection limit cannot be negative (0: no limit)")
	}
	return cluster.APILimits{HandshakeTimeout: f.handshakeTimeout, MaxUnauthenticated: noLimit(f.max), MaxUnauthenticatedPerIP: noLimit(f.maxPerIP)}, nil
}
