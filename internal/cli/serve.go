package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/hacs/hacs/internal/device"
	"github.com/hacs/hacs/internal/nbd"
	"github.com/hacs/hacs/internal/store"
)

func newServeCmd() *cobra.Command {
	var (
		sizeStr  string
		listen   string
		name     string
		desc     string
		readOnly bool
		poolDir  string
		tlsf     tlsServerFlags
		limf     nbdLimitFlags
	)
	cmd := &cobra.Command{
		Use:   "serve FILE | serve --pool DIR VOLUME",
		Short: "Export one local file (or block device) over NBD, without a cluster",
		Long: `Export one local file over NBD, the job nbdkit file and qemu-nbd do.

The file is created sparse when it does not exist and --size is given. Trim
punches holes, write-zeroes uses fallocate, block status reports holes and
data (SEEK_DATA/SEEK_HOLE) and flush is fdatasync. The export answers both its
name and the default (empty) name. Stop it with Ctrl-C (SIGINT) or SIGTERM.

With --pool DIR, the argument names a thin volume of the storage pool in DIR
instead (see internal/store). With --size, the pool directory and the volume
are created when missing.

With --tls on or require, clients upgrade with NBD's STARTTLS: with x509
certificates (TLS 1.2 or later; nbdinfo nbds://..., qemu's tls-creds-x509)
and/or with pre-shared keys from a psktool file, --tls-psk (TLS 1.3; libnbd's
tls-psk-file, qemu's tls-creds-psk, as nbdkit --tls-psk). With both, each
client gets what it asks for. require refuses plaintext clients with the
protocol's TLS-required error. The --tls-psk file is re-read on SIGHUP and
when it changes: an identity taken out of it, or whose key changed, loses its
open connections at once; a file that does not parse is refused (logged) and
the keys in force stay. See docs/NBD-TLS.md and docs/SECURITY.md.`,
		Example: `  hacs serve disk.img --size 10G
  hacs serve --pool /var/lib/hacs/pool vm1 --size 10G
  hacs serve disk.img --listen 127.0.0.1:10809 --name vm1
  hacs serve disk.img --listen unix:/run/hacs/vm1.sock
  nbdinfo nbd://127.0.0.1:10809/vm1
  hacs serve disk.img --tls require --tls-certificates /etc/hacs/pki
  nbdinfo --tls-certificates=/etc/hacs/client-pki nbds://localhost:10809/
  psktool -u alice -p keys.psk
  hacs serve disk.img --tls require --tls-psk keys.psk
  nbdinfo 'nbds://alice@localhost:10809/?tls-psk-file=keys.psk'`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			tlsCfg, pskKeys, tlsPolicy, err := tlsf.config()
			if err != nil {
				return err
			}
			limits, err := limf.limits()
			if err != nil {
				return err
			}
			var size int64
			if sizeStr != "" {
				var err error
				if size, err = parseSize(sizeStr); err != nil {
					return fmt.Errorf("--size: %w", err)
				}
			}
			var dev device.Device
			if poolDir != "" {
				dev, err = openPoolVolume(poolDir, args[0], size, readOnly)
			} else {
				dev, err = device.OpenFile(args[0], size, readOnly)
			}
			if err != nil {
				return err
			}
			defer dev.Close()
			ln, err := listenAddr(listen)
			if err != nil {
				return err
			}
			srv := nbd.NewServer(slog.Default())
			srv.TLSConfig, srv.PSKKeys, srv.TLSPolicy = tlsCfg, pskKeys, tlsPolicy
			srv.Limits = limits
			if err := srv.AddExport(nbd.Export{Name: name, Description: desc, Device: dev, ReadOnly: readOnly}); err != nil {
				return err
			}
			uri := uriFor(ln.Addr(), name)
			if tlsCfg != nil || pskKeys != nil {
				uri = tlsURI(uri)
			}
			slog.Info("serving", "file", args[0], "size", dev.Size(), "export", name, "listen", ln.Addr().String(), "read_only", readOnly, "tls", tlsPolicy.String(), "tls_x509", tlsCfg != nil, "tls_psk_identities", len(pskKeys))
			fmt.Fprintf(cmd.OutOrStdout(), "serving %s (%d bytes) as %s\n", args[0], dev.Size(), uri)
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if tlsf.psk != "" {
				// SIGHUP, or a change of the file, re-reads the keys
				newPSKReloader(tlsf.psk, pskKeys, srv.SetPSKKeys, slog.Default()).start(ctx)
			}
			errc := make(chan error, 1)
			go func() { errc <- srv.Serve(ln) }()
			select {
			case <-ctx.Done():
			case err := <-errc:
				if err != nil {
					return err
				}
			}
			slog.Info("stopping: waiting up to 5s for clients to finish")
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			srv.Shutdown(sctx)
			return dev.Flush()
		},
	}
	cmd.Flags().StringVar(&sizeStr, "size", "", "size of the file to create when it does not exist (e.g. 10G)")
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:10809", "address to listen on: HOST:PORT or unix:PATH")
	cmd.Flags().StringVar(&name, "name", "", "export name (the export also answers the empty name)")
	cmd.Flags().StringVar(&desc, "description", "", "export description shown to clients")
	cmd.Flags().BoolVar(&readOnly, "read-only", false, "refuse writes")
	cmd.Flags().StringVar(&poolDir, "pool", "", "export VOLUME of the storage pool in this directory instead of a file")
	tlsf.register(cmd.Flags(), "", "", "NBD")
	limf.register(cmd.Flags(), "", "NBD", "max-connections", "clients that may be connected to the export at once (0: no limit; as qemu-nbd --shared)")
	return cmd
}

// openPoolVolume opens a pool volume, creating the pool and the volume when
// size is given and they do not exist.
func openPoolVolume(dir, name string, size int64, readOnly bool) (*store.Volume, error) {
	var p *store.Pool
	var err error
	if size > 0 && !readOnly {
		p, err = store.OpenOrCreatePool(dir, store.PoolOptions{})
	} else {
		p, err = store.OpenPool(dir)
	}
	if err != nil {
		return nil, err
	}
	if size > 0 && !readOnly {
		err := p.CreateVolume(name, size)
		if err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, err
		}
	}
	v, err := p.OpenVolume(name, store.Options{ReadOnly: readOnly})
	if err != nil {
		return nil, err
	}
	if size > 0 && v.Size() != size {
		v.Close()
		return nil, fmt.Errorf("volume %s of pool %s: existing size %d differs from requested size %d", name, dir, v.Size(), size)
	}
	return v, nil
}

// listenAddr listens on HOST:PORT or unix:PATH.
func listenAddr(addr string) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		os.Remove(path)
		ln, err := net.Listen("unix", path)
		if err != nil {
			return nil, fmt.Errorf("listen on %s: %w", addr, err)
		}
		return ln, nil
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, fmt.Errorf("--listen %q: want HOST:PORT or unix:PATH", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return ln, nil
}

// uriFor builds the standard NBD URI for a listener and export.
func uriFor(a net.Addr, export string) string {
	if a.Network() == "unix" {
		return fmt.Sprintf("nbd+unix:///%s?socket=%s", export, a.String())
	}
	return fmt.Sprintf("nbd://%s/%s", a.String(), export)
}

// tlsURI turns an nbd:// or nbd+unix:// URI into its TLS form.
func tlsURI(uri string) string {
	if rest, ok := strings.CutPrefix(uri, "nbd+unix://"); ok {
		return "nbds+unix://" + rest
	}
	if rest, ok := strings.CutPrefix(uri, "nbd://"); ok {
		return "nbds://" + rest
	}
	return uri
}
