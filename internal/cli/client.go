package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// DefaultCluster is the agent API the CLI talks to when neither --cluster
// nor HACS_CLUSTER says otherwise.
const DefaultCluster = "127.0.0.1:7700"

// apiClient talks to the agents' HTTP API, trying each address in turn (like
// etcdctl's --endpoints), so the CLI keeps working while a node is down.
type apiClient struct {
	endpoints []string
	http      *http.Client
}

func newAPIClient(flag string) *apiClient {
	spec := flag
	if spec == "" {
		spec = os.Getenv("HACS_CLUSTER")
	}
	if spec == "" {
		spec = DefaultCluster
	}
	var eps []string
	for _, e := range strings.Split(spec, ",") {
		if e = strings.TrimSpace(e); e != "" {
			eps = append(eps, strings.TrimPrefix(strings.TrimPrefix(e, "http://"), "https://"))
		}
	}
	return &apiClient{endpoints: eps, http: &http.Client{Timeout: 10 * time.Minute}}
}

// apiStatusError is an error answer from an agent.
type apiStatusError struct {
	Code int
	Msg  string
}

func (e *apiStatusError) Error() string { return e.Msg }

// do sends a request; body and out are JSON (either may be nil).
func (c *apiClient) do(ctx context.Context, method, path string, body, out any) error {
	var payload []byte
	if body != nil {
		var err error
		if payload, err = json.Marshal(body); err != nil {
			return err
		}
	}
	var errs []string
	for _, ep := range c.endpoints {
		req, err := http.NewRequestWithContext(ctx, method, "http://"+ep+path, bytes.NewReader(payload))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := c.http.Do(req)
		if err != nil {
			errs = append(errs, err.Error())
			continue // next agent
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
		resp.Body.Close()
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		if resp.StatusCode == http.StatusServiceUnavailable && len(c.endpoints) > 1 {
			errs = append(errs, ep+": "+apiMessage(b))
			continue // that agent cannot serve (no quorum): ask another
		}
		if resp.StatusCode/100 != 2 {
			return &apiStatusError{Code: resp.StatusCode, Msg: apiMessage(b)}
		}
		if out != nil {
			if err := json.Unmarshal(b, out); err != nil {
				return fmt.Errorf("%s: unexpected answer: %w", ep, err)
			}
		}
		return nil
	}
	return fmt.Errorf("no agent answered (tried %s): %s\nstart one with `hacs agent`, or point --cluster / HACS_CLUSTER at a running agent's API",
		strings.Join(c.endpoints, ", "), strings.Join(errs, "; "))
}

func apiMessage(b []byte) string {
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(b, &e) == nil && e.Error != "" {
		return e.Error
	}
	return strings.TrimSpace(string(b))
}

var rangeRE = regexp.MustCompile(`^(.*?)(\d+)-(\d+)$`)

// expandNames expands the VHACS range syntax: "node1-3,node5" is node1,
// node2, node3, node5; leading zeros are kept ("vm01-03"). all, when not
// nil, is what "ALL" means.
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
				return nil, errors.New("ALL is not allowed here")
			}
			names, err := all()
			if err != nil {
				return nil, err
			}
			for _, n := range names {
				add(n)
			}
		case rangeRE.MatchString(item):
			m := rangeRE.FindStringSubmatch(item)
			lo, _ := strconv.Atoi(m[2])
			hi, err := strconv.Atoi(m[3])
			if err != nil || hi < lo || hi-lo > 1000 {
				return nil, fmt.Errorf("invalid range %q: want PREFIXlow-high with low <= high (at most 1000 names)", item)
			}
			width := 0
			if len(m[2]) > 1 && m[2][0] == '0' {
				width = len(m[2])
			}
			for i := lo; i <= hi; i++ {
				add(fmt.Sprintf("%s%0*d", m[1], width, i))
			}
		default:
			add(item)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no names in %q", spec)
	}
	return out, nil
}
