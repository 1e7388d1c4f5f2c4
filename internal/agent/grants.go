package agent

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/hacs/hacs/internal/cluster"
	"github.com/hacs/hacs/internal/nbd"
)

// Per-volume grants (docs/SECURITY.md, "Who can touch a volume").
//
// A volume's Spec.Grants names the export clients that may open it: export
// client certificates of the cluster by their name ("vmhost1", as in
// `hacs cluster auth client-cert create vmhost1`) and pre-shared key
// identities with the prefix "psk:" ("psk:alice"). nil (the default, and
// every volume created before grants) admits every authenticated client of
// the cluster; an empty list admits none. The cluster's nodes (their node
// certificates: replication, `hacs volume attach --data-dir`) always pass.
// The primary enforces them at the NBD option negotiation (nbd.Export.
// Authorize) and cuts the open connections of a client whose grant is
// removed.

// PSKGrantPrefix marks a pre-shared key identity in a volume's grants.
const PSKGrantPrefix = "psk:"

// maxPSKIdentity bounds a granted pre-shared key identity (psktool's user
// names are short; the store record should stay small).
const maxPSKIdentity = 128

// GrantsRequest changes a volume's grants (POST /v1/volumes/{name}/grants).
type GrantsRequest struct {
	// Op is "grant" or "ungrant".
	Op string `json:"op"`
	// Clients are client certificate names and "psk:IDENTITY"s.
	Clients []string `json:"clients,omitempty"`
	// All without Clients: grant every authenticated client of the
	// cluster (the default: the volume's grants list goes away), or
	// ungrant every client (only the cluster's nodes may open it).
	All bool `json:"all,omitempty"`
}

// ParseGrant checks one granted client: a client certificate name or
// "psk:IDENTITY".
func ParseGrant(s string) (string, error) {
	if id, ok := strings.CutPrefix(s, PSKGrantPrefix); ok {
		switch {
		case id == "":
			return "", fmt.Errorf("client %q: no pre-shared key identity after %q", s, PSKGrantPrefix)
		case len(id) > maxPSKIdentity:
			return "", fmt.Errorf("client %q: a pre-shared key identity has at most %d bytes", s, maxPSKIdentity)
		case strings.ContainsFunc(id, func(r rune) bool { return r <= ' ' || r > '~' || r == ',' }):
			return "", fmt.Errorf("client %q: a granted pre-shared key identity has printable ASCII characters only, without spaces or commas", s)
		}
		return s, nil
	}
	if err := cluster.ValidClientCertName(s); err != nil {
		return "", fmt.Errorf("client %q: not an export client certificate name (1 to 63 lower-case letters, digits, '.', '_' or '-'), nor a pre-shared key identity (psk:IDENTITY)", s)
	}
	return s, nil
}

// validGrantsRequest checks a request's shape.
func validGrantsRequest(req GrantsRequest) error {
	switch req.Op {
	case "grant", "ungrant":
	default:
		return fmt.Errorf("op %q: want grant or ungrant", req.Op)
	}
	if req.All == (len(req.Clients) > 0) {
		return fmt.Errorf("name the clients to %s, or all (not both)", req.Op)
	}
	return nil
}

// applyGrants is a volume's grants after req (validated names).
func applyGrants(volume string, cur []string, req GrantsRequest) ([]string, error) {
	if err := validGrantsRequest(req); err != nil {
		return nil, err
	}
	if req.All {
		if req.Op == "grant" {
			return nil, nil // every authenticated client
		}
		return []string{}, nil // nodes only
	}
	if req.Op == "grant" {
		next := slices.Clone(cur)
		if next == nil {
			next = []string{}
		}
		for _, c := range req.Clients {
			if !slices.Contains(next, c) {
				next = append(next, c)
			}
		}
		slices.Sort(next)
		return next, nil
	}
	if cur == nil {
		return nil, fmt.Errorf("volume %s grants no client by name: every authenticated client of the cluster may open it (the default); to admit only some, grant them (`hacs volume grant %s CLIENT...`), to admit none `hacs volume ungrant %s --all`", volume, volume, volume)
	}
	for _, c := range req.Clients {
		if !slices.Contains(cur, c) {
			return nil, fmt.Errorf("client %s is not granted volume %s (it grants: %s)", c, volume, GrantsString(cur))
		}
	}
	return slices.DeleteFunc(slices.Clone(cur), func(c string) bool { return slices.Contains(req.Clients, c) }), nil
}

// GrantsString describes a volume's grants for people.
func GrantsString(grants []string) string {
	switch {
	case grants == nil:
		return "every authenticated client"
	case len(grants) == 0:
		return "none (the cluster's nodes only)"
	}
	return strings.Join(grants, ", ")
}

// grantsKey identifies a grants list (nil and empty differ).
func grantsKey(grants []string) string {
	if grants == nil {
		return "*"
	}
	return "=" + strings.Join(grants, ",")
}

