package fence

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DefaultAgentDirs are where fence agents are looked up.
var DefaultAgentDirs = []string{"/usr/sbin", "/sbin", "/usr/local/sbin"}

// outputLimit bounds what is kept of an agent's stdout and stderr.
const outputLimit = 16 << 10

// Exit codes of the fence-agent protocol.
const (
	ExitSuccess = 0
	ExitFailure = 1
	ExitOff     = 2 // status: the plug is off
)

// Runner runs fence agents.
type Runner struct {
	// Dirs are searched in order for an agent (default DefaultAgentDirs).
	Dirs []string

	mu    sync.Mutex
	meta  map[string]*Metadata
	stats runStats
}

// NewRunner returns a runner that looks agents up in dirs (nil: the
// defaults).
func NewRunner(dirs ...string) *Runner {
	if len(dirs) == 0 {
		dirs = DefaultAgentDirs
	}
	return &Runner{Dirs: dirs, meta: map[string]*Metadata{}}
}

// ErrNoAgent is returned when an agent is not installed.
var ErrNoAgent = errors.New("fence agent not found")

// Path finds agent in the runner's directories.
func (r *Runner) Path(agent string) (string, error) {
	if !agentRE.MatchString(agent) {
		return "", fmt.Errorf("fence agent %q: invalid name", agent)
	}
	for _, d := range r.Dirs {
		p := filepath.Join(d, agent)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: %s is not in %s (Debian: apt-get install fence-agents)", ErrNoAgent, agent, strings.Join(r.Dirs, ", "))
}

// Agents lists the fence agents installed.
func (r *Runner) Agents() []string {
	seen := map[string]bool{}
	for _, d := range r.Dirs {
		ents, err := os.ReadDir(d)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if agentRE.MatchString(e.Name()) && e.Type()&fs.ModeDir == 0 {
				seen[e.Name()] = true
			}
		}
	}
	out := make([]string, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Result is the outcome of one fence-agent action.
type Result struct {
	Device   string        `json:"device,omitempty"`
	Agent    string        `json:"agent"`
	Action   string        `json:"action"`
	Plug     string        `json:"plug,omitempty"`
	ExitCode int           `json:"exit_code"` // -1: did not exit by itself
	Stdout   string        `json:"stdout,omitempty"`
	Stderr   string        `json:"stderr,omitempty"`
	Took     time.Duration `json:"took"`
	// Off is set by a successful status action that found the plug off.
	Off bool `json:"off,omitempty"`
	// Err is why the action failed (nil on success).
	Err error `json:"-"`
}

// Error describes a failed result (with the agent's last stderr line).
func (res Result) Error() string {
	if res.Err == nil {
		return ""
	}
	return res.Err.Error()
}

// OK reports success.
func (res Result) OK() bool { return res.Err == nil }

// Input builds the agent's stdin: one key=value line per parameter, the
// action first, in a stable order.
func Input(action string, params map[string]string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "action=%s\n", action)
	keys := make([]string, 0, len(params))
	for k := range params {
		if k != "action" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%s\n", k, params[k])
	}
	return b.Bytes()
}

// tailBuffer keeps the last max bytes written.
type tailBuffer struct {
	mu        sync.Mutex
	buf       []byte
	max       int
	truncated bool
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = slices.Clone(t.buf[len(t.buf)-t.max:])
		t.truncated = true
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := strings.ToValidUTF8(string(t.buf), "?")
	if t.truncated {
		s = "[...]" + s
	}
	return s
}

// Exec runs agent with action and params on stdin, killing its whole
// process group when timeout passes or ctx ends.
func (r *Runner) Exec(ctx context.Context, agent, action string, params map[string]string, timeout time.Duration) Result {
	res := Result{Agent: agent, Action: action, ExitCode: -1, Plug: params["plug"]}
	if res.Plug == "" {
		res.Plug = params["port"]
	}
	path, err := r.Path(agent)
	if err != nil {
		res.Err = err
		return res
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(cctx, path)
	cmd.Stdin = bytes.NewReader(Input(action, params))
	var stdout, stderr = &tailBuffer{max: outputLimit}, &tailBuffer{max: outputLimit}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		// the agent's children (ssh, ipmitool, snmp) go with it
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	cmd.WaitDelay = 2 * time.Second
	start := time.Now()
	err = cmd.Run()
	res.Took = time.Since(start)
	res.Stdout, res.Stderr = stdout.String(), stderr.String()
	if cmd.ProcessState != nil && cmd.ProcessState.Exited() {
		res.ExitCode = cmd.ProcessState.ExitCode()
	}
	switch {
	case cctx.Err() != nil && (res.ExitCode == -1 || errors.Is(err, exec.ErrWaitDelay)):
		if ctx.Err() != nil {
			res.Err = fmt.Errorf("%s %s: canceled after %v%s", agent, action, res.Took.Round(time.Millisecond), lastLine(res.Stderr))
		} else {
			res.Err = fmt.Errorf("%s %s: timed out after %v and was killed%s", agent, action, timeout, lastLine(res.Stderr))
		}
	case res.ExitCode == -1:
		res.Err = fmt.Errorf("%s %s: %v%s", agent, action, err, lastLine(res.Stderr))
	case res.ExitCode == ExitSuccess:
	case res.ExitCode == ExitOff && action == ActionStatus:
		res.Off = true
	case res.ExitCode == ExitFailure:
		res.Err = fmt.Errorf("%s %s failed (exit 1)%s", agent, action, lastLine(res.Stderr))
	default:
		res.Err = fmt.Errorf("%s %s: unknown exit code %d (the protocol knows 0 success, 1 failure, 2 off)%s", agent, action, res.ExitCode, lastLine(res.Stderr))
	}
	return res
}

// lastLine is ": <the last non-empty line of s>" or "".
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(lines[i]); l != "" {
			if len(l) > 300 {
				l = l[:300] + "..."
			}
			return ": " + l
		}
	}
	return ""
}

