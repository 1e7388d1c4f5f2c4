package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/hacs/hacs/internal/agent"
	"github.com/hacs/hacs/internal/cluster"
	"github.com/hacs/hacs/internal/fence"
)

// clusterView is one consistent look at the cluster, from one agent: what
// `hacs cluster status`, `monitor`, `check` and `hacs node list` show.
type clusterView struct {
	Cluster      string      `json:"cluster"`
	AskedNode    string      `json:"asked_node"` // the agent that answered
	Version      string      `json:"version"`
	Time         time.Time   `json:"time"`
	DC           string      `json:"dc"`
	Quorum       quorumView  `json:"quorum"`
	Nodes        []nodeView  `json:"nodes"`
	Volumes      []volumeRow `json:"volumes"`
	VolumesError string      `json:"volumes_error,omitempty"`
	// Resources are the resources besides volumes (ip, ocf, groups).
	Resources []resourceRow `json:"resources"`
	// Fencing is the fencing status (nil when the agent has no fencing
	// API).
	Fencing *fence.Status `json:"fencing,omitempty"`
	// CARotation is a CA rotation in progress (hacs cluster rotate-ca).
	CARotation *cluster.CARotationStatus `json:"ca_rotation,omitempty"`
	Problems   []problem                 `json:"problems"`
}

type quorumView struct {
	OK           bool `json:"ok"`
	Voters       int  `json:"voters"`
	VotersOnline int  `json:"voters_online"`
	// Serving: the agent that answered holds its liveness lease (it
	// reaches a quorum of the cluster store).
	Serving bool   `json:"serving"`
	Reason  string `json:"reason,omitempty"`
	// Stale: that agent's membership view may be outdated.
	Stale bool `json:"stale,omitempty"`
}

// nodeView is a node with what it serves.
type nodeView struct {
	cluster.NodeInfo
	DC        bool     `json:"dc"`
	Primaries []string `json:"primaries"`
	Replicas  []string `json:"replicas"`
}

// volumeRow is a volume with the state of each replica.
type volumeRow struct {
	agent.VolumeInfo
	ReplicaStates []replicaState `json:"replica_states"`
	URI           string         `json:"uri,omitempty"`
}

// replicaState is one replica of a volume: on which node, primary (P) or
// secondary (S), and in-sync, resyncing (with its progress), outdated or
// failed.
type replicaState struct {
	Node     string  `json:"node"`
	Role     string  `json:"role"`
	State    string  `json:"state"`
	Progress float64 `json:"progress,omitempty"`
	Error    string  `json:"error,omitempty"`
}

func (r replicaState) String() string {
	s := r.Node + ":" + r.Role + "/" + r.State
	if r.State == "resyncing" {
		s += fmt.Sprintf(" %.0f%%", r.Progress)
	}
	return s
}

// problem is one finding of the audit.
type problem struct {
	Kind    string `json:"kind"`
	Subject string `json:"subject,omitempty"`
	Message string `json:"message"`
}

// timeNow is the clock of the views and displayLoc the time zone times
// are shown in (tests set them).
var (
	timeNow    = time.Now
	displayLoc = time.Local
)

// maxDetails bounds the volumes whose primary is asked for replica
// progress in one look (the unhealthy ones first).
const maxDetails = 32

// gather reads the cluster through one agent (the first that answers and
// holds its lease). With details, the primary of every unhealthy volume is
// asked for its replicas' states (resync progress), up to maxDetails.
func gather(ctx context.Context, c *apiClient, details func(agent.VolumeInfo) bool) (clusterView, error) {
	one, st, err := c.pin(ctx)
	if err != nil {
		return clusterView{}, err
	}
	v := clusterView{Cluster: st.Cluster, AskedNode: st.Name, Version: st.Version, Time: timeNow(), DC: st.Leadership.DC,
		Quorum: quorumView{Serving: st.Serving.Serving, Reason: st.Serving.Reason}}
	var m cluster.Membership
	if err := one.do(ctx, "GET", "/v1/nodes", nil, &m); err != nil {
		return clusterView{}, fmt.Errorf("%s: reading the nodes: %w", st.Name, err)
	}
	v.Quorum.Stale = m.Stale
	var vols []agent.VolumeInfo
	if err := one.do(ctx, "GET", "/v1/volumes", nil, &vols); err != nil {
		v.VolumesError = err.Error()
	}
	if details != nil {
		var want []int
		for i, vi := range vols {
			if details(vi) && len(want) < maxDetails {
				want = append(want, i)
			}
		}
		var wg sync.WaitGroup
		sem := make(chan struct{}, 8)
		for _, i := range want {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				var full agent.VolumeInfo
				if one.do(ctx, "GET", "/v1/volumes/"+vols[i].Spec.Name, nil, &full) == nil {
					vols[i] = full
				}
			}()
		}
		wg.Wait()
	}
	var fst fence.Status
	if one.do(ctx, "GET", "/v1/fence", nil, &fst) == nil {
		v.Fencing = &fst
	}
	var rot cluster.CARotationStatus
	if one.do(ctx, "GET", "/v1/pki/rotate", nil, &rot) == nil && rot.Rotation != nil && rot.Rotation.Phase != cluster.RotationFinished {
		rot.Trust = ""
		v.CARotation = &rot
	}
	var rl []agent.ResourceInfo
	v.Resources = []resourceRow{}
	if one.do(ctx, "GET", "/v1/resources", nil, &rl) == nil {
		for _, r := range rl {
			v.Resources = append(v.Resources, newResourceRow(r))
		}
	}
	v.build(m, vols)
	v.Problems = audit(v)
	return v, nil
}

