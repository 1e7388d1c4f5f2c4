package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/hacs/hacs/internal/cluster"
)

// DefaultCluster is the agent API the CLI talks to when neither --cluster
// nor HACS_CLUSTER says otherwise.
const DefaultCluster = "127.0.0.1:7700"

// apiFlags are the flags of every command that talks to the cluster:
// which agent(s) to ask, and whether to print JSON.
type apiFlags struct {
	cluster   string
	dataDir   string
	asJSON    bool
	caFile    string
	tokenFile string
}

const clusterFlagHelp = "agent API address(es) HOST:PORT[,HOST:PORT...], tried in turn (default $HACS_CLUSTER or " + DefaultCluster + ")"

// register adds --cluster, --data-dir and --json to fs (a command's
// persistent flags, so that its subcommands have them too).
func (f *apiFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.cluster, "cluster", "", clusterFlagHelp)
	fs.StringVar(&f.dataDir, "data-dir", "", "data directory of a local agent: talk to it over DATA_DIR/"+cluster.APISocket+" instead of TCP")
	fs.BoolVar(&f.asJSON, "json", false, "print JSON instead of tables")
	fs.StringVar(&f.caFile, "ca-file", "", "the cluster CA certificate to check the agents with (default $HACS_CA_FILE, else ca.crt in the client config directory: $HACS_CONFIG_DIR or ~/.config/hacs)")
	fs.StringVar(&f.tokenFile, "token-file", "", "file holding the API token (default $HACS_TOKEN, else $HACS_TOKEN_FILE, else token in the client config directory)")
}

// client is the API client the flags select.
func (f *apiFlags) client() *apiClient {
	switch {
	case f.cluster != "" && f.dataDir != "":
		return &apiClient{err: usagef("--cluster and --data-dir exclude each other: give the agents' API addresses or a local agent's data directory")}
	case f.dataDir != "":
		return newAPIClientWith("unix:"+filepath.Join(f.dataDir, cluster.APISocket), f.caFile, f.tokenFile)
	}
	return newAPIClientWith(f.cluster, f.caFile, f.tokenFile)
}

