// Package ocf runs resource agents the way Pacemaker's executor does: OCF
// agents (ocf:PROVIDER:AGENT, found under OCF_ROOT/resource.d/PROVIDER/AGENT)
// with the OCF environment (OCF_ROOT, OCF_RESOURCE_INSTANCE, OCF_RESKEY_<param>,
// OCF_RESKEY_CRM_meta_timeout and _interval, ...) and their exit codes
// interpreted per the OCF standard; and hacs's built-in types (ip: a floating
// IP address). Every action has a timeout: an agent that overruns it is
// killed with its whole process group. Output is kept, bounded.
package ocf

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"
)

// DefaultRoot is where Debian's resource-agents packages install OCF agents.
const DefaultRoot = "/usr/lib/ocf"

// OCF exit codes.
const (
	RCOK               = 0
	RCErrGeneric       = 1
	RCErrArgs          = 2
	RCErrUnimplemented = 3
	RCErrPerm          = 4
	RCErrInstalled     = 5
	RCErrConfigured    = 6
	RCNotRunning       = 7
	RCRunningPromoted  = 8
	RCFailedPromoted   = 9
	// RCTimeout is not an OCF code: the action overran its timeout and was
	// killed (Pacemaker reports it as a timeout, not an exit code).
	RCTimeout = -1
	// RCExecFailed: the agent could not be run at all.
	RCExecFailed = -2
)

// Actions.
const (
	ActionStart    = "start"
	ActionStop     = "stop"
	ActionMonitor  = "monitor"
	ActionMetaData = "meta-data"
	ActionValidate = "validate-all"
)

// MaxOutput bounds the stdout and stderr kept from one action (the tail);
// MaxMetaData bounds a meta-data action's stdout (the XML, kept whole).
const (
	MaxOutput   = 4096
	MaxMetaData = 1 << 20
)

// Instance is one resource as the runner needs it.
type Instance struct {
	Name   string            // OCF_RESOURCE_INSTANCE
	Type   string            // "ip" or "ocf:PROVIDER:AGENT"
	Params map[string]string // OCF_RESKEY_<name>
	Node   string            // OCF_RESKEY_CRM_meta_on_node
}

// Result is the outcome of one action.
type Result struct {
	Action   string        `json:"action"`
	RC       int           `json:"rc"`
	Duration time.Duration `json:"duration"`
	Stdout   string        `json:"stdout,omitempty"`
	Stderr   string        `json:"stderr,omitempty"`
	// Message explains a failure in words (empty on success).
	Message string `json:"message,omitempty"`
}

// Runner runs actions of resource agents.
type Runner struct {
	// Root is OCF_ROOT (DefaultRoot when empty).
	Root string
	// Env is added to every agent's environment (after the runner's own).
	Env []string
}

func (r *Runner) root() string {
	if r == nil || r.Root == "" {
		return DefaultRoot
	}
	return r.Root
}

// ParseType splits "ocf:PROVIDER:AGENT".
func ParseType(t string) (provider, agent string, ok bool) {
	parts := strings.Split(t, ":")
	if len(parts) != 3 || parts[0] != "ocf" || parts[1] == "" || parts[2] == "" {
		return "", "", false
	}
	for _, p := range parts[1:] {
		if strings.ContainsAny(p, "/\x00") || p == "." || p == ".." {
			return "", "", false
		}
	}
	return parts[1], parts[2], true
}

// Path is the agent's executable for an ocf type.
func (r *Runner) Path(typ string) (string, error) {
	prov, agent, ok := ParseType(typ)
	if !ok {
		return "", fmt.Errorf("invalid OCF type %q: want ocf:PROVIDER:AGENT", typ)
	}
	return filepath.Join(r.root(), "resource.d", prov, agent), nil
}