// build fills the nodes and volumes of the view.
func (v *clusterView) build(m cluster.Membership, vols []agent.VolumeInfo) {
	idx := map[string]int{}
	v.Nodes = make([]nodeView, 0, len(m.Nodes))
	for i, n := range m.Nodes {
		idx[n.Name] = i
		v.Nodes = append(v.Nodes, nodeView{NodeInfo: n, DC: n.Name == v.DC, Primaries: []string{}, Replicas: []string{}})
		if n.Voter {
			v.Quorum.Voters++
			if n.Online {
				v.Quorum.VotersOnline++
			}
		}
	}
	v.Quorum.OK = v.Quorum.Serving && !v.Quorum.Stale && v.Quorum.VotersOnline*2 > v.Quorum.Voters
	v.Volumes = make([]volumeRow, 0, len(vols))
	for _, vi := range vols {
		row := newVolumeRow(vi)
		for _, r := range row.ReplicaStates {
			if i, ok := idx[r.Node]; ok {
				if r.Role == "P" {
					v.Nodes[i].Primaries = append(v.Nodes[i].Primaries, vi.Spec.Name)
				}
				v.Nodes[i].Replicas = append(v.Nodes[i].Replicas, vi.Spec.Name)
			}
		}
		v.Volumes = append(v.Volumes, row)
	}
}

func newVolumeRow(vi agent.VolumeInfo) volumeRow {
	row := volumeRow{VolumeInfo: vi, ReplicaStates: replicaStates(vi)}
	if vi.Export != nil {
		row.URI = exportURI(vi.Export)
	}
	return row
}

func volumeRows(vols []agent.VolumeInfo) []volumeRow {
	rows := make([]volumeRow, len(vols))
	for i, v := range vols {
		rows[i] = newVolumeRow(v)
	}
	return rows
}

// replicaStates lists a volume's replicas: the placed nodes, in-sync set
// and, when the primary was asked, its view of each replica.
func replicaStates(vi agent.VolumeInfo) []replicaState {
	var nodes []string
	add := func(n string) {
		if n != "" && !slices.Contains(nodes, n) {
			nodes = append(nodes, n)
		}
	}
	primary := ""
	if vi.State != nil {
		primary = vi.State.Primary
		add(primary)
	}
	for _, n := range vi.Placement {
		add(n)
	}
	if vi.State != nil {
		for _, n := range vi.State.InSync {
			add(n)
		}
	}
	out := make([]replicaState, 0, len(nodes))
	for _, n := range nodes {
		r := replicaState{Node: n, Role: "S", State: "outdated"}
		if n == primary {
			r.Role = "P"
		}
		if vi.State != nil && vi.State.Has(n) {
			r.State = "in-sync"
		}
		if vi.Mirror != nil {
			for _, ms := range vi.Mirror.Replicas {
				if ms.ID != n {
					continue
				}
				r.State, r.Error = ms.State, ms.LastError
				switch {
				case ms.State == "resyncing":
					r.Progress = ms.Percent()
				case ms.State == "outdated" && !ms.Connected && ms.LastError != "":
					r.State = "failed"
				}
			}
		}
		out = append(out, r)
	}
	return out
}

// storageFullPercent is the used share of a node's storage that the audit
// reports.
const storageFullPercent = 90

