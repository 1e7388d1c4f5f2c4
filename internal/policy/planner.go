package policy

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// Defaults.
const (
	DefaultReReplicateAfter = 5 * time.Minute
	DefaultStickiness       = 100
	DefaultFailbackSettle   = 10 * time.Second
	// preferStep is the score gap between two consecutive preferred nodes:
	// larger than the default stickiness, so that a volume fails back to a
	// more preferred node unless its stickiness says otherwise.
	preferStep = 1000
)

// Plan computes the actions for a snapshot. It is pure and deterministic:
// the same state always gives the same actions, in the same order.
func Plan(st State) []Action {
	p := planner{st: st, nodes: map[string]Node{}, primaries: map[string]int{}, replicas: map[string]int{}}
	for _, n := range st.Nodes {
		p.nodes[n.Name] = n
	}
	for _, v := range st.Volumes {
		if v.Primary != "" {
			p.primaries[v.Primary]++
		}
		for _, n := range v.Placed {
			p.replicas[n]++
		}
	}
	vols := slices.Clone(st.Volumes)
	sort.Slice(vols, func(i, j int) bool { return vols[i].Name < vols[j].Name })
	var out []Action
	for _, v := range vols {
		acts := p.volume(v)
		p.account(acts)
		out = append(out, acts...)
	}
	return out
}

type planner struct {
	st    State
	nodes map[string]Node
	// primaries and replicas count what each node serves and holds, with
	// the actions planned so far: among otherwise equal nodes the least
	// loaded is chosen (like Pacemaker's default placement strategy), so
	// that many volumes created at once spread over the nodes.
	primaries map[string]int
	replicas  map[string]int
}

// account updates the load counts with planned actions.
func (p *planner) account(acts []Action) {
	for _, a := range acts {
		switch a.Kind {
		case ActPlace:
			for _, n := range a.Replicas {
				p.replicas[n]++
			}
			if a.Node != "" {
				p.primaries[a.Node]++
			}
		case ActPromote:
			p.primaries[a.Node]++
			if a.From != "" {
				p.primaries[a.From]--
			}
		case ActStop:
			p.primaries[a.From]--
		case ActAddReplica:
			p.replicas[a.Node]++
		case ActRemoveReplica:
			p.replicas[a.Node]--
		}
	}
}

func (p *planner) reReplicateAfter() time.Duration {
	if d := time.Duration(p.st.Settings.ReReplicateAfter); d > 0 {
		return d
	}
	return DefaultReReplicateAfter
}

func (p *planner) failbackSettle() time.Duration {
	switch d := time.Duration(p.st.Settings.FailbackSettle); {
	case d < 0:
		return 0
	case d > 0:
		return d
	}
	return DefaultFailbackSettle
}

// settled reports whether a node has been online without a break for the
// failback settle time (a node online since an unknown time has).
func (p *planner) settled(name string) bool {
	n := p.nodes[name]
	return n.OnlineSince.IsZero() || p.st.Now.Sub(n.OnlineSince) >= p.failbackSettle()
}

// settledFirst orders candidates with the settled nodes first, keeping
// the order among each: a failover, which is never delayed, still prefers
// a node that has been online for a while over one that just came back
// (and may be flapping).
func (p *planner) settledFirst(cands []string) []string {
	var settled, fresh []string
	for _, c := range cands {
		if p.settled(c) {
			settled = append(settled, c)
		} else {
			fresh = append(fresh, c)
		}
	}
	return append(settled, fresh...)
}

func (p *planner) stickiness(c Constraints) int {
	if c.Stickiness != nil {
		return *c.Stickiness
	}
	if p.st.Settings.Stickiness != nil {
		return *p.st.Settings.Stickiness
	}
	return DefaultStickiness
}

