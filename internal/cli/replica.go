package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/hacs/hacs/internal/cluster"
	"github.com/hacs/hacs/internal/device"
	"github.com/hacs/hacs/internal/mirror"
	"github.com/hacs/hacs/internal/nbd"
	"github.com/hacs/hacs/internal/replica"
)

func newReplicaCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "replica",
		Short: "Low-level replication: run a replica node, optionally as a volume's primary",
		Long: `Low-level replication commands, the building blocks the agent drives.

"hacs replica node" serves this node's replicas to primaries (fenced by
epoch) and, with --primary, also serves one volume as its primary: writes are
mirrored synchronously to every in-sync replica and the volume is exported
over NBD. The volume state (epoch, primary, in-sync set) lives in a state file
shared by the nodes (--state), the stand-in for the cluster store.`,
	}
	cmd.AddCommand(newReplicaNodeCmd())
	return cmd
}

func newReplicaNodeCmd() *cobra.Command {
	var (
		dir, listen, self, volume, sizeStr, export, stateFile, httpAddr string
		peers                                                           []string
		timeout                                                         time.Duration
		rateStr                                                         string
	)
	cmd := &cobra.Command{
		Use:   "node --dir DIR --id ID --listen HOST:PORT [--primary VOLUME --size SIZE --peer ID=HOST:PORT ... --state FILE --export HOST:PORT]",
		Short: "Serve this node's replicas, and optionally one volume as primary",
		Example: `  # three nodes; n1 is primary of volume vol (1 GiB, 3 replicas)
  hacs replica node --dir /tmp/n2 --id n2 --listen 127.0.0.1:7802
  hacs replica node --dir /tmp/n3 --id n3 --listen 127.0.0.1:7803
  hacs replica node --dir /tmp/n1 --id n1 --listen 127.0.0.1:7801 \
      --primary vol --size 1G --peer n2=127.0.0.1:7802 --peer n3=127.0.0.1:7803 \
      --state /tmp/vol.state --export 127.0.0.1:10809 --http 127.0.0.1:7901
  nbdinfo nbd://127.0.0.1:10809/vol`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if dir == "" || self == "" {
				return errors.New("--dir and --id are required")
			}
			log := slog.Default().With("node", self)
			host, err := replica.NewHost(filepath.Join(dir, "state"), replica.DirOpener{Dir: filepath.Join(dir, "data")})
			if err != nil {
				return err
			}
			ln, err := listenAddr(listen)
			if err != nil {
				return err
			}
			rsrv := replica.NewServer(host, log)
			go rsrv.Serve(ln)
			defer rsrv.Close()
			log.Info("replica server listening", "addr", ln.Addr().String())

			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if volume == "" {
				<-ctx.Done()
				return nil
			}
			if sizeStr == "" || stateFile == "" || export == "" {
				return errors.New("--primary needs --size, --state and --export")
			}
			size, err := parseSize(sizeStr)
			if err != nil {
				return fmt.Errorf("--size: %w", err)
			}
			var rate int64
			if rateStr != "" {
				if rate, err = parseSize(rateStr); err != nil {
					return fmt.Errorf("--resync-rate: %w", err)
				}
			}
			reps := []mirror.Replica{{ID: self, Local: true, Dial: func(ctx context.Context, epoch uint64) (device.Device, error) {
				return host.Acquire(volume, epoch, mirror.ReplicaSize(size))
			}}}
			ids := []string{self}
			for _, p := range peers {
				id, addr, ok := strings.Cut(p, "=")
				if !ok || id == "" || addr == "" {
					return fmt.Errorf("--peer %q: want ID=HOST:PORT", p)
				}
				ids = append(ids, id)
				reps = append(reps, mirror.Replica{ID: id, Dial: func(ctx context.Context, epoch uint64) (device.Device, error) {
					network, a := "tcp", addr
					if path, ok := strings.CutPrefix(addr, "unix:"); ok {
						network, a = "unix", path
					}
					return nbd.Dial(ctx, network, a, nbd.ClientOptions{Export: replica.ExportName(volume, epoch, mirror.ReplicaSize(size))})
				}})
			}
			store := mirror.FileStore{Path: stateFile}
			st, err := store.Load(ctx, volume)
			if err != nil {
				return err
			}
			switch {
			case st.Epoch == 0:
				if st, err = mirror.Init(ctx, store, volume, self, ids); err != nil {
					return err
				}
				log.Info("volume created", "volume", volume, "replicas", ids)
			case st.Primary != self:
				if st, err = mirror.TakeOver(ctx, store, volume, self); err != nil {
					return err
				}
				log.Info("took over as primary", "volume", volume, "epoch", st.Epoch)
			}
			m, err := mirror.Open(ctx, mirror.Config{
				Volume: volume, Self: self, Size: size, Replicas: reps, Store: store,
				Timeout: timeout, ResyncRate: rate, Logger: log,
			})
			if err != nil {
				return err
			}
			defer m.Close()
			esrv := nbd.NewServer(log)
			if err := esrv.AddExport(nbd.Export{Name: volume, Description: "hacs replicated volume " + volume, Device: m}); err != nil {
				return err
			}
			eln, err := listenAddr(export)
			if err != nil {
				return err
			}
			go esrv.Serve(eln)
			defer esrv.Close()
			fmt.Fprintf(cmd.OutOrStdout(), "serving volume %s (epoch %d) as %s\n", volume, m.Epoch(), uriFor(eln.Addr(), volume))
			if httpAddr != "" {
				hln, err := net.Listen("tcp", httpAddr)
				if err != nil {
					return fmt.Errorf("--http: %w", err)
				}
				hs := &http.Server{Handler: mirrorHandler(m), ReadHeaderTimeout: 5 * time.Second}
				go hs.Serve(hln)
				defer hs.Close()
			}
			<-ctx.Done()
			m.Flush()
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", "data directory of this node (replicas and epoch records)")
	f.StringVar(&self, "id", "", "this node's id")
	f.StringVar(&listen, "listen", "127.0.0.1:7800", "replica server address: HOST:PORT or unix:PATH")
	f.StringVar(&volume, "primary", "", "serve this volume as its primary")
	f.StringVar(&sizeStr, "size", "", "volume size (with --primary)")
	f.StringArrayVar(&peers, "peer", nil, "another replica: ID=HOST:PORT (repeatable)")
	f.StringVar(&stateFile, "state", "", "shared volume state file (with --primary)")
	f.StringVar(&export, "export", "127.0.0.1:10809", "NBD address the volume is exported on (with --primary)")
	f.StringVar(&httpAddr, "http", "", "HTTP status address: GET /v1/status, POST /v1/verify[?repair=1]")
	f.DurationVar(&timeout, "timeout", 5*time.Second, "a replica slower than this is dropped from the in-sync set")
	f.StringVar(&rateStr, "resync-rate", "", "resync bandwidth limit per replica, e.g. 100M (per second)")
	return cmd
}

// mirrorHandler serves a primary's status and verify over HTTP/JSON.
func mirrorHandler(m *mirror.Mirror) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		cluster.WriteJSON(w, http.StatusOK, m.Status())
	})
	mux.HandleFunc("POST /v1/verify", func(w http.ResponseWriter, r *http.Request) {
		rep, err := m.Verify(r.Context(), r.URL.Query().Get("repair") == "1", nil)
		if err != nil {
			cluster.WriteJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
			return
		}
		cluster.WriteJSON(w, http.StatusOK, rep)
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	return mux
}