// audit lists what is wrong in a view: no quorum or DC, nodes offline,
// storage nearly full, mixed versions, volumes down, degraded or not
// placed, replicas out of sync.
func audit(v clusterView) []problem {
	ps := []problem{}
	add := func(kind, subject, format string, args ...any) {
		ps = append(ps, problem{Kind: kind, Subject: subject, Message: fmt.Sprintf(format, args...)})
	}
	switch {
	case !v.Quorum.Serving:
		add("no-quorum", v.AskedNode, "the agent on %s does not hold its lease (%s): it cannot reach a quorum of the cluster store, and its view may be outdated", v.AskedNode, orDash(v.Quorum.Reason))
	case v.Quorum.Stale:
		add("no-quorum", v.AskedNode, "the membership view of %s is stale: it cannot reach a quorum of the cluster store", v.AskedNode)
	}
	if v.Quorum.Voters > 0 && v.Quorum.VotersOnline*2 <= v.Quorum.Voters {
		add("no-quorum", "", "only %d of %d voting members are online: the cluster has no quorum", v.Quorum.VotersOnline, v.Quorum.Voters)
	}
	if v.Fencing != nil {
		for _, r := range v.Fencing.Records {
			switch r.State {
			case fence.StateFailed:
				add("fence-failed", r.Node, "fencing of node %s failed (attempt %d, retried): %s; what it ran stays down until it is fenced", r.Node, r.Attempts, r.LastError)
			case fence.StatePending, fence.StateFencing:
				add("fencing", r.Node, "node %s is being fenced (%s): %s", r.Node, r.State, r.Reason)
			}
		}
	}
	if v.DC == "" {
		add("no-dc", "", "no DC (designated coordinator) is elected: nothing fails over or re-replicates")
	}
	versions := map[string][]string{}
	for _, n := range v.Nodes {
		switch {
		case !n.Online:
			since := ""
			if !n.Since.IsZero() {
				since = fmt.Sprintf(" for %s", ago(v.Time, n.Since))
			}
			add("node-offline", n.Name, "node %s is offline%s (its agent is down or cut off): %d primaries and %d replicas were on it", n.Name, since, len(n.Primaries), len(n.Replicas))
		case n.Alive != nil:
			versions[n.Alive.Version] = append(versions[n.Alive.Version], n.Name)
			if c := n.Alive.Capacity; c != nil && c.TotalBytes > 0 && (c.TotalBytes-c.FreeBytes)*100 >= c.TotalBytes*storageFullPercent {
				add("storage-full", n.Name, "node %s: storage %d%% full (%s free of %s)", n.Name, (c.TotalBytes-c.FreeBytes)*100/c.TotalBytes, human(c.FreeBytes), human(c.TotalBytes))
			}
		}
	}
	if len(versions) > 1 {
		var vs []string
		for ver, names := range versions {
			vs = append(vs, fmt.Sprintf("%s on %s", ver, strings.Join(names, ",")))
		}
		sort.Strings(vs)
		add("version-skew", "", "nodes run different hacs versions: %s", strings.Join(vs, "; "))
	}
	for _, r := range v.Resources {
		switch r.Health {
		case "blocked":
			if !strings.HasPrefix(r.Why, "waiting for") {
				add("resource-blocked", r.Name, "resource %s cannot run: %s", r.Name, r.Why)
			}
		case "failed":
			add("resource-failed", r.Name, "resource %s failed: %s", r.Name, r.Why)
		}
	}
	if v.VolumesError != "" {
		add("volumes-unreadable", "", "the volumes could not be read: %s", v.VolumesError)
	}
	offline := map[string]bool{}
	for _, n := range v.Nodes {
		offline[n.Name] = !n.Online
	}
	for _, r := range v.Volumes {
		name := r.Spec.Name
		why := ""
		if r.Degraded != nil {
			why = ": " + r.Degraded.Reason
		}
		var replicas []problem
		if r.Health != "stopped" && r.Health != "pending" {
			if len(r.Placement) < r.Spec.Replicas {
				replicas = append(replicas, problem{"volume-underplaced", name, fmt.Sprintf("volume %s has %d of %d replicas placed", name, len(r.Placement), r.Spec.Replicas)})
			}
			for _, rs := range r.ReplicaStates {
				if rs.State == "in-sync" {
					if offline[rs.Node] {
						replicas = append(replicas, problem{"replica-unavailable", name, fmt.Sprintf("volume %s: replica on %s is unavailable: node %s is offline (still counted in sync until the primary next writes)", name, rs.Node, rs.Node)})
					}
					continue
				}
				detail := rs.State
				switch {
				case rs.State == "resyncing":
					detail = fmt.Sprintf("resyncing (%.0f%% done)", rs.Progress)
				case offline[rs.Node]:
					detail += fmt.Sprintf(" (node %s is offline)", rs.Node)
				case rs.Error != "":
					detail += ": " + rs.Error
				}
				replicas = append(replicas, problem{"replica-out-of-sync", name, fmt.Sprintf("volume %s: replica on %s is out of sync: %s", name, rs.Node, detail)})
			}
		}
		switch r.Health {
		case "down":
			add("volume-down", name, "volume %s is down: no primary serves it%s", name, why)
		case "pending":
			add("volume-pending", name, "volume %s is not placed yet%s", name, why)
		case "degraded":
			if why != "" || len(replicas) == 0 {
				add("volume-degraded", name, "volume %s is degraded%s", name, why)
			}
		}
		ps = append(ps, replicas...)
	}
	return ps
}