// Metadata returns agent's metadata (cached per agent).
func (r *Runner) Metadata(ctx context.Context, agent string) (*Metadata, error) {
	return r.metadata(ctx, agent, 30*time.Second)
}

func (r *Runner) metadata(ctx context.Context, agent string, timeout time.Duration) (*Metadata, error) {
	r.mu.Lock()
	m := r.meta[agent]
	r.mu.Unlock()
	if m != nil {
		return m, nil
	}
	res := r.Exec(ctx, agent, ActionMetadata, nil, timeout)
	if res.Err != nil {
		return nil, res.Err
	}
	m, err := ParseMetadata([]byte(res.Stdout))
	if err != nil {
		return nil, fmt.Errorf("%s metadata: %w", agent, err)
	}
	r.mu.Lock()
	if r.meta == nil {
		r.meta = map[string]*Metadata{}
	}
	r.meta[agent] = m
	r.mu.Unlock()
	return m, nil
}

// hostArgument is the parameter that carries the plug for d ("" for none).
func hostArgument(d Device, m *Metadata) string {
	switch d.HostArgument {
	case "none":
		return ""
	case "":
		if m == nil {
			return "plug"
		}
		for _, p := range []string{"plug", "port"} {
			if _, ok := m.Param(p); ok {
				return p
			}
		}
		return ""
	}
	return d.HostArgument
}

// Run runs action on device d for node (node "" for device-wide actions
// such as monitor and list).
func (r *Runner) Run(ctx context.Context, d Device, action, node string) Result {
	params := make(map[string]string, len(d.Params)+1)
	for k, v := range d.Params {
		params[k] = v
	}
	if node != "" {
		m, err := r.metadata(ctx, d.Agent, min(30*time.Second, d.ActionTimeout()))
		if err != nil {
			return Result{Device: d.Name, Agent: d.Agent, Action: action, ExitCode: -1, Err: err}
		}
		if arg := hostArgument(d, m); arg != "" {
			if _, set := params[arg]; !set || len(d.HostMap) > 0 || len(d.Nodes) != 1 {
				params[arg] = d.Plug(node)
			}
		}
	}
	res := r.Exec(ctx, d.Agent, action, params, d.ActionTimeout())
	res.Device = d.Name
	r.stats.add(d.Agent, action, res.OK())
	return res
}