// banned reports why a resource may not run on a node ("" if it may).
func (p *planner) banned(c Constraints, failures map[string]Failure, node string) string {
	if s, ok := c.Scores[node]; ok && s <= -Infinity {
		return "banned by a location constraint"
	}
	if f, ok := failures[node]; ok && c.MigrationThreshold > 0 && f.Count >= c.MigrationThreshold {
		if c.FailureTimeout == 0 || p.st.Now.Sub(f.Last) < time.Duration(c.FailureTimeout) {
			return fmt.Sprintf("failed %d times there (migration-threshold %d)", f.Count, c.MigrationThreshold)
		}
	}
	return ""
}

// score is a node's location score for a resource (preferences plus
// explicit scores), without stickiness.
func score(c Constraints, node string) int {
	s := 0
	if i := slices.Index(c.Prefer, node); i >= 0 {
		s += (len(c.Prefer) - i) * preferStep
	}
	s += c.Scores[node]
	return s
}

// canHostReplica tells whether a new replica may go to the node.
func (p *planner) canHostReplica(v Volume, n Node) string {
	switch {
	case !n.Online:
		return "offline"
	case n.Standby:
		return "in standby"
	case !n.HasRole(RoleStorage):
		return "not a storage node"
	case n.FreeBytes < v.Size:
		return fmt.Sprintf("%d bytes free, %d needed", n.FreeBytes, v.Size)
	}
	if why := p.banned(v.Constraints, v.Failures, n.Name); why != "" {
		return why
	}
	return ""
}

// pickReplicaNodes chooses up to want new nodes for v's replicas, besides
// the ones it keeps, honouring spread. It returns the choice and, when it
// falls short, why.
func (p *planner) pickReplicaNodes(v Volume, keep []string, want int) ([]string, string) {
	type cand struct {
		name  string
		score int
		free  int64
	}
	var cands []cand
	var refused []string
	for _, n := range p.st.Nodes {
		if slices.Contains(keep, n.Name) || slices.Contains(v.Placed, n.Name) {
			continue
		}
		if why := p.canHostReplica(v, n); why != "" {
			refused = append(refused, n.Name+": "+why)
			continue
		}
		cands = append(cands, cand{n.Name, score(v.Constraints, n.Name), n.FreeBytes})
	}
	sort.Slice(cands, func(i, j int) bool {
		a, b := cands[i], cands[j]
		if a.score != b.score {
			return a.score > b.score
		}
		if p.replicas[a.name] != p.replicas[b.name] {
			return p.replicas[a.name] < p.replicas[b.name]
		}
		if a.free != b.free {
			return a.free > b.free
		}
		return a.name < b.name
	})
	used := map[string]bool{}
	if v.Spread != "" {
		for _, k := range keep {
			used[p.nodes[k].Labels[v.Spread]] = true
		}
	}
	var out []string
	for _, c := range cands {
		if len(out) == want {
			break
		}
		if v.Spread != "" {
			val := p.nodes[c.name].Labels[v.Spread]
			if used[val] {
				refused = append(refused, fmt.Sprintf("%s: %s=%q already holds a replica", c.name, v.Spread, val))
				continue
			}
			used[val] = true
		}
		out = append(out, c.name)
	}
	if len(out) < want {
		why := fmt.Sprintf("needs %d more storage node(s) with %d bytes free", want, v.Size)
		if v.Spread != "" {
			why += fmt.Sprintf(" in distinct %q", v.Spread)
		}
		why += ", found " + fmt.Sprint(len(out))
		if len(refused) > 0 {
			sort.Strings(refused)
			why += " (" + strings.Join(refused, "; ") + ")"
		}
		return out, why
	}
	return out, ""
}

