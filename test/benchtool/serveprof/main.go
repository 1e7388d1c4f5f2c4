// Command serveprof is a profiling harness for the benchmarks: it serves a
// file over NBD with the same code as `hacs serve` (internal/nbd.Server over
// internal/device.File) and can
//
//   - write a CPU profile (--cpuprofile) and a mutex/block profile on exit;
//   - bound the number of device calls running at once (--max-device-calls),
//     to test whether the goroutine-per-request model costs throughput.
//
// It changes nothing in the server; it only wraps the device. Use it as a
// bench.sh server row (BENCH_EXTRA) or by hand:
//
//	go build -o /tmp/serveprof ./test/benchtool/serveprof
//	/tmp/serveprof --listen unix:/tmp/s.sock --cpuprofile /tmp/cpu.pprof disk.img
//	fio --ioengine=nbd --uri='nbd+unix:///?socket=/tmp/s.sock' ...
//	kill -INT <pid>; go tool pprof -top /tmp/serveprof /tmp/cpu.pprof
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/hacs/hacs/internal/device"
	"github.com/hacs/hacs/internal/nbd"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:10809", "HOST:PORT or unix:PATH")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile to this file on exit")
	mutexProfile := flag.String("mutexprofile", "", "write a mutex contention profile to this file on exit")
	blockProfile := flag.String("blockprofile", "", "write a blocking profile to this file on exit")
	maxCalls := flag.Int("max-device-calls", 0, "bound the device calls in flight (0: no bound, as hacs serve)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: serveprof [flags] FILE")
		os.Exit(2)
	}
	if err := run(flag.Arg(0), *listen, *cpuProfile, *mutexProfile, *blockProfile, *maxCalls); err != nil {
		fmt.Fprintln(os.Stderr, "serveprof:", err)
		os.Exit(1)
	}
}

func run(path, listen, cpuProfile, mutexProfile, blockProfile string, maxCalls int) error {
	f, err := device.OpenFile(path, 0, false)
	if err != nil {
		return err
	}
	defer f.Close()
	var dev device.Device = f
	if maxCalls > 0 {
		dev = &limited{File: f, sem: make(chan struct{}, maxCalls)}
	}
	var ln net.Listener
	if p, ok := strings.CutPrefix(listen, "unix:"); ok {
		os.Remove(p)
		ln, err = net.Listen("unix", p)
	} else {
		ln, err = net.Listen("tcp", listen)
	}
	if err != nil {
		return err
	}
	if mutexProfile != "" {
		runtime.SetMutexProfileFraction(5)
	}
	if blockProfile != "" {
		runtime.SetBlockProfileRate(10000) // one sample per 10µs blocked
	}
	if cpuProfile != "" {
		out, err := os.Create(cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(out); err != nil {
			return err
		}
		defer func() {
			pprof.StopCPUProfile()
			out.Close()
		}()
	}
	srv := nbd.NewServer(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err := srv.AddExport(nbd.Export{Device: dev}); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
	case err := <-errc:
		if err != nil {
			return err
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	for _, p := range []struct{ name, file string }{{"mutex", mutexProfile}, {"block", blockProfile}} {
		if p.file == "" {
			continue
		}
		out, err := os.Create(p.file)
		if err != nil {
			return err
		}
		if err := pprof.Lookup(p.name).WriteTo(out, 0); err != nil {
			out.Close()
			return err
		}
		out.Close()
	}
	return nil
}

// limited bounds the reads and writes running at once on a File.
type limited struct {
	*device.File
	sem chan struct{}
}

func (l *limited) ReadAt(p []byte, off int64) error {
	l.sem <- struct{}{}
	defer func() { <-l.sem }()
	return l.File.ReadAt(p, off)
}

func (l *limited) WriteAt(p []byte, off int64, fua bool) error {
	l.sem <- struct{}{}
	defer func() { <-l.sem }()
	return l.File.WriteAt(p, off, fua)
}