// print writes v as indented JSON with --json, else the table.
func (f *apiFlags) print(cmd *cobra.Command, v any, table func(w io.Writer)) error {
	if f.asJSON {
		return printJSON(cmd.OutOrStdout(), v)
	}
	tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// apiClient talks to the agents' HTTP API, trying each endpoint in turn
// (like etcdctl's --endpoints), so the CLI keeps working while a node is
// down. An endpoint is HOST:PORT (HTTPS, checked against the cluster CA),
// http://HOST:PORT (an --insecure cluster) or unix:PATH (an agent's API
// socket).
type apiClient struct {
	endpoints []string
	http      *http.Client
	actor     string
	token     string // API token (Authorization: Bearer)
	plain     bool   // the endpoints were given as http://
	err       error  // a configuration error, returned by every call
}

// one is a client of the single endpoint ep, with the same credentials.
func (c *apiClient) one(ep string) *apiClient {
	if c.plain && !strings.HasPrefix(ep, "unix:") && !strings.HasPrefix(ep, "http://") {
		ep = "http://" + ep
	}
	return &apiClient{endpoints: []string{ep}, http: c.http, actor: c.actor, token: c.token, plain: c.plain, err: c.err}
}

func newAPIClient(spec string) *apiClient { return newAPIClientWith(spec, "", "") }

// clientConfigDir is where the CLI finds its credentials by default:
// $HACS_CONFIG_DIR, else ~/.config/hacs.
func clientConfigDir() string {
	if d := os.Getenv("HACS_CONFIG_DIR"); d != "" {
		return d
	}
	d, err := os.UserConfigDir()
	if err != nil {
		return ""
	}
	return filepath.Join(d, "hacs")
}

// loadToken finds the API token: --token-file, $HACS_TOKEN,
// $HACS_TOKEN_FILE, then the client config directory's token file.
func loadToken(tokenFile string) (string, error) {
	if tokenFile == "" {
		if t := strings.TrimSpace(os.Getenv("HACS_TOKEN")); t != "" {
			return t, nil
		}
		tokenFile = os.Getenv("HACS_TOKEN_FILE")
	}
	if tokenFile == "" {
		if d := clientConfigDir(); d != "" {
			if b, err := os.ReadFile(filepath.Join(d, "token")); err == nil {
				return strings.TrimSpace(string(b)), nil
			}
		}
		return "", nil
	}
	b, err := os.ReadFile(tokenFile)
	if err != nil {
		return "", fmt.Errorf("API token: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// loadCA finds the cluster CA certificate: --ca-file, $HACS_CA_FILE, then
// the client config directory's ca.crt. "" when there is none.
func loadCA(caFile string) ([]byte, string, error) {
	if caFile == "" {
		caFile = os.Getenv("HACS_CA_FILE")
	}
	if caFile == "" {
		if d := clientConfigDir(); d != "" {
			p := filepath.Join(d, "ca.crt")
			if b, err := os.ReadFile(p); err == nil {
				return b, p, nil
			}
		}
		return nil, "", nil
	}
	b, err := os.ReadFile(caFile)
	if err != nil {
		return nil, caFile, fmt.Errorf("cluster CA certificate: %w", err)
	}
	return b, caFile, nil
}

func newAPIClientWith(spec, caFile, tokenFile string) *apiClient {
	if spec == "" {
		spec = os.Getenv("HACS_CLUSTER")
	}
	if spec == "" {
		spec = DefaultCluster
	}
	c := &apiClient{actor: actorName()}
	needTLS := false
	for _, e := range strings.Split(spec, ",") {
		e = strings.TrimSpace(e)
		plain := strings.HasPrefix(e, "http://")
		e = strings.TrimSuffix(strings.TrimPrefix(strings.TrimPrefix(e, "http://"), "https://"), "/")
		if e == "" {
			continue
		}
		if !strings.HasPrefix(e, "unix:") {
			if _, _, err := net.SplitHostPort(e); err != nil {
				c.err = usagef("--cluster / HACS_CLUSTER: %q is not HOST:PORT (or unix:PATH)", e)
			}
			if plain {
				c.plain = true
				e = "http://" + e
			} else {
				needTLS = true
			}
		}
		c.endpoints = append(c.endpoints, e)
	}
	tok, err := loadToken(tokenFile)
	if err != nil && c.err == nil {
		c.err = err
	}
	c.token = tok
	var tlsCfg *tls.Config
	caPEM, caPath, err := loadCA(caFile)
	switch {
	case err != nil && needTLS && c.err == nil:
		c.err = err
	case caPEM != nil:
		if tlsCfg, err = cluster.CATLSConfig(caPEM); err != nil && c.err == nil {
			c.err = fmt.Errorf("cluster CA certificate %s: %w", caPath, err)
		}
	case needTLS && c.err == nil:
		c.err = usagef("no cluster CA certificate to check the agents with: give --ca-file FILE (DATA_DIR/%s/%s of any node), set HACS_CA_FILE, or put it at %s; for a cluster created with --insecure, give its addresses as http://HOST:PORT", cluster.TLSDir, cluster.CACertFile, filepath.Join(clientConfigDir(), "ca.crt"))
	}
	if len(c.endpoints) == 0 && c.err == nil {
		c.err = usagef("--cluster / HACS_CLUSTER: no address in %q", spec)
	}
	dialer := &net.Dialer{Timeout: 3 * time.Second}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if p, ok := socketPath(addr); ok {
				return dialer.DialContext(ctx, "unix", p)
			}
			return dialer.DialContext(ctx, network, addr)
		},
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
		TLSClientConfig:     tlsCfg,
	}
	// long enough for a verify of a large volume; reads pass a shorter ctx
	c.http = &http.Client{Timeout: 30 * time.Minute, Transport: tr}
	return c
}

// sockets are the Unix socket paths of unix:PATH endpoints; in URLs, the
// n-th is the host "unix-n".
var sockets struct {
	sync.Mutex
	paths []string
}

// baseURL of an endpoint.
func baseURL(ep string) string {
	p, ok := strings.CutPrefix(ep, "unix:")
	if !ok {
		if strings.HasPrefix(ep, "http://") {
			return ep
		}
		return "https://" + ep
	}
	sockets.Lock()
	defer sockets.Unlock()
	i := slices.Index(sockets.paths, p)
	if i < 0 {
		i = len(sockets.paths)
		sockets.paths = append(sockets.paths, p)
	}
	return fmt.Sprintf("http://unix-%d", i)
}

// socketPath is the socket of a "unix-n:80" dial address.
func socketPath(addr string) (string, bool) {
	n, ok := strings.CutPrefix(strings.TrimSuffix(addr, ":80"), "unix-")
	i, err := strconv.Atoi(n)
	if !ok || err != nil {
		return "", false
	}
	sockets.Lock()
	defer sockets.Unlock()
	if i >= len(sockets.paths) {
		return "", false
	}
	return sockets.paths[i], true
}

// actorName is who the CLI runs as, sent with every request so that
// changes are logged with their author.
func actorName() string {
	name := os.Getenv("USER")
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	if name == "" {
		name = "uid" + strconv.Itoa(os.Getuid())
	}
	host, _ := os.Hostname()
	if host == "" {
		return name
	}
	return name + "@" + host
}

// apiStatusError is an error answer from an agent.
type apiStatusError struct {
	Code int
	Msg  string
}

func (e *apiStatusError) Error() string { return e.Msg }

// pin returns a client of the first endpoint whose agent answers and holds
// its lease (so it sees the cluster as it is), or of the first that answers
// at all; st is that agent's status. Successive reads through the pinned
// client come from one agent's view.
func (c *apiClient) pin(ctx context.Context) (*apiClient, cluster.Status, error) {
	if c.err != nil {
		return nil, cluster.Status{}, c.err
	}
	var first *apiClient
	var firstSt cluster.Status
	var errs []string
	for _, ep := range c.endpoints {
		one := c.one(ep)
		var st cluster.Status
		if err := one.do(ctx, "GET", "/v1/status", nil, &st); err != nil {
			errs = append(errs, err.Error())
			continue
		}
		if st.Serving.Serving {
			return one, st, nil
		}
		if first == nil {
			first, firstSt = one, st
		}
	}
	if first != nil {
		return first, firstSt, nil
	}
	if len(c.endpoints) == 1 {
		return nil, cluster.Status{}, errors.New(errs[0])
	}
	return nil, cluster.Status{}, fmt.Errorf("no agent answered: %s", strings.Join(errs, "; "))
}

// do sends a request; body and out are JSON (either may be nil). An agent
// that cannot be reached, or answers 503 (it has no quorum), is skipped for
// the next endpoint.
func (c *apiClient) do(ctx context.Context, method, path string, body, out any) error {
	if c.err != nil {
		return c.err
	}
	var payload []byte
	if body != nil {
		var err error
		if payload, err = json.Marshal(body); err != nil {
			return err
		}
	}
	var errs []string
	for _, ep := range c.endpoints {
		req, err := http.NewRequestWithContext(ctx, method, baseURL(ep)+path, bytes.NewReader(payload))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set(cluster.ActorHeader, c.actor)
		if c.token != "" && !strings.HasPrefix(ep, "http://") {
			req.Header.Set("Authorization", "Bearer "+c.token)
		}
		resp, err := c.http.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("%s: %w", ep, ctx.Err())
			}
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err
			}
			if strings.Contains(err.Error(), "server gave HTTP response to HTTPS client") {
				err = fmt.Errorf("%s speaks plain HTTP: its cluster runs with --insecure; give its address as http://%s", ep, ep)
			}
			errs = append(errs, err.Error())
			continue // next agent
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
		resp.Body.Close()
		if err != nil {
			errs = append(errs, ep+": "+err.Error())
			continue
		}
		if resp.StatusCode == http.StatusServiceUnavailable && len(c.endpoints) > 1 {
			errs = append(errs, ep+": "+cluster.APIErrorMessage(b))
			continue // that agent cannot serve (no quorum): ask another
		}
		if resp.StatusCode/100 != 2 {
			return &apiStatusError{Code: resp.StatusCode, Msg: cluster.APIErrorMessage(b)}
		}
		if out != nil {
			if err := json.Unmarshal(b, out); err != nil {
				return fmt.Errorf("%s: unexpected answer to %s %s: %w", ep, method, path, err)
			}
		}
		return nil
	}
	return &unreachableError{endpoints: c.endpoints, errs: errs}
}

