package cli

import (
	"fmt"
	"time"

	"github.com/spf13/pflag"

	"github.com/hacs/hacs/internal/nbd"
)

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
	none := func(v int) int { // 0 on the command line is no limit
		if v == 0 {
			return -1
		}
		return v
	}
	return nbd.Limits{HandshakeTimeout: f.handshakeTimeout, MaxNegotiating: none(f.maxNeg), MaxNegotiatingPerIP: none(f.maxNegIP), MaxConnsPerExport: f.maxPerExport}, nil
}