// probe asks every online node's agent for its own view: an agent that
// does not answer, does not serve or sees another DC is a problem.
func probe(ctx context.Context, c *apiClient, v clusterView) []problem {
	var mu sync.Mutex
	var ps []problem
	var wg sync.WaitGroup
	for _, n := range v.Nodes {
		if !n.Online || n.APIAddr == "" {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			one := c.one(n.APIAddr)
			var st cluster.Status
			var p *problem
			switch err := one.do(pctx, "GET", "/v1/status", nil, &st); {
			case err != nil:
				var ue *unreachableError
				if errors.As(err, &ue) {
					err = errors.New(ue.reason())
				}
				p = &problem{"agent-unreachable", n.Name, fmt.Sprintf("node %s is online but its API at %s does not answer: %v", n.Name, n.APIAddr, err)}
			case !st.Serving.Serving:
				p = &problem{"agent-not-serving", n.Name, fmt.Sprintf("node %s does not hold its lease (%s)", n.Name, orDash(st.Serving.Reason))}
			case st.Leadership.DC != v.DC:
				p = &problem{"dc-disagreement", n.Name, fmt.Sprintf("node %s sees %s as DC, %s sees %s", n.Name, orDash(st.Leadership.DC), v.AskedNode, orDash(v.DC))}
			case st.Cluster != v.Cluster:
				p = &problem{"wrong-cluster", n.Name, fmt.Sprintf("node %s answers for cluster %s, not %s", n.Name, st.Cluster, v.Cluster)}
			}
			if p != nil {
				mu.Lock()
				ps = append(ps, *p)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	sort.Slice(ps, func(i, j int) bool { return ps[i].Subject < ps[j].Subject })
	return ps
}

// ago is how long before now t was, rounded for people.
func ago(now, t time.Time) string {
	d := now.Sub(t)
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < time.Hour:
		return d.Round(time.Second).String()
	case d < 48*time.Hour:
		return d.Round(time.Minute).String()
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func rolesString(roles []cluster.Role) string {
	s := make([]string, len(roles))
	for i, r := range roles {
		s[i] = string(r)
	}
	return strings.Join(s, ",")
}

// nodeState is a node's HA state for tables: online, standby, or offline
// with for how long.
func nodeState(now time.Time, n nodeView) string {
	s := string(n.State)
	if !n.Online && !n.Since.IsZero() {
		s += " " + ago(now, n.Since)
	}
	return s
}

func storageString(n nodeView) string {
	if n.Alive == nil || n.Alive.Capacity == nil {
		return "-"
	}
	return human(n.Alive.Capacity.FreeBytes) + " / " + human(n.Alive.Capacity.TotalBytes)
}

// writeNodeTable is the node table of status and node list.
func writeNodeTable(w io.Writer, v clusterView) {
	fmt.Fprintln(w, "NODE\tSTATE\tROLES\tVOTER\tDC\tFREE / TOTAL\tPRIMARIES\tREPLICAS\tAPI")
	for _, n := range v.Nodes {
		dc := ""
		if n.DC {
			dc = "*"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", n.Name, nodeState(v.Time, n), rolesString(n.Roles), yesNo(n.Voter), dc,
			storageString(n), len(n.Primaries), len(n.Replicas), n.APIAddr)
	}
}

// writeVolumeTable is the volume table of status.
func writeVolumeTable(w io.Writer, v clusterView) {
	fmt.Fprintln(w, "VOLUME\tSIZE\tHEALTH\tPRIMARY\tEPOCH\tREPLICAS\tEXPORT")
	for _, r := range v.Volumes {
		primary, epoch := "-", "-"
		if r.State != nil {
			primary, epoch = orDash(r.State.Primary), fmt.Sprint(r.State.Epoch)
		}
		var reps []string
		for _, rs := range r.ReplicaStates {
			reps = append(reps, rs.String())
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Spec.Name, human(r.Spec.Size), r.Health, primary, epoch,
			orDash(strings.Join(reps, " ")), orDash(r.URI))
	}
}

// renderStatus is the one screen of `hacs cluster status` and `monitor`.
func renderStatus(w io.Writer, v clusterView) {
	online, standby, offline := 0, 0, 0
	for _, n := range v.Nodes {
		switch n.State {
		case cluster.StateOnline:
			online++
		case cluster.StateStandby:
			standby++
		default:
			offline++
		}
	}
	health := map[string]int{}
	for _, r := range v.Volumes {
		health[r.Health]++
	}
	var hs []string
	for _, h := range []string{"ok", "degraded", "down", "pending", "stopped"} {
		if health[h] > 0 {
			hs = append(hs, fmt.Sprintf("%d %s", health[h], h))
		}
	}
	quorum := fmt.Sprintf("ok (%d/%d voters online)", v.Quorum.VotersOnline, v.Quorum.Voters)
	if !v.Quorum.OK {
		quorum = fmt.Sprintf("LOST (%d/%d voters online, %s serving: %v)", v.Quorum.VotersOnline, v.Quorum.Voters, v.AskedNode, v.Quorum.Serving)
	}
	fmt.Fprintf(w, "Cluster %s, as seen by %s (hacs %s) at %s\n", v.Cluster, v.AskedNode, v.Version, v.Time.In(displayLoc).Format("2006-01-02 15:04:05"))
	fmt.Fprintf(w, "DC: %s   Quorum: %s\n", orDash(v.DC), quorum)
	if r := v.CARotation; r != nil {
		fmt.Fprintf(w, "CA rotation %s: phase %s: %s\n", r.Rotation.ID, r.Rotation.Phase, r.Next)
	}
	fmt.Fprintf(w, "Nodes: %d (%d online, %d standby, %d offline)   Volumes: %d", len(v.Nodes), online, standby, offline, len(v.Volumes))
	if len(hs) > 0 {
		fmt.Fprintf(w, " (%s)", strings.Join(hs, ", "))
	}
	fmt.Fprint(w, "\n\n")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	writeNodeTable(tw, v)
	tw.Flush()
	if len(v.Volumes) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		writeVolumeTable(tw, v)
		tw.Flush()
	}
	if len(v.Resources) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		printResourceRows(tw, v.Resources)
		tw.Flush()
	}
	if recs := recentFencing(v); len(recs) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		writeFenceRecords(tw, recs)
		tw.Flush()
	}
	fmt.Fprintln(w)
	writeProblems(w, v.Problems)
}

// recentFencing: the fencing records worth a line in the status: in
// progress, failed, or confirmed within the last hour.
func recentFencing(v clusterView) []fence.Record {
	if v.Fencing == nil {
		return nil
	}
	var out []fence.Record
	for _, r := range v.Fencing.Records {
		if r.Active() || (r.State == fence.StateFenced && v.Time.Sub(r.Confirmed) < time.Hour) {
			out = append(out, r)
		}
	}
	return out
}

func writeProblems(w io.Writer, ps []problem) {
	if len(ps) == 0 {
		fmt.Fprintln(w, "No problems.")
		return
	}
	fmt.Fprintf(w, "Problems (%d):\n", len(ps))
	for _, p := range ps {
		fmt.Fprintf(w, "  - %s\n", p.Message)
	}
}

// unhealthy: the volumes whose replicas' details are worth asking for.
func unhealthy(vi agent.VolumeInfo) bool {
	return vi.Export != nil && vi.Health != "ok"
}

func newClusterCmd() *cobra.Command {
	f := &apiFlags{}
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "The whole cluster at a glance: status, live monitor, consistency check, join token",
		Long: `Look at the whole cluster through any agent's API.

--cluster (or HACS_CLUSTER) takes one agent API address or a comma-separated
list, tried in turn; --data-dir DIR talks to the local agent of DIR over its
API socket.`,
	}
	f.register(cmd.PersistentFlags())
	cmd.AddCommand(clusterStatusCmd(f), clusterMonitorCmd(f), clusterCheckCmd(f), clusterTokenCmd(f), clusterAuthCmd(f), clusterRotateCmd(f), clusterRotateCACmd(f))
	return cmd
}

