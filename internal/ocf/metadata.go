package ocf

import (
	"context"
	"encoding/xml"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Metadata is what an agent's meta-data action describes.
type Metadata struct {
	Name       string      `xml:"name,attr" json:"name"`
	Version    string      `xml:"version" json:"version,omitempty"`
	Shortdesc  string      `xml:"shortdesc" json:"shortdesc,omitempty"`
	Parameters []Parameter `xml:"parameters>parameter" json:"parameters"`
	Actions    []MetaOp    `xml:"actions>action" json:"actions"`
}

// Parameter is one parameter of an agent.
type Parameter struct {
	Name      string `xml:"name,attr" json:"name"`
	Required  string `xml:"required,attr" json:"required,omitempty"`
	Unique    string `xml:"unique,attr" json:"unique,omitempty"`
	Shortdesc string `xml:"shortdesc" json:"shortdesc,omitempty"`
	Content   struct {
		Type    string `xml:"type,attr" json:"type,omitempty"`
		Default string `xml:"default,attr" json:"default,omitempty"`
	} `xml:"content" json:"content"`
}

// MetaOp is one action an agent advertises.
type MetaOp struct {
	Name     string `xml:"name,attr" json:"name"`
	Timeout  string `xml:"timeout,attr" json:"timeout,omitempty"`
	Interval string `xml:"interval,attr" json:"interval,omitempty"`
	Role     string `xml:"role,attr" json:"role,omitempty"`
}

// ParseMetadata parses the XML of a meta-data action.
func ParseMetadata(b []byte) (*Metadata, error) {
	var m Metadata
	if err := xml.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("meta-data is not valid OCF XML: %w", err)
	}
	if m.Name == "" {
		return nil, fmt.Errorf("meta-data has no resource-agent name")
	}
	return &m, nil
}

// ipMetadata describes the built-in ip type in the same form.
var ipMetadata = &Metadata{Name: "ip", Shortdesc: "floating IP address (built in)",
	Parameters: []Parameter{
		{Name: "ip", Required: "1", Shortdesc: "IPv4 or IPv6 address"},
		{Name: "cidr_netmask", Shortdesc: "prefix length (default 32 for IPv4, 128 for IPv6)"},
		{Name: "nic", Required: "1", Shortdesc: "interface to add the address to"},
		{Name: "arp_count", Shortdesc: "gratuitous ARPs to send after adding it (default 2; 0: none)"},
	},
	Actions: []MetaOp{{Name: "start"}, {Name: "stop"}, {Name: "monitor"}, {Name: "meta-data"}, {Name: "validate-all"}}}

// MetaData runs an agent's meta-data action (the built-in types answer
// from memory).
func (r *Runner) MetaData(ctx context.Context, typ string) (*Metadata, error) {
	if typ == "ip" {
		return ipMetadata, nil
	}
	res := r.Run(ctx, Instance{Name: "meta-data", Type: typ}, ActionMetaData, 10*time.Second, 0)
	if res.RC != RCOK {
		return nil, fmt.Errorf("%s meta-data: %s", typ, res.Message)
	}
	return ParseMetadata([]byte(res.Stdout))
}

// Check compares parameters with an agent's meta-data: every required one
// given, no unknown one.
func (m *Metadata) Check(params map[string]string) error {
	known := map[string]bool{}
	var missing []string
	for _, p := range m.Parameters {
		known[p.Name] = true
		if p.Required == "1" && params[p.Name] == "" {
			missing = append(missing, p.Name)
		}
	}
	var unknown []string
	for k := range params {
		if !known[k] {
			unknown = append(unknown, k)
		}
	}
	sort.Strings(unknown)
	var errs []string
	if len(missing) > 0 {
		errs = append(errs, "missing required parameter(s) "+strings.Join(missing, ", "))
	}
	if len(unknown) > 0 {
		names := make([]string, 0, len(m.Parameters))
		for _, p := range m.Parameters {
			names = append(names, p.Name)
		}
		errs = append(errs, fmt.Sprintf("unknown parameter(s) %s (%s takes: %s)", strings.Join(unknown, ", "), m.Name, strings.Join(names, ", ")))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}
