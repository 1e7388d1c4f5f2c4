package replica

import (
	"fmt"
	"log/slog"
	"strconv"
	"strings"

	"github.com/hacs/hacs/internal/nbd"
)

// ExportName is the NBD export name a primary opens a replica with: the
// volume, the primary's epoch and the replica size the primary expects
// (size 0: do not create).
func ExportName(volume string, epoch uint64, size int64) string {
	return fmt.Sprintf("%s@%d@%d", volume, epoch, size)
}

// ParseExportName is the inverse of ExportName.
func ParseExportName(name string) (volume string, epoch uint64, size int64, err error) {
	parts := strings.Split(name, "@")
	if len(parts) != 3 {
		return "", 0, 0, fmt.Errorf("replica export name %q: want VOLUME@EPOCH@SIZE", name)
	}
	if epoch, err = strconv.ParseUint(parts[1], 10, 64); err != nil {
		return "", 0, 0, fmt.Errorf("replica export name %q: bad epoch", name)
	}
	if size, err = strconv.ParseInt(parts[2], 10, 64); err != nil || size < 0 {
		return "", 0, 0, fmt.Errorf("replica export name %q: bad size", name)
	}
	return parts[0], epoch, size, nil
}

// NewServer returns an NBD server that serves h's replicas to primaries
// under export names made by ExportName.
func NewServer(h *Host, logger *slog.Logger) *nbd.Server {
	srv := nbd.NewServer(logger)
	srv.Resolve = func(name string) (*nbd.Export, error) {
		vol, epoch, size, err := ParseExportName(name)
		if err != nil {
			return nil, err
		}
		hd, err := h.Acquire(vol, epoch, size)
		if err != nil {
			logger.Warn("replica open refused", "volume", vol, "epoch", epoch, "err", err)
			return nil, err
		}
		logger.Info("replica opened by primary", "volume", vol, "epoch", epoch)
		return &nbd.Export{Name: name, Device: hd, Release: func() { hd.Close() }}, nil
	}
	return srv
}