func clusterStatusCmd(f *apiFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "One screen: nodes, DC, quorum, volumes and their replicas, problems",
		Long: `Show the cluster on one screen: the nodes (HA state, roles, voter, DC, free and
total storage, primaries and replicas), the DC and the quorum, the volumes
(size, health, primary, each replica as NODE:P|S/STATE with resync progress,
export URI) and the problems found (see hacs cluster check).`,
		Example: `  hacs cluster status
  hacs cluster status --cluster 10.0.0.1:7700,10.0.0.2:7700
  hacs cluster status --json | jq '.volumes[] | {name: .spec.name, health}'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			v, err := gather(ctx, f.client(), unhealthy)
			if err != nil {
				return err
			}
			if f.asJSON {
				return printJSON(cmd.OutOrStdout(), v)
			}
			renderStatus(cmd.OutOrStdout(), v)
			return nil
		},
	}
}

func clusterCheckCmd(f *apiFlags) *cobra.Command {
	var noProbe bool
	cmd := &cobra.Command{
		Use:   "check [--no-probe]",
		Short: "Audit the cluster: exit 0 when healthy, 1 with the list of problems",
		Long: `Audit the cluster's consistency and health. It reports: no quorum, no DC,
nodes offline, storage nearly full, nodes running different versions,
volumes down, degraded or not placed, replicas out of sync (with resync
progress). Unless --no-probe, it also asks every online node's agent for
its own view: an agent that does not answer, does not hold its lease, or
sees another DC is a problem.

Exit code 0: healthy. 1: problems (listed on stdout), or the cluster could
not be reached. 2: usage error. Suitable for monitoring systems.`,
		Example: `  hacs cluster check && echo healthy
  hacs cluster check --json
  hacs cluster check --no-probe --cluster 10.0.0.1:7700`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			c := f.client()
			v, err := gather(ctx, c, unhealthy)
			if err != nil {
				return fmt.Errorf("cluster check: %w", err)
			}
			if !noProbe {
				v.Problems = append(v.Problems, probe(ctx, c, v)...)
			}
			out := cmd.OutOrStdout()
			if f.asJSON {
				err = printJSON(out, map[string]any{"healthy": len(v.Problems) == 0, "cluster": v.Cluster, "asked_node": v.AskedNode,
					"dc": v.DC, "quorum": v.Quorum, "nodes": len(v.Nodes), "volumes": len(v.Volumes), "problems": v.Problems})
			} else if len(v.Problems) == 0 {
				fmt.Fprintf(out, "OK: cluster %s is healthy: %d nodes, DC %s, quorum %d/%d voters, %d volumes\n",
					v.Cluster, len(v.Nodes), v.DC, v.Quorum.VotersOnline, v.Quorum.Voters, len(v.Volumes))
			} else {
				writeProblems(out, v.Problems)
			}
			if err != nil {
				return err
			}
			if len(v.Problems) > 0 {
				return fmt.Errorf("cluster check: %d problem(s) found", len(v.Problems))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&noProbe, "no-probe", false, "do not ask every online node's agent for its own view")
	return cmd
}

func clusterMonitorCmd(f *apiFlags) *cobra.Command {
	var once bool
	var interval time.Duration
	cmd := &cobra.Command{
		Use:   "monitor [-1] [--interval D]",
		Short: "The status screen, refreshed live (like crm_mon); -1 prints it once",
		Long: `Show hacs cluster status and refresh it every --interval until Ctrl-C, like
crm_mon or vhacs cluster -m. On a terminal the screen is redrawn in place;
otherwise (a pipe, a log file) the status is printed again, after a dated
separator, each time it changes. With --json, one JSON document per line is
printed each time the status changes. -1 prints the status once and exits (1
when the cluster cannot be reached).`,
		Example: `  hacs cluster monitor
  hacs cluster monitor -1
  hacs cluster monitor --interval 5s > cluster.log
  hacs cluster monitor --json | jq -c '.problems'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if interval < 100*time.Millisecond {
				return usagef("--interval %v: at least 100ms", interval)
			}
			c := f.client()
			out := cmd.OutOrStdout()
			look := func(ctx context.Context) (clusterView, error) {
				ctx, cancel := context.WithTimeout(ctx, max(5*time.Second, interval))
				defer cancel()
				return gather(ctx, c, unhealthy)
			}
			if once {
				v, err := look(cmd.Context())
				if err != nil {
					return err
				}
				if f.asJSON {
					return printJSON(out, v)
				}
				renderStatus(out, v)
				return nil
			}
			if err := c.err; err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return monitor(ctx, out, isTerminal(out), f.asJSON, interval, look)
		},
	}
	cmd.Flags().BoolVarP(&once, "once", "1", false, "print the status once and exit")
	cmd.Flags().DurationVarP(&interval, "interval", "i", 2*time.Second, "refresh interval")
	return cmd
}