// Describe explains an exit code in words.
func Describe(rc int) string {
	switch rc {
	case RCOK:
		return "success"
	case RCErrGeneric:
		return "generic error (rc 1)"
	case RCErrArgs:
		return "invalid arguments (rc 2)"
	case RCErrUnimplemented:
		return "unimplemented action (rc 3)"
	case RCErrPerm:
		return "insufficient privileges (rc 4)"
	case RCErrInstalled:
		return "not installed (rc 5)"
	case RCErrConfigured:
		return "not configured (rc 6)"
	case RCNotRunning:
		return "not running (rc 7)"
	case RCRunningPromoted:
		return "running, promoted (rc 8)"
	case RCFailedPromoted:
		return "failed, promoted (rc 9)"
	case RCTimeout:
		return "timed out"
	case RCExecFailed:
		return "could not be run"
	}
	return fmt.Sprintf("unknown exit code %d (not an OCF code)", rc)
}

// Hard tells whether a failure code is a hard error: retrying on the same
// node will not help (Pacemaker bans the node for it).
func Hard(rc int) bool {
	switch rc {
	case RCErrArgs, RCErrUnimplemented, RCErrPerm, RCErrInstalled, RCErrConfigured, RCExecFailed:
		return true
	}
	return false
}

// Run runs one action. interval is the monitor's recurring interval (0 for
// a probe and for other actions). It never returns an error: failures are
// in the Result (RC and Message).
func (r *Runner) Run(ctx context.Context, in Instance, action string, timeout, interval time.Duration) Result {
	start := time.Now()
	var res Result
	switch {
	case in.Type == "ip":
		res = runIP(ctx, in, action, timeout)
	case strings.HasPrefix(in.Type, "ocf:"):
		res = r.runOCF(ctx, in, action, timeout, interval)
	default:
		res = Result{RC: RCErrConfigured, Message: fmt.Sprintf("unknown resource type %q", in.Type)}
	}
	res.Action = action
	res.Duration = time.Since(start)
	if res.Message == "" && !success(action, res.RC) {
		res.Message = action + ": " + Describe(res.RC)
		if tail := lastLine(res.Stderr); tail != "" {
			res.Message += ": " + tail
		}
	}
	return res
}

// success tells whether rc is a success for the action (a monitor's 7 and
// 8 are answers, not failures; the caller interprets them).
func success(action string, rc int) bool {
	switch action {
	case ActionMonitor:
		return rc == RCOK || rc == RCNotRunning || rc == RCRunningPromoted
	}
	return rc == RCOK
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if strings.ContainsRune(s, '\uFFFD') || !utf8.ValidString(s) {
		return "(unprintable output; see the agent's stderr)"
	}
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// Env builds the OCF environment of an action (without the inherited one).
func (r *Runner) ocfEnv(in Instance, action string, timeout, interval time.Duration) []string {
	prov, agent, _ := ParseType(in.Type)
	env := []string{
		"OCF_ROOT=" + r.root(),
		"OCF_RA_VERSION_MAJOR=1",
		"OCF_RA_VERSION_MINOR=1",
		"OCF_RESOURCE_INSTANCE=" + in.Name,
		"OCF_RESOURCE_TYPE=" + agent,
		"OCF_RESOURCE_PROVIDER=" + prov,
		"OCF_RESKEY_CRM_meta_timeout=" + strconv.FormatInt(timeout.Milliseconds(), 10),
		"OCF_RESKEY_CRM_meta_interval=" + strconv.FormatInt(interval.Milliseconds(), 10),
		"OCF_RESKEY_CRM_meta_name=" + action,
		"OCF_RESKEY_CRM_meta_on_node=" + in.Node,
		"OCF_RESKEY_crm_feature_set=3.16.2",
		"OCF_CHECK_LEVEL=0",
	}
	if in.Node != "" {
		env = append(env, "OCF_RESKEY_CRM_meta_on_node_uuid="+in.Node)
	}
	keys := make([]string, 0, len(in.Params))
	for k := range in.Params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, "OCF_RESKEY_"+k+"="+in.Params[k])
	}
	return env
}

