package fence

import (
	"encoding/xml"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Metadata is a fence agent's self-description (action=metadata), the XML
// format shared by fence agents and OCF resource agents.
type Metadata struct {
	Name       string      `xml:"name,attr" json:"name"`
	ShortDesc  string      `xml:"shortdesc,attr" json:"shortdesc,omitempty"`
	LongDesc   string      `xml:"longdesc" json:"longdesc,omitempty"`
	Parameters []Parameter `xml:"parameters>parameter" json:"parameters"`
	Actions    []struct {
		Name string `xml:"name,attr" json:"name"`
	} `xml:"actions>action" json:"actions"`
}

// Parameter is one parameter an agent accepts.
type Parameter struct {
	Name       string `xml:"name,attr" json:"name"`
	Required   string `xml:"required,attr" json:"-"`
	Deprecated string `xml:"deprecated,attr" json:"-"`
	Obsoletes  string `xml:"obsoletes,attr" json:"obsoletes,omitempty"`
	Content    struct {
		Type    string `xml:"type,attr" json:"type"`
		Default string `xml:"default,attr" json:"default,omitempty"`
	} `xml:"content" json:"content"`
	ShortDesc string `xml:"shortdesc" json:"shortdesc,omitempty"`
}

// IsRequired reports required="1".
func (p Parameter) IsRequired() bool { return p.Required == "1" }

// ParseMetadata parses an agent's metadata XML.
func ParseMetadata(b []byte) (*Metadata, error) {
	var m Metadata
	if err := xml.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("not fence-agent metadata XML: %w", err)
	}
	if m.Name == "" || len(m.Parameters) == 0 {
		return nil, fmt.Errorf("not fence-agent metadata: no resource-agent name or no parameters")
	}
	return &m, nil
}

// Param returns the named parameter.
func (m *Metadata) Param(name string) (Parameter, bool) {
	for _, p := range m.Parameters {
		if p.Name == name {
			return p, true
		}
	}
	return Parameter{}, false
}

// HasAction reports whether the agent advertises action.
func (m *Metadata) HasAction(action string) bool {
	for _, a := range m.Actions {
		if a.Name == action {
			return true
		}
	}
	return false
}

// set by hacs per action, so never required from the configuration
var suppliedByHacs = []string{"action", "plug", "port", "nodename"}

// Check validates a device's parameters against the metadata: unknown
// names, values of the wrong type, required parameters missing.
func (m *Metadata) Check(d Device) error {
	var problems []string
	for k, v := range d.Params {
		p, ok := m.Param(k)
		if !ok {
			problems = append(problems, fmt.Sprintf("unknown parameter %q (%s takes: %s)", k, m.Name, strings.Join(m.names(), ", ")))
			continue
		}
		switch p.Content.Type {
		case "boolean":
			if !slices.Contains([]string{"0", "1", "true", "false", "on", "off", "yes", "no", ""}, strings.ToLower(v)) {
				problems = append(problems, fmt.Sprintf("parameter %s=%q: not a boolean (1 or 0)", k, v))
			}
		case "integer":
			if _, err := strconv.Atoi(v); err != nil {
				problems = append(problems, fmt.Sprintf("parameter %s=%q: not an integer", k, v))
			}
		case "second":
			if _, err := strconv.ParseFloat(v, 64); err != nil {
				problems = append(problems, fmt.Sprintf("parameter %s=%q: not a number of seconds", k, v))
			}
		case "select":
		}
	}
	for _, p := range m.Parameters {
		if !p.IsRequired() || slices.Contains(suppliedByHacs, p.Name) || p.Content.Default != "" {
			continue
		}
		if _, ok := d.Params[p.Name]; ok {
			continue
		}
		// a parameter obsoleted by another one that is set
		if slices.ContainsFunc(m.Parameters, func(q Parameter) bool {
			_, set := d.Params[q.Name]
			return set && (q.Obsoletes == p.Name || p.Obsoletes == q.Name)
		}) {
			continue
		}
		problems = append(problems, fmt.Sprintf("required parameter %s missing (%s)", p.Name, p.ShortDesc))
	}
	if d.HostArgument != "" && d.HostArgument != "none" {
		if _, ok := m.Param(d.HostArgument); !ok {
			problems = append(problems, fmt.Sprintf("host argument %q is not a parameter of %s", d.HostArgument, m.Name))
		}
	}
	if len(problems) > 0 {
		slices.Sort(problems)
		return fmt.Errorf("fence device %s (%s): %s", d.Name, d.Agent, strings.Join(problems, "; "))
	}
	return nil
}

func (m *Metadata) names() []string {
	var out []string
	for _, p := range m.Parameters {
		if p.Deprecated == "1" || slices.Contains(suppliedByHacs, p.Name) || p.Name == "help" || p.Name == "version" {
			continue
		}
		out = append(out, p.Name)
	}
	return out
}