// primaryCandidates lists the nodes that may serve v, best first, with the
// current primary's stickiness applied.
func (p *planner) primaryCandidates(v Volume) []string {
	type cand struct {
		name  string
		score int
	}
	var cands []cand
	for _, name := range v.InSync {
		n, ok := p.nodes[name]
		if !ok || !n.Online || n.Standby || p.banned(v.Constraints, v.Failures, name) != "" {
			continue
		}
		s := score(v.Constraints, name)
		if name == v.Primary {
			s += p.stickiness(v.Constraints)
		}
		cands = append(cands, cand{name, s})
	}
	sort.Slice(cands, func(i, j int) bool {
		if cands[i].score != cands[j].score {
			return cands[i].score > cands[j].score
		}
		if (cands[i].name == v.Primary) != (cands[j].name == v.Primary) {
			return cands[i].name == v.Primary
		}
		if p.primaries[cands[i].name] != p.primaries[cands[j].name] {
			return p.primaries[cands[i].name] < p.primaries[cands[j].name]
		}
		return cands[i].name < cands[j].name
	})
	out := make([]string, len(cands))
	for i, c := range cands {
		out[i] = c.name
	}
	return out
}

// whyNotServing explains why the current primary must move ("" if it may
// stay).
func (p *planner) whyNotServing(v Volume) string {
	n, ok := p.nodes[v.Primary]
	switch {
	case !ok:
		return fmt.Sprintf("primary node %s left the cluster", v.Primary)
	case !n.Online:
		return fmt.Sprintf("primary node %s is offline", v.Primary)
	case n.Standby:
		return fmt.Sprintf("primary node %s is in standby", v.Primary)
	case !slices.Contains(v.InSync, v.Primary):
		return fmt.Sprintf("primary node %s is not in sync", v.Primary)
	}
	if why := p.banned(v.Constraints, v.Failures, v.Primary); why != "" {
		return fmt.Sprintf("volume cannot stay on %s: %s", v.Primary, why)
	}
	return ""
}

func (p *planner) volume(v Volume) []Action {
	if len(v.Placed) == 0 {
		return p.placeNew(v)
	}
	var out []Action
	out = append(out, p.primary(v)...)
	out = append(out, p.replicaCount(v)...)
	return out
}

func (p *planner) placeNew(v Volume) []Action {
	if v.Replicas < 1 {
		return []Action{{Kind: ActDegraded, Volume: v.Name, Reason: "replica count must be at least 1"}}
	}
	nodes, why := p.pickReplicaNodes(v, nil, v.Replicas)
	if why != "" {
		return []Action{{Kind: ActDegraded, Volume: v.Name, Reason: "cannot place: " + why}}
	}
	a := Action{Kind: ActPlace, Volume: v.Name, Replicas: nodes, Reason: fmt.Sprintf("new volume: %d replica(s)", v.Replicas)}
	if !v.Stopped {
		// A new volume's replicas are all in sync (empty).
		v.InSync = nodes
		if c := p.primaryCandidates(v); len(c) > 0 {
			a.Node = c[0]
		}
	}
	return []Action{a}
}

func (p *planner) primary(v Volume) []Action {
	if v.Stopped {
		if v.Primary != "" {
			return []Action{{Kind: ActStop, Volume: v.Name, From: v.Primary, Reason: "volume is in standby"}}
		}
		return nil
	}
	cands := p.primaryCandidates(v)
	if v.Primary != "" {
		if why := p.whyNotServing(v); why == "" {
			// Healthy: stays unless a better node beats its stickiness,
			// and only for a node that has settled (online without a
			// break for the failback settle time): a node whose lease
			// flaps must not draw the volume back and forth.
			for _, c := range cands {
				if c == v.Primary {
					break
				}
				if !p.settled(c) {
					continue
				}
				return []Action{{Kind: ActPromote, Volume: v.Name, Node: c, From: v.Primary,
					Reason: fmt.Sprintf("%s is preferred (score %d) over %s (score %d with stickiness %d)",
						c, score(v.Constraints, c), v.Primary, score(v.Constraints, v.Primary), p.stickiness(v.Constraints))}}
			}
			return nil
		} else {
			if len(cands) == 0 {
				out := []Action{{Kind: ActDegraded, Volume: v.Name, Reason: why + "; no other in-sync replica can serve (in sync: " + listOr(v.InSync) + ")"}}
				if n, ok := p.nodes[v.Primary]; ok && n.Online {
					out = append(out, Action{Kind: ActStop, Volume: v.Name, From: v.Primary, Reason: why})
				}
				return out
			}
			cands = p.settledFirst(cands)
			return []Action{{Kind: ActPromote, Volume: v.Name, Node: cands[0], From: v.Primary, Reason: why + "; failing over to in-sync " + cands[0]}}
		}
	}
	if len(cands) == 0 {
		return []Action{{Kind: ActDegraded, Volume: v.Name, Reason: "no in-sync replica can serve (in sync: " + listOr(v.InSync) + ")"}}
	}
	cands = p.settledFirst(cands)
	return []Action{{Kind: ActPromote, Volume: v.Name, Node: cands[0], Reason: "volume has no primary"}}
}