// hedgeDelay is how long getHedged waits for an agent's answer before it
// asks the next agent too (a variable for tests only).
var hedgeDelay = 300 * time.Millisecond

// getHedged reads path (a GET, which changes nothing) from the first agent
// that answers: it asks the endpoints in order, the next one as soon as
// every agent asked so far has failed (unreachable, or 503: no quorum) or
// after hedgeDelay without an answer. The first answer wins (a 2xx, or an
// error status other than 503, as with do) and the other requests are
// cancelled. With do, an agent that accepts the request and never answers
// (cut off by a partition, or without quorum and stuck checking the API
// token) holds the caller until its context ends, and the agents after it
// are never asked; here it costs hedgeDelay. For the lookups that must
// keep working while a node misbehaves (hacs volume attach following a
// volume's primary).
func (c *apiClient) getHedged(ctx context.Context, path string, out any) error {
	if c.err != nil {
		return c.err
	}
	if len(c.endpoints) == 1 {
		return c.do(ctx, "GET", path, nil, out)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type answer struct {
		ep   string
		body json.RawMessage
		err  error
	}
	answers := make(chan answer, len(c.endpoints))
	next, running := 0, 0
	ask := func() {
		ep := c.endpoints[next]
		one := c.one(ep)
		next++
		running++
		go func() {
			a := answer{ep: ep}
			a.err = one.do(ctx, "GET", path, nil, &a.body)
			answers <- a
		}()
	}
	ask()
	timer := time.NewTimer(hedgeDelay)
	defer timer.Stop()
	var errs []string
	for {
		select {
		case a := <-answers:
			running--
			var se *apiStatusError
			switch {
			case a.err == nil:
				if out == nil || len(a.body) == 0 {
					return nil
				}
				return json.Unmarshal(a.body, out)
			case errors.As(a.err, &se) && se.Code != http.StatusServiceUnavailable:
				return a.err
			}
			var ue *unreachableError
			switch {
			case errors.As(a.err, &ue):
				errs = append(errs, ue.reason())
			case se != nil:
				errs = append(errs, a.ep+": "+se.Msg)
			default:
				errs = append(errs, a.err.Error())
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if next < len(c.endpoints) {
				ask()
				timer.Reset(hedgeDelay)
			} else if running == 0 {
				return &unreachableError{endpoints: c.endpoints, errs: errs}
			}
		case <-timer.C:
			if next < len(c.endpoints) {
				ask()
				timer.Reset(hedgeDelay)
			}
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", strings.Join(c.endpoints[:next], ", "), ctx.Err())
		}
	}
}

// unreachableError: no agent answered.
type unreachableError struct {
	endpoints, errs []string
}

func (e *unreachableError) Error() string {
	hint := "start one with `hacs agent`, or point --cluster / HACS_CLUSTER at a running agent's API"
	switch {
	case strings.Contains(e.reason(), cluster.ErrNoQuorumMsg):
		// an agent answered, but it is cut off from the majority
		hint = "ask an agent of the majority of the cluster's voters (--cluster / HACS_CLUSTER), or start the voters that are down"
	case len(e.endpoints) == 1 && strings.HasPrefix(e.endpoints[0], "unix:"):
		hint = "is the agent of that --data-dir running?"
	}
	return fmt.Sprintf("no agent answered (tried %s): %s; %s", strings.Join(e.endpoints, ", "), e.reason(), hint)
}

func (e *unreachableError) reason() string { return strings.Join(e.errs, "; ") }

var rangeRE = regexp.MustCompile(`^(.*?)(\d+)-(\d+)$`)

// maxRange bounds one range item (vm1-1000 is the largest).
const maxRange = 1000

// expandNames expands the VHACS range syntax: "node1-3,node5" is node1,
// node2, node3, node5; leading zeros are kept ("vm01-03"). all, when not
// nil, is what "ALL" means. Every name must be a valid node or volume name
// (cluster.ValidName).
func expandNames(spec string, all func() ([]string, error)) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	add := func(n string) {
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	for _, item := range strings.Split(spec, ",") {
		item = strings.TrimSpace(item)
		switch {
		case item == "":
			continue
		case item == "ALL":
			if all == nil {
				return nil, usagef("ALL is not allowed here: name them (range syntax such as node1-3,node5)")
			}
			names, err := all()
			if err != nil {
				return nil, err
			}
			if len(names) == 0 {
				return nil, errors.New("ALL: there are none in the cluster")
			}
			for _, n := range names {
				add(n)
			}
		case rangeRE.MatchString(item):
			m := rangeRE.FindStringSubmatch(item)
			lo, err1 := strconv.Atoi(m[2])
			hi, err2 := strconv.Atoi(m[3])
			switch {
			case err1 != nil || err2 != nil:
				return nil, usagef("invalid range %q: numbers too large", item)
			case hi < lo:
				return nil, usagef("invalid range %q: %d is above %d (write low-high, such as %s%d-%d)", item, lo, hi, m[1], hi, lo)
			case hi-lo >= maxRange:
				return nil, usagef("invalid range %q: %d names, at most %d in one range", item, hi-lo+1, maxRange)
			}
			width := 0
			if len(m[2]) > 1 && m[2][0] == '0' {
				width = len(m[2])
			}
			for i := lo; i <= hi; i++ {
				n := fmt.Sprintf("%s%0*d", m[1], width, i)
				if err := validName(n); err != nil {
					return nil, usagef("invalid range %q: %v", item, err)
				}
				add(n)
			}
		default:
			if n := len(item); n > 1 && item[n-1] == '-' && item[n-2] >= '0' && item[n-2] <= '9' {
				return nil, usagef("invalid range %q: the high end is missing (write low-high, such as %s3)", item, item)
			}
			if err := validName(item); err != nil {
				return nil, usagef("%v", err)
			}
			add(item)
		}
	}
	if len(out) == 0 {
		return nil, usagef("no names in %q", spec)
	}
	return out, nil
}

// validName checks a node or volume name (cluster.ValidName).
func validName(n string) error {
	if cluster.ValidName("x", n) != nil {
		return fmt.Errorf("invalid name %q: names are 1 to 63 lower-case letters, digits, '.', '_' or '-', starting and ending with a letter or digit", n)
	}
	return nil
}

// usageError is a mistake on the command line: exit code 2.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Errorf(format, args...)}
}

// asUsage marks err as a usage error (nil stays nil).
func asUsage(err error) error {
	if err == nil {
		return nil
	}
	var ue *usageError
	if errors.As(err, &ue) {
		return err
	}
	return &usageError{err}
}