// monitor redraws the status every interval until ctx ends.
func monitor(ctx context.Context, out io.Writer, tty, asJSON bool, interval time.Duration, look func(context.Context) (clusterView, error)) error {
	var last string
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		v, err := look(ctx)
		if ctx.Err() != nil {
			return nil
		}
		var body bytes.Buffer
		switch {
		case err != nil:
			fmt.Fprintf(&body, "cannot read the cluster: %v\n(retrying every %v)\n", err, interval)
		case asJSON:
			b, _ := json.Marshal(v)
			body.Write(b)
			body.WriteByte('\n')
		default:
			renderStatus(&body, v)
		}
		key := body.String()
		if err == nil {
			key = monitorKey(v)
		}
		switch {
		case tty && !asJSON:
			fmt.Fprintf(out, "\x1b[H\x1b[2J%s\nRefreshing every %v; Ctrl-C to quit.\n", body.String(), interval)
		case key != last:
			if !asJSON {
				fmt.Fprintf(out, "=== %s ===\n", time.Now().Format("2006-01-02 15:04:05"))
			}
			out.Write(body.Bytes())
		}
		last = key
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// monitorKey is what, changing, makes monitor print again when it is not
// on a terminal: states, placements, problems; not the time, free space or
// durations, which always change.
func monitorKey(v clusterView) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s|%s|%v|%d/%d\n", v.Cluster, v.DC, v.Quorum.OK, v.Quorum.VotersOnline, v.Quorum.Voters)
	for _, n := range v.Nodes {
		fmt.Fprintf(&b, "%s %s %v %v %v %v %v\n", n.Name, n.State, n.Roles, n.Voter, n.DC, n.Primaries, n.Replicas)
	}
	for _, r := range v.Volumes {
		fmt.Fprintf(&b, "%s %d %s %v %s", r.Spec.Name, r.Spec.Size, r.Health, r.State, r.URI)
		for _, rs := range r.ReplicaStates {
			fmt.Fprintf(&b, " %s:%s/%s/%d", rs.Node, rs.Role, rs.State, int(rs.Progress/10))
		}
		b.WriteByte('\n')
	}
	for _, p := range v.Problems {
		fmt.Fprintf(&b, "%s %s\n", p.Kind, p.Subject)
	}
	return b.String()
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func clusterTokenCmd(f *apiFlags) *cobra.Command {
	cmd := clusterTokenPrintCmd(f)
	cmd.AddCommand(clusterTokenCreateCmd(f), clusterTokenListCmd(f), clusterTokenRevokeCmd(f))
	return cmd
}

// clusterTokenListCmd lists the join tokens, never their secrets.
func clusterTokenListCmd(f *apiFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the join tokens: id, state, created, expires, joins left, who made them (never the secret)",
		Long: `List the cluster's join tokens, oldest first: valid ones, used up, expired
and revoked. The id names a token (hacs cluster token revoke ID); the token
itself, its secret, is shown only once, when it is made. Needs an admin
token (or the local socket with --data-dir).`,
		Example: "  hacs cluster token list",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var toks []cluster.JoinTokenInfo
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			if err := f.client().do(ctx, "GET", "/v1/join-tokens", nil, &toks); err != nil {
				return err
			}
			return f.print(cmd, toks, func(w io.Writer) {
				fmt.Fprintln(w, "ID\tSTATE\tCREATED\tEXPIRES\tUSES LEFT\tCREATED BY\tUSED BY")
				for _, t := range toks {
					state := t.State
					if t.RevokedAt != nil {
						state = "revoked by " + t.RevokedBy
					}
					used := strings.Join(t.UsedBy, ",")
					if used == "" {
						used = "-"
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", t.ID, state, t.CreatedAt.Format(time.RFC3339), t.Expires.Format(time.RFC3339), t.UsesLeft, t.CreatedBy, used)
				}
			})
		},
	}
}