// grantCheck is the Authorize of a volume's export with these grants (nil
// when the volume has none: every authenticated client).
func grantCheck(clusterID, volume string, grants []string) func(nbd.Peer) error {
	if grants == nil {
		return nil
	}
	granted := slices.Clone(grants)
	return func(p nbd.Peer) error {
		var name string
		switch {
		case p.PSKIdentity != "":
			name = PSKGrantPrefix + p.PSKIdentity
		case p.Cert != nil:
			kind, cid, n := cluster.CertIdentity(p.Cert)
			switch {
			case clusterID != "" && cid != clusterID:
				return fmt.Errorf("volume %s admits only the clients it grants: the certificate of %q is of no export client of this cluster", volume, p.Cert.Subject.CommonName)
			case kind == cluster.CertNode:
				return nil // the cluster's own agents
			case kind == cluster.CertExportClient:
				name = n
			default:
				return fmt.Errorf("volume %s admits only the clients it grants: the certificate of %q is of no export client of this cluster", volume, p.Cert.Subject.CommonName)
			}
		default:
			return fmt.Errorf("volume %s admits only the clients it grants: this connection is not authenticated", volume)
		}
		if slices.Contains(granted, name) {
			return nil
		}
		return fmt.Errorf("client %s is not granted volume %s (an admin grants it with `hacs volume grant %s %s`)", name, volume, volume, name)
	}
}

// checkGrants validates granted clients for a volume with TLS policy tls:
// the names, that the cluster knows the certificate names, that the
// cluster has identities to grant and that the policy asks for them.
func (a *Agent) checkGrants(ctx context.Context, volume string, tls nbd.TLSPolicy, clients []string) ([]string, error) {
	if !a.node.Secure() {
		return nil, errf(http.StatusBadRequest, "this cluster runs without TLS (--insecure): its export clients have no identity to grant")
	}
	if tls == nbd.TLSAllowed || tls == nbd.TLSOff {
		return nil, errf(http.StatusConflict, "volume %s has tls %s: anyone who reaches the export port may open it, so grants would mean nothing; set `hacs volume tls required %s` first", volume, tls, volume)
	}
	out := make([]string, 0, len(clients))
	for _, c := range clients {
		g, err := ParseGrant(strings.TrimSpace(c))
		if err != nil {
			return nil, errf(http.StatusBadRequest, "%v", err)
		}
		out = append(out, g)
	}
	for _, c := range out {
		if strings.HasPrefix(c, PSKGrantPrefix) {
			continue // each agent has its own key file: nothing to check here
		}
		known, err := a.node.ClientCertRecorded(ctx, c)
		if err != nil {
			return nil, err
		}
		if !known {
			return nil, errf(http.StatusNotFound, "no export client certificate named %s (`hacs cluster auth client-cert list`; create it with `hacs cluster auth client-cert create %s`, or write psk:%s for a pre-shared key identity)", c, c, c)
		}
	}
	return out, nil
}

// handleGrants changes which export clients may open a volume.
func (a *Agent) handleGrants(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	var req GrantsRequest
	if err := decodeStrict(r, &req, false); err != nil {
		writeErr(w, err)
		return
	}
	if err := validGrantsRequest(req); err != nil {
		writeErr(w, errf(http.StatusBadRequest, "%v", err))
		return
	}
	v, err := a.volume(r.Context(), name)
	if err != nil {
		writeErr(w, err)
		return
	}
	if req.Op == "grant" {
		if req.Clients, err = a.checkGrants(r.Context(), name, v.spec.TLS, req.Clients); err != nil {
			writeErr(w, err)
			return
		}
	} else {
		for i, c := range req.Clients {
			req.Clients[i] = strings.TrimSpace(c)
		}
	}
	var before []string
	spec, err := a.changeSpec(r.Context(), name, func(s *Spec) error {
		if req.Op == "grant" && !req.All && (s.TLS == nbd.TLSAllowed || s.TLS == nbd.TLSOff) {
			return errf(http.StatusConflict, "volume %s has tls %s: anyone who reaches the export port may open it, so grants would mean nothing; set `hacs volume tls required %s` first", name, s.TLS, name)
		}
		next, err := applyGrants(name, s.Grants, req)
		if err != nil {
			return errf(http.StatusConflict, "%v", err)
		}
		before, s.Grants = s.Grants, next
		return nil
	})
	if err != nil {
		writeErr(w, err)
		return
	}
	what := "all"
	if !req.All {
		what = strings.Join(req.Clients, ", ")
	}
	by := a.actor(r.Context())
	msg := fmt.Sprintf("%s %s: grants now %s (before: %s)", req.Op, what, GrantsString(spec.Grants), GrantsString(before))
	a.log.Info(msg, "event", EventVolumeGrants, "volume", name, "by", by)
	a.node.Emit(EventVolumeGrants, "volume/"+name, msg+" (by "+by+")", map[string]string{"by": by, "op": req.Op, "clients": what, "grants": GrantsString(spec.Grants)})
	writeJSON(w, http.StatusOK, spec)
}

// Events of the grants.
const (
	// EventVolumeGrants: a volume's grants changed (with who did it).
	EventVolumeGrants = "volume-grants-changed"
	// EventVolumeClientsCut: the primary cut open connections of clients
	// no longer granted.
	EventVolumeClientsCut = "volume-clients-cut"
)
