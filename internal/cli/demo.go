package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/hacs/hacs/internal/agent"
	"github.com/hacs/hacs/internal/cluster"
)

func newDemoCmd() *cobra.Command {
	var (
		nodes    int
		dir      string
		detach   bool
		stopIt   bool
		restart  string
		basePort int
		sizeStr  string
		insecure bool
		leaseTTL time.Duration
	)
	cmd := &cobra.Command{
		Use:   "demo [--nodes N] [--dir DIR] [--detach | --stop]",
		Short: "Start a whole hacs cluster on this machine, serving a replicated volume",
		Long: `Start N agents (default 3) as separate processes on loopback, with their
data under DIR, create the volume "demo" (1 GiB, 2 replicas) and print what to
try next: the NBD URI, how to attach, how to watch the cluster, how to kill a
node and watch the volume fail over.

In the foreground it runs until Ctrl-C and then stops everything it started.
--detach returns once the volume is served; "hacs demo --dir DIR --stop"
stops that cluster. Each agent's pid is in DIR/<node>/agent.pid and its log in
DIR/<node>/agent.log.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			out := cmd.OutOrStdout()
			if stopIt {
				return stopDemo(out, dir)
			}
			if restart != "" {
				return restartDemoNode(out, dir, restart)
			}
			if nodes < 1 || nodes > 9 {
				return errors.New("--nodes must be between 1 and 9")
			}
			size, err := parseSize(sizeStr)
			if err != nil {
				return fmt.Errorf("--size: %w", err)
			}
			if pids := demoPids(dir); len(pids) > 0 {
				return fmt.Errorf("a demo cluster already runs in %s (pids %v): stop it with `hacs demo --dir %s --stop`", dir, pids, dir)
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			port := func(i, k int) string { return "127.0.0.1:" + strconv.Itoa(basePort+10*i+k) }
			var apis []string
			started := 0
			cleanup := func() {
				if !detach {
					fmt.Fprintln(out, "stopping the demo cluster")
					stopDemo(out, dir)
				}
			}
			for i := 1; i <= nodes; i++ {
				name := fmt.Sprintf("node%d", i)
				ndir := filepath.Join(dir, name)
				if err := os.MkdirAll(ndir, 0o700); err != nil {
					return err
				}
				args := []string{"agent", "--data-dir", ndir, "--name", name,
					"--api", port(i, 0), "--peer-listen", port(i, 1), "--client-listen", port(i, 2),
					"--replica-listen", port(i, 3), "--export-listen", port(i, 4)}
				if insecure {
					args = append(args, "--insecure")
				}
				if leaseTTL != 0 {
					args = append(args, "--lease-ttl", leaseTTL.String())
				}
				if i == 1 && nodes > 2 {
					// its join token admits the other demo nodes
					args = append(args, "--join-token-uses", strconv.Itoa(nodes-1))
				}
				if i > 1 {
					tok, err := os.ReadFile(filepath.Join(dir, "node1", "join-token"))
					if err != nil {
						cleanup()
						return fmt.Errorf("reading node1's join token: %w", err)
					}
					args = append(args, "--join", apis[0], "--token", strings.TrimSpace(string(tok)))
				}
				// Remember how the node was started, for --start NODE
				// (the join flags are not needed to restart).
				restartArgs := args
				if i > 1 {
					restartArgs = args[:len(args)-4]
				}
				if err := os.WriteFile(filepath.Join(ndir, "agent.args"), []byte(strings.Join(restartArgs, "\n")+"\n"), 0o600); err != nil {
					return err
				}
				c, err := startDemoAgent(self, ndir, args)
				if err != nil {
					cleanup()
					return err
				}
				started++
				apis = append(apis, port(i, 0))
				fmt.Fprintf(out, "started %s (pid %d, API %s)\n", name, c.Process.Pid, port(i, 0))
				if err := waitAPI(ctx, "unix:"+filepath.Join(ndir, cluster.APISocket), filepath.Join(ndir, "agent.log")); err != nil {
					cleanup()
					return err
				}
			}
			cdir, installed, err := "", "", error(nil)
			if !insecure {
				if cdir, installed, err = demoClientConfig(dir); err != nil {
					cleanup()
					return err
				}
			} else {
				for i := range apis {
					apis[i] = "http://" + apis[i]
				}
			}
			api := newAPIClientWith(strings.Join(apis, ","), filepath.Join(cdir, "ca.crt"), filepath.Join(cdir, "token"))
			req := agent.VolumeRequest{Name: "demo", Size: size, Replicas: min(2, nodes)}
			if err := api.do(ctx, "POST", "/v1/volumes", req, nil); err != nil {
				var se *apiStatusError
				if !errors.As(err, &se) || se.Code != 409 {
					cleanup()
					return err
				}
			}
			var v agent.VolumeInfo
			deadline := time.Now().Add(60 * time.Second)
			for {
				if err := api.do(ctx, "GET", "/v1/volumes/demo", nil, &v); err == nil && v.Export != nil {
					break
				}
				if time.Now().After(deadline) || ctx.Err() != nil {
					cleanup()
					return fmt.Errorf("volume demo not served after 60s (see %s/*/agent.log)", dir)
				}
				time.Sleep(100 * time.Millisecond)
			}
			cl := strings.Join(apis, ",")
			secNote := "The cluster runs with TLS on every link and API tokens; the CLI's\ncredentials (cluster CA, admin token, and the export client certificate\n\"admin\" that opens the volumes) are in " + cdir + installed + ".\n"
			nbdURI := fmt.Sprintf("'nbds://%s/demo?tls-certificates=%s'", v.Export.Addr, cdir)
			if insecure {
				secNote = "The cluster runs WITHOUT TLS and API tokens (--insecure).\n"
				nbdURI = "nbd://" + v.Export.Addr + "/demo"
			}
			fmt.Fprintf(out, `
hacs demo cluster: %d nodes, data in %s
volume "demo" (%s, %d replicas) is served by %s at %s

%s
Try:
  export HACS_CLUSTER=%s
  hacs volume info demo                     # placement, primary, replica states
  hacs volume list
  nbdinfo %s
  hacs volume attach demo --listen unix:/tmp/hacs-demo.sock   # follows failover
  qemu-io -f raw 'nbd+unix:///demo?socket=/tmp/hacs-demo.sock' -c 'write -P 0xab 0 1M'
  kill -9 $(cat %s/%s/agent.pid)          # kill the primary's node: watch it fail over
  hacs volume info demo

`, nodes, dir, human(size), req.Replicas, v.Export.Node, nbdURI, secNote, cl, nbdURI, dir, v.Export.Node)
			if detach {
				fmt.Fprintf(out, "cluster API: %s\nstop it with: hacs demo --dir %s --stop\n", apis[0], dir)
				return nil
			}
			fmt.Fprintln(out, "Ctrl-C stops the cluster.")
			<-ctx.Done()
			cleanup()
			return nil
		},
	}
	cmd.Flags().IntVar(&nodes, "nodes", 3, "number of agents")
	cmd.Flags().StringVar(&dir, "dir", "/tmp/hacs-demo", "directory for the agents' data, logs and pid files")
	cmd.Flags().BoolVar(&detach, "detach", false, "return once the volume is served, leaving the cluster running")
	cmd.Flags().BoolVar(&stopIt, "stop", false, "stop the demo cluster running in --dir")
	cmd.Flags().StringVar(&restart, "start", "", "start one node of the demo cluster in --dir again (after killing it)")
	cmd.Flags().IntVar(&basePort, "base-port", 17700, "first of the loopback ports used (10 per node)")
	cmd.Flags().BoolVar(&insecure, "insecure", false, "run the agents without TLS and API tokens (to compare; see docs/SECURITY.md)")
	cmd.Flags().StringVar(&sizeStr, "size", "1G", "size of the demo volume")
	cmd.Flags().DurationVar(&leaseTTL, "lease-ttl", 0, "every agent's liveness lease TTL (hacs agent --lease-ttl; default: the agent's, 2s)")
	return cmd
}

// startDemoAgent starts one agent in its own session (it survives the
// demo command with --detach), logging to DIR/agent.log.
func startDemoAgent(self, ndir string, args []string) (*exec.Cmd, error) {
	logf, err := os.OpenFile(filepath.Join(ndir, "agent.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	c := exec.Command(self, args...)
	c.Stdout, c.Stderr = logf, logf
	c.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := c.Start(); err != nil {
		return nil, err
	}
	os.WriteFile(filepath.Join(ndir, "agent.pid"), []byte(strconv.Itoa(c.Process.Pid)+"\n"), 0o600)
	go c.Wait()
	return c, nil
}

// restartDemoNode starts a stopped node of a demo cluster again.
func restartDemoNode(out io.Writer, dir, node string) error {
	ndir := filepath.Join(dir, node)
	b, err := os.ReadFile(filepath.Join(ndir, "agent.args"))
	if err != nil {
		return fmt.Errorf("no demo node %s in %s: %w", node, dir, err)
	}
	if pb, err := os.ReadFile(filepath.Join(ndir, "agent.pid")); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(pb))); err == nil && syscall.Kill(pid, 0) == nil && isHacsAgent(pid) {
			return fmt.Errorf("%s is running already (pid %d)", node, pid)
		}
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	args := strings.Split(strings.TrimSpace(string(b)), "\n")
	c, err := startDemoAgent(self, ndir, args)
	if err != nil {
		return err
	}
	api := ""
	for i, a := range args {
		if a == "--api" && i+1 < len(args) {
			api = args[i+1]
		}
	}
	if err := waitAPI(context.Background(), "unix:"+filepath.Join(ndir, cluster.APISocket), filepath.Join(ndir, "agent.log")); err != nil {
		return err
	}
	fmt.Fprintf(out, "started %s again (pid %d, API %s)\n", node, c.Process.Pid, api)
	return nil
}

func waitAPI(ctx context.Context, addr, logPath string) error {
	api := newAPIClient(addr)
	deadline := time.Now().Add(60 * time.Second)
	for {
		var vols []agent.VolumeInfo
		if err := api.do(ctx, "GET", "/v1/volumes", nil, &vols); err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			tail, _ := os.ReadFile(logPath)
			if len(tail) > 2000 {
				tail = tail[len(tail)-2000:]
			}
			return fmt.Errorf("agent at %s did not come up; end of its log:\n%s", addr, tail)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// demoPids lists the pids of running demo agents in dir.
func demoPids(dir string) []int {
	var pids []int
	files, _ := filepath.Glob(filepath.Join(dir, "node*", "agent.pid"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 {
			continue
		}
		if syscall.Kill(pid, 0) == nil && isHacsAgent(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// isHacsAgent checks that pid is still a hacs agent (not a reused pid).
func isHacsAgent(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && strings.Contains(string(b), "agent\x00")
}

func stopDemo(out io.Writer, dir string) error {
	pids := demoPids(dir)
	if len(pids) == 0 {
		fmt.Fprintf(out, "no demo agent runs in %s\n", dir)
		return nil
	}
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGTERM)
	}
	deadline := time.Now().Add(15 * time.Second)
	for _, pid := range pids {
		for syscall.Kill(pid, 0) == nil && isHacsAgent(pid) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if syscall.Kill(pid, 0) == nil && isHacsAgent(pid) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	files, _ := filepath.Glob(filepath.Join(dir, "node*", "agent.pid"))
	for _, f := range files {
		os.Remove(f)
	}
	fmt.Fprintf(out, "stopped %d agent(s) in %s\n", len(pids), dir)
	return nil
}

// demoMarker marks a client config directory the demo wrote.
const demoMarker = "written-by-hacs-demo"

// demoClientConfig writes the CLI's credentials for the demo cluster (its
// CA certificate, node1's admin token, and the export client certificate
// "admin" in the layout of tls-certificates=DIR) to DIR/client, and also to the
// default client config directory ($HACS_CONFIG_DIR or ~/.config/hacs)
// unless that holds
// credentials the demo did not write. It returns the directory the CLI
// uses and, for the banner, where else they went.
func demoClientConfig(dir string) (string, string, error) {
	n1 := filepath.Join(dir, "node1")
	ad := filepath.Join(n1, cluster.AdminClientDir)
	files := map[string]string{
		"ca.crt": filepath.Join(n1, cluster.TLSDir, cluster.CACertFile),
		"token":  filepath.Join(n1, cluster.AdminTokenFile),
		// the export client certificate "admin": nbdinfo, nbdcopy and
		// qemu read these three (tls-certificates=DIR)
		cluster.ClientCAFile:   filepath.Join(ad, cluster.ClientCAFile),
		cluster.ClientCertFile: filepath.Join(ad, cluster.ClientCertFile),
		cluster.ClientKeyFile:  filepath.Join(ad, cluster.ClientKeyFile),
	}
	write := func(cdir string) error {
		if err := os.MkdirAll(cdir, 0o700); err != nil {
			return err
		}
		for name, src := range files {
			b, err := os.ReadFile(src)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(cdir, name), b, 0o600); err != nil {
				return err
			}
		}
		return os.WriteFile(filepath.Join(cdir, demoMarker), nil, 0o600)
	}
	cdir := filepath.Join(dir, "client")
	if err := write(cdir); err != nil {
		return "", "", fmt.Errorf("writing the demo's client credentials: %w", err)
	}
	def := clientConfigDir()
	if def == "" {
		return cdir, " (export HACS_CONFIG_DIR=" + cdir + " for the CLI to use them)", nil
	}
	_, errCA := os.Stat(filepath.Join(def, "ca.crt"))
	_, errMark := os.Stat(filepath.Join(def, demoMarker))
	if errCA == nil && errMark != nil {
		return cdir, " (your " + def + " holds other credentials: export HACS_CONFIG_DIR=" + cdir + " for the CLI to use the demo's)", nil
	}
	if err := write(def); err != nil {
		return cdir, " (export HACS_CONFIG_DIR=" + cdir + " for the CLI to use them)", nil
	}
	return cdir, " and in " + def + ", where the CLI finds them by default", nil
}