// clusterTokenRevokeCmd revokes a join token before its expiry.
func clusterTokenRevokeCmd(f *apiFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a join token now: it admits no node any more",
		Long: `Revoke a join token before it expires or is used up: a node joining with
it from now on is refused ("join token ID was revoked ..."); nodes that
already joined with it stay. ID is the id that hacs cluster token list
shows, or its first characters (at least 4, naming one token), or the token
itself. The revocation is recorded as an event (join-token-revoked) with
who made it. Needs an admin token (or the local socket with --data-dir).`,
		Example: `  hacs cluster token list
  hacs cluster token revoke 3f9a0c`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if strings.HasPrefix(id, "hacs1.") {
				tok, err := cluster.ParseToken(id)
				if err != nil {
					return usagef("%v", err)
				}
				id = tok.JoinTokenID()
			}
			var out struct {
				Token   cluster.JoinTokenInfo `json:"token"`
				Already bool                  `json:"already_revoked"`
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			if err := f.client().do(ctx, "DELETE", "/v1/join-tokens/"+url.PathEscape(id), nil, &out); err != nil {
				return err
			}
			if f.asJSON {
				return printJSON(cmd.OutOrStdout(), out)
			}
			if out.Already {
				fmt.Fprintf(cmd.OutOrStdout(), "join token %s was already revoked (at %s by %s)\n", out.Token.ID, out.Token.RevokedAt.Format(time.RFC3339), out.Token.RevokedBy)
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "join token %s revoked (it had %d join(s) left, valid until %s)\n", out.Token.ID, out.Token.UsesLeft, out.Token.Expires.Format(time.RFC3339))
			return nil
		},
	}
}