func (r *Runner) runOCF(ctx context.Context, in Instance, action string, timeout, interval time.Duration) Result {
	path, err := r.Path(in.Type)
	if err != nil {
		return Result{RC: RCErrConfigured, Message: err.Error()}
	}
	if st, err := os.Stat(path); err != nil {
		// Pacemaker reports a missing agent as "not installed"; a probe
		// of a missing agent means it cannot run here.
		return Result{RC: RCErrInstalled, Message: fmt.Sprintf("agent %s is not installed: %v", in.Type, err)}
	} else if st.IsDir() || st.Mode()&0o111 == 0 {
		return Result{RC: RCErrInstalled, Message: fmt.Sprintf("agent %s (%s) is not an executable file", in.Type, path)}
	}
	if in.Type != "" && strings.Contains(in.Name, "=") {
		return Result{RC: RCErrArgs, Message: "invalid instance name"}
	}
	env := append(os.Environ(), r.Env...)
	env = append(env, r.ocfEnv(in, action, timeout, interval)...)
	maxOut := 0
	if action == ActionMetaData {
		maxOut = MaxMetaData
	}
	return execute(ctx, path, []string{action}, env, timeout, maxOut)
}

// tailBuffer keeps the last MaxOutput bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
	cut bool
	max int // 0: MaxOutput
}

func (t *tailBuffer) limit() int {
	if t.max > 0 {
		return t.max
	}
	return MaxOutput
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.limit() {
		t.buf = append(t.buf[:0:0], t.buf[len(t.buf)-t.limit():]...)
		t.cut = true
	}
	return len(p), nil
}

// String returns the kept output as valid text (invalid UTF-8 and control
// characters other than newline and tab replaced).
func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := strings.ToValidUTF8(string(t.buf), "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 && r != '\n' && r != '\t' {
			return '\uFFFD'
		}
		return r
	}, s)
	for len(s) > t.limit() {
		_, size := utf8.DecodeRuneInString(s)
		s = s[size:]
		t.cut = true
	}
	if t.cut {
		s = "…" + s
	}
	return s
}

// execute runs a command in its own process group, killed (the whole
// group) when the timeout passes or ctx ends.
func execute(ctx context.Context, path string, args, env []string, timeout time.Duration, maxStdout int) Result {
	if timeout <= 0 {
		timeout = 20 * time.Second
	}
	cmd := exec.Command(path, args...)
	cmd.Env = env
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, stderr := tailBuffer{max: maxStdout}, tailBuffer{}
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		rc := RCExecFailed
		if errors.Is(err, os.ErrNotExist) {
			rc = RCErrInstalled
		}
		return Result{RC: rc, Message: fmt.Sprintf("cannot run %s: %v", path, err)}
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var err error
	timedOut := false
	select {
	case err = <-done:
	case <-timer.C:
		timedOut = true
	case <-ctx.Done():
		timedOut = true
	}
	if timedOut {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			// Wait is stuck on a pipe held by an escaped grandchild.
		}
		msg := fmt.Sprintf("timed out after %v: killed", timeout)
		if ctx.Err() != nil {
			msg = "cancelled: killed"
		}
		return Result{RC: RCTimeout, Stdout: stdout.String(), Stderr: stderr.String(), Message: msg + tailOf(&stderr)}
	}
	rc := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			return Result{RC: RCExecFailed, Stdout: stdout.String(), Stderr: stderr.String(), Message: err.Error()}
		}
		rc = ee.ExitCode()
		if rc < 0 {
			return Result{RC: RCExecFailed, Stdout: stdout.String(), Stderr: stderr.String(),
				Message: fmt.Sprintf("killed by a signal (%v)", ee.ProcessState) + tailOf(&stderr)}
		}
	}
	return Result{RC: rc, Stdout: stdout.String(), Stderr: stderr.String()}
}

func tailOf(t *tailBuffer) string {
	if l := lastLine(t.String()); l != "" {
		return ": " + l
	}
	return ""
}

// PathEnv returns PATH with the usual system directories, for the
// agents' helpers (ip, arping, mount, ...).
func pathEnv() string {
	p := os.Getenv("PATH")
	for _, d := range []string{"/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		if !slicesContains(filepath.SplitList(p), d) {
			p += string(os.PathListSeparator) + d
		}
	}
	return p
}

func slicesContains(s []string, x string) bool {
	for _, v := range s {
		if v == x {
			return true
		}
	}
	return false
}