func listOr(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// replicaCount restores the replica count after a long outage and removes
// the surplus when the old node returns.
func (p *planner) replicaCount(v Volume) []Action {
	var live, lost, lostWhy []string
	for _, name := range v.Placed {
		n, ok := p.nodes[name]
		switch {
		case !ok:
			lost = append(lost, name)
			lostWhy = append(lostWhy, fmt.Sprintf("replica on %s lost: the node left the cluster", name))
		case !n.Online && !n.OfflineSince.IsZero() && p.st.Now.Sub(n.OfflineSince) >= p.reReplicateAfter():
			lost = append(lost, name)
			lostWhy = append(lostWhy, fmt.Sprintf("replica on %s lost: the node has been offline for more than %v", name, p.reReplicateAfter()))
		default:
			live = append(live, name)
		}
	}
	var out []Action
	if missing := v.Replicas - len(live); missing > 0 && len(lost) > 0 {
		nodes, why := p.pickReplicaNodes(v, live, missing)
		for i, n := range nodes {
			out = append(out, Action{Kind: ActAddReplica, Volume: v.Name, Node: n, Reason: lostWhy[min(i, len(lostWhy)-1)]})
		}
		if why != "" {
			out = append(out, Action{Kind: ActDegraded, Volume: v.Name, Reason: "cannot restore the replica count: " + why})
		}
		return out
	}
	if surplus := len(v.Placed) - v.Replicas; surplus > 0 {
		// Remove the least useful first: lost, then out of sync, then
		// lowest score; never the primary, and never below the replica
		// count of online in-sync replicas.
		cands := slices.Clone(v.Placed)
		rank := func(name string) int {
			r := 0
			if slices.Contains(lost, name) {
				r -= 2 * Infinity
			}
			if !slices.Contains(v.InSync, name) {
				r -= Infinity
			}
			return r + score(v.Constraints, name)
		}
		sort.SliceStable(cands, func(i, j int) bool {
			ri, rj := rank(cands[i]), rank(cands[j])
			if ri != rj {
				return ri < rj
			}
			return cands[i] > cands[j]
		})
		remaining := slices.Clone(v.Placed)
		for _, c := range cands {
			if surplus == 0 {
				break
			}
			if c == v.Primary {
				continue
			}
			after := slices.DeleteFunc(slices.Clone(remaining), func(s string) bool { return s == c })
			if p.onlineInSync(v, after) < min(v.Replicas, p.onlineInSync(v, remaining)) {
				continue
			}
			remaining = after
			surplus--
			why := "surplus replica"
			switch {
			case slices.Contains(lost, c):
				why = "surplus replica on a lost node"
			case !slices.Contains(v.InSync, c):
				why = "surplus replica, out of sync"
			}
			out = append(out, Action{Kind: ActRemoveReplica, Volume: v.Name, Node: c, Reason: fmt.Sprintf("%s (%d placed, %d wanted)", why, len(v.Placed), v.Replicas)})
		}
	}
	return out
}

func (p *planner) onlineInSync(v Volume, placed []string) int {
	n := 0
	for _, name := range placed {
		if slices.Contains(v.InSync, name) && p.nodes[name].Online {
			n++
		}
	}
	return n
}