// clusterTokenCreateCmd makes a short-lived, single-use join token.
func clusterTokenCreateCmd(f *apiFlags) *cobra.Command {
	var ttl time.Duration
	var uses int
	cmd := &cobra.Command{
		Use:   "create [--ttl 1h] [--uses 1]",
		Short: "Create a short-lived join token that admits one node (or --uses N)",
		Long: `Create a join token that is valid for --ttl (default 1h) and admits --uses
nodes (default 1): joining a second node with it is refused ("already used"),
and so is joining after it expired. Needs an admin token (or the local socket
with --data-dir).`,
		Example: `  hacs agent --data-dir /var/lib/hacs --join 10.0.0.1:7700 --token "$(hacs cluster token create --ttl 15m)"`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var out struct {
				Token   string    `json:"token"`
				ID      string    `json:"id"`
				Expires time.Time `json:"expires"`
				Uses    int       `json:"uses"`
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			if err := f.client().do(ctx, "POST", "/v1/join-tokens", map[string]any{"ttl": ttl.String(), "uses": uses}, &out); err != nil {
				return err
			}
			if f.asJSON {
				return printJSON(cmd.OutOrStdout(), out)
			}
			fmt.Fprintln(cmd.OutOrStdout(), out.Token)
			return nil
		},
	}
	cmd.Flags().DurationVar(&ttl, "ttl", cluster.DefaultJoinTokenTTL, "how long the token is valid (up to 168h)")
	cmd.Flags().IntVar(&uses, "uses", 1, "how many nodes it admits")
	return cmd
}

func clusterTokenPrintCmd(f *apiFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "token --data-dir DIR",
		Short: "Print a new join token for one node (hacs agent --join ... --token ...)",
		Long: `Make and print a join token that admits one node within the next hour
(as "hacs cluster token create" does with its defaults). Without an API
token, agents make them only for their local API socket (DATA_DIR/api.sock,
readable by the agent's user): run this on a member with that member's
--data-dir, whose agent must be running.`,
		Example: `  hacs cluster token --data-dir /var/lib/hacs
  hacs agent --data-dir /var/lib/hacs --join 10.0.0.1:7700 --token "$(ssh n1 hacs cluster token --data-dir /var/lib/hacs)"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var out struct {
				Cluster string `json:"cluster"`
				Token   string `json:"token"`
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			err := f.client().do(ctx, "GET", "/v1/token", nil, &out)
			var ae *apiStatusError
			switch {
			case err == nil:
			case errors.As(err, &ae) && ae.Code == http.StatusForbidden:
				return usagef("%v", err)
			case f.dataDir != "" && !errors.As(err, &ae):
				return fmt.Errorf("%w: join tokens are made by a running member; start its agent, or run this on another member", err)
			default:
				return err
			}
			if f.asJSON {
				return printJSON(cmd.OutOrStdout(), out)
			}
			fmt.Fprintln(cmd.OutOrStdout(), out.Token)
			return nil
		},
	}
}
