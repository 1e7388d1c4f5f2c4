package policy

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// PlanResources computes the actions for the non-volume resources of a
// snapshot. Like Plan it is pure and deterministic.
//
// The unit of placement is a primitive outside any group, or a group (its
// members follow it). A unit moves in two steps, so that it never runs on
// two nodes at once: it is unassigned from the old node, and assigned to
// the new one only once no node reports it active. A unit active on a node
// that went offline is recovered elsewhere only once that node is
// confirmed fenced (unless it requires quorum only).
func PlanResources(st ResState) []ResAction {
	p := &resPlanner{st: st, nodes: map[string]Node{}, res: map[string]*Resource{}, vols: map[string]Volume{},
		desired: map[string]string{}, running: map[string]bool{}, fenceAsked: map[string]int{}}
	for _, n := range st.Nodes {
		p.nodes[n.Name] = n
	}
	for _, v := range st.Volumes {
		p.vols[v.Name] = v
	}
	for i := range st.Resources {
		r := &st.Resources[i]
		p.res[r.Name] = r
	}
	order, cyclic := p.unitOrder()
	for _, name := range cyclic {
		p.out = append(p.out, ResAction{Kind: ResBlocked, Resource: name, Reason: "its colocation or order constraints form a cycle"})
	}
	for _, name := range order {
		p.unit(p.res[name])
	}
	return p.out
}

type resPlanner struct {
	st    ResState
	nodes map[string]Node
	res   map[string]*Resource
	vols  map[string]Volume
	// desired is where each planned unit is to run ("" nowhere).
	desired map[string]string
	// running tells whether a planned unit runs fully where it is assigned.
	running    map[string]bool
	fenceAsked map[string]int
	out        []ResAction
}

// unitOf maps a resource name to its placement unit (a member to its
// group).
func (p *resPlanner) unitOf(name string) string {
	if r := p.res[name]; r != nil && r.Group != "" {
		return r.Group
	}
	return name
}

// deps lists the units a unit must be planned after: the targets of its
// colocations and the firsts of its orderings.
func (p *resPlanner) deps(unit string) []string {
	var out []string
	for _, c := range p.st.Constraints {
		if p.unitOf(c.Resource) != unit {
			continue
		}
		var d string
		switch c.Kind {
		case ConsColocation:
			if !strings.HasPrefix(c.With, VolumeRef) {
				d = p.unitOf(c.With)
			}
		case ConsOrder:
			d = p.unitOf(c.First)
		}
		if d != "" && d != unit && p.res[d] != nil && !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	sort.Strings(out)
	return out
}

// unitOrder sorts the units so that each comes after its dependencies
// (names break ties); units on a cycle are returned apart.
func (p *resPlanner) unitOrder() (order, cyclic []string) {
	var units []string
	for name, r := range p.res {
		if r.Group == "" {
			units = append(units, name)
		}
	}
	sort.Strings(units)
	const (
		visiting = 1
		done     = 2
	)
	mark := map[string]int{}
	bad := map[string]bool{}
	var visit func(u string) bool
	visit = func(u string) bool {
		switch mark[u] {
		case visiting:
			return false
		case done:
			return !bad[u]
		}
		mark[u] = visiting
		ok := true
		for _, d := range p.deps(u) {
			if !visit(d) {
				ok = false
			}
		}
		mark[u] = done
		if !ok {
			bad[u] = true
			cyclic = append(cyclic, u)
			return false
		}
		order = append(order, u)
		return true
	}
	for _, u := range units {
		visit(u)
	}
	sort.Strings(cyclic)
	return order, cyclic
}

// members returns the primitives of a unit in start order (a primitive is
// its own only member); volume references are skipped.
func (p *resPlanner) members(u *Resource) []*Resource {
	if u.Type != TypeGroup {
		return []*Resource{u}
	}
	var out []*Resource
	for _, m := range u.Members {
		if r := p.res[m]; r != nil {
			out = append(out, r)
		}
	}
	return out
}

var stateRank = map[string]int{StateRunning: 1, StatePromoted: 1, StateUnknown: 2, StateFailed: 3, StateStopFailed: 4}

// active merges the members' states per node (the worst wins).
func (p *resPlanner) active(u *Resource) map[string]string {
	out := map[string]string{}
	for _, m := range p.members(u) {
		for n, s := range m.Active {
			if stateRank[s] > stateRank[out[n]] {
				out[n] = s
			}
		}
	}
	return out
}

// failures merges the members' failures per node.
func (p *resPlanner) failures(u *Resource) map[string]Failure {
	out := map[string]Failure{}
	for _, m := range p.members(u) {
		for n, f := range m.Failures {
			g := out[n]
			g.Count += f.Count
			g.Fatal = g.Fatal || f.Fatal
			if f.Last.After(g.Last) {
				g.Last, g.Op, g.Message = f.Last, f.Op, m.Name+": "+f.Message
			}
			out[n] = g
		}
	}
	return out
}

func (p *resPlanner) onFail(u *Resource) string {
	if u.OnFail == "" {
		return OnFailRestart
	}
	return u.OnFail
}

func (p *resPlanner) stickiness(u *Resource) int {
	if u.Constraints.Stickiness != nil {
		return *u.Constraints.Stickiness
	}
	if p.st.Settings.Stickiness != nil {
		return *p.st.Settings.Stickiness
	}
	return DefaultStickiness
}

// expired tells whether a failure is forgotten (failure-timeout).
func (p *resPlanner) expired(u *Resource, f Failure) bool {
	ft := time.Duration(u.Constraints.FailureTimeout)
	return ft > 0 && p.st.Now.Sub(f.Last) >= ft
}

// fenced tells whether the incarnation (lease) of node n is confirmed
// fenced.
func (p *resPlanner) fenced(n string, lease int64) bool {
	l, ok := p.st.Fenced[n]
	return ok && l == lease
}

// lease is the lease of the incarnation that reported unit u's state on n.
func (p *resPlanner) lease(u *Resource, n string) int64 {
	var l int64
	for _, m := range p.members(u) {
		if x := m.Leases[n]; x > l {
			l = x
		}
	}
	return l
}

func (p *resPlanner) fence(node string, lease int64, unit, reason string) {
	if i, ok := p.fenceAsked[node]; ok {
		if a := &p.out[i]; !slices.Contains(a.Resources, unit) {
			a.Resources = append(a.Resources, unit)
		}
		return
	}
	p.fenceAsked[node] = len(p.out)
	p.out = append(p.out, ResAction{Kind: ResFence, Node: node, Lease: lease, Resources: []string{unit}, Reason: reason})
}

// waitFence says what a unit waits for.
func (p *resPlanner) waitFence(n string) string {
	s := "waiting until " + n + " is confirmed fenced"
	if info := p.st.FenceInfo[n]; info != "" {
		s += " (" + info + ")"
	}
	return s
}

// banned tells why unit u may not run on node n ("" if it may).
func (p *resPlanner) banned(u *Resource, fails map[string]Failure, n string) string {
	if s, ok := u.Constraints.Scores[n]; ok && s <= -Infinity {
		return "banned by a location constraint"
	}
	for _, c := range p.st.Constraints {
		if c.Kind == ConsLocation && p.unitOf(c.Resource) == u.Name && c.Node == n && c.Score <= -Infinity {
			return "banned by location constraint " + c.ID
		}
	}
	f, ok := fails[n]
	if !ok || f.Count == 0 || p.expired(u, f) || (p.onFail(u) == OnFailIgnore && !f.Fatal) {
		return ""
	}
	threshold := u.Constraints.MigrationThreshold
	switch {
	case f.Fatal:
		return fmt.Sprintf("%s failed there (%s)", f.Op, f.Message)
	case p.onFail(u) == OnFailMove || p.onFail(u) == OnFailFence:
		return fmt.Sprintf("failed there (on-fail=%s): %s", p.onFail(u), f.Message)
	case threshold > 0 && f.Count >= threshold:
		return fmt.Sprintf("failed %d times there (migration-threshold %d)", f.Count, threshold)
	}
	return ""
}

// locScore is a node's location score for unit u (preferences, scores and
// location constraints), without stickiness.
func (p *resPlanner) locScore(u *Resource, n string) int {
	s := score(u.Constraints, n)
	for _, c := range p.st.Constraints {
		if c.Kind == ConsLocation && p.unitOf(c.Resource) == u.Name && c.Node == n {
			s += c.Score
		}
	}
	return s
}

// colocations returns unit u's colocation targets resolved to nodes:
// must (the one node it must run on, "" if none), why it cannot run at
// all, and additive scores per node.
func (p *resPlanner) colocations(u *Resource) (must string, whyNot string, mustNot []string, add map[string]int) {
	add = map[string]int{}
	require := func(node, what string) {
		switch {
		case whyNot != "":
		case node == "":
			whyNot = "it must run with " + what + ", which is not running anywhere"
		case must != "" && must != node:
			whyNot = fmt.Sprintf("it must run with %s on %s and on %s at once", what, node, must)
		default:
			must = node
		}
	}
	targetNode := func(with string) (string, string) {
		if v, ok := strings.CutPrefix(with, VolumeRef); ok {
			vol, found := p.vols[v]
			if !found {
				return "", "volume " + v + " (no such volume)"
			}
			if n, ok := p.nodes[vol.Primary]; !ok || !n.Online || vol.Stopped {
				return "", "the primary of volume " + v
			}
			return vol.Primary, "the primary of volume " + v
		}
		w := p.unitOf(with)
		if p.res[w] == nil {
			return "", with + " (no such resource)"
		}
		return p.desired[w], with
	}
	if u.Type == TypeGroup {
		for _, m := range u.Members {
			if strings.HasPrefix(m, VolumeRef) {
				node, what := targetNode(m)
				require(node, what)
			}
		}
	}
	for _, c := range p.st.Constraints {
		if c.Kind != ConsColocation || p.unitOf(c.Resource) != u.Name {
			continue
		}
		node, what := targetNode(c.With)
		switch {
		case c.Score >= Infinity:
			require(node, what)
		case c.Score <= -Infinity:
			if node != "" {
				mustNot = append(mustNot, node)
			}
		case node != "":
			add[node] += c.Score
		}
	}
	return must, whyNot, mustNot, add
}

// orderGate tells why unit u may not start yet, and whether it must stop
// (one of its firsts is stopping or moving).
func (p *resPlanner) orderGate(u *Resource) (wait, mustStop string) {
	for _, c := range p.st.Constraints {
		if c.Kind != ConsOrder || p.unitOf(c.Resource) != u.Name {
			continue
		}
		f := p.unitOf(c.First)
		if p.res[f] == nil {
			continue
		}
		if !p.running[f] {
			if wait == "" {
				wait = "waiting for " + c.First + " to start (order constraint " + c.ID + ")"
			}
			if fr := p.res[f]; mustStop == "" && (p.desired[f] == "" || fr.Assigned != p.desired[f]) {
				mustStop = c.First + ", which it starts after, is stopping or moving (order constraint " + c.ID + ")"
			}
		}
	}
	return wait, mustStop
}

// stopWait says why unit u may not stop yet: a unit ordered after it is
// still active (it stops first).
func (p *resPlanner) stopWait(u *Resource) string {
	for _, c := range p.st.Constraints {
		if c.Kind != ConsOrder || p.unitOf(c.First) != u.Name {
			continue
		}
		if d := p.res[p.unitOf(c.Resource)]; d != nil && len(p.active(d)) > 0 {
			return "waiting for " + c.Resource + " to stop first (order constraint " + c.ID + ")"
		}
	}
	return ""
}

type resCand struct {
	name  string
	score int
}

// choose picks the node unit u should run on ("" and why when none).
func (p *resPlanner) choose(u *Resource, current string, fails map[string]Failure) (string, string) {
	if u.Stopped {
		return "", "stopped by request"
	}
	if p.onFail(u) == OnFailStop {
		for _, n := range sortedKeys(fails) {
			if f := fails[n]; f.Count > 0 && !p.expired(u, f) {
				return "", fmt.Sprintf("failed on %s (on-fail=stop: stays stopped until cleaned up): %s", n, f.Message)
			}
		}
	}
	must, whyNot, mustNot, add := p.colocations(u)
	if whyNot != "" {
		return "", whyNot
	}
	var cands []resCand
	var refused []string
	for _, n := range p.st.Nodes {
		if must != "" && n.Name != must {
			continue
		}
		var why string
		switch {
		case !n.Online:
			why = "offline"
		case n.Standby:
			why = "in standby"
		case !n.HasRole(RoleVhost):
			why = "not a vhost node"
		case slices.Contains(mustNot, n.Name):
			why = "a colocation forbids it"
		default:
			why = p.banned(u, fails, n.Name)
		}
		if why != "" {
			refused = append(refused, n.Name+": "+why)
			continue
		}
		s := p.locScore(u, n.Name) + add[n.Name]
		if n.Name == current {
			s += p.stickiness(u)
		}
		cands = append(cands, resCand{n.Name, s})
	}
	if len(cands) == 0 {
		why := "no node can run it"
		if must != "" {
			why = "the node it must run with (" + must + ") cannot run it"
		}
		if len(refused) > 0 {
			why += " (" + strings.Join(refused, "; ") + ")"
		}
		return "", why
	}
	sort.SliceStable(cands, func(i, j int) bool {
		if cands[i].score != cands[j].score {
			return cands[i].score > cands[j].score
		}
		if (cands[i].name == current) != (cands[j].name == current) {
			return cands[i].name == current
		}
		return cands[i].name < cands[j].name
	})
	return cands[0].name, fmt.Sprintf("score %d", cands[0].score)
}

func (p *resPlanner) unit(u *Resource) {
	active := p.active(u)
	fails := p.failures(u)
	blocked := func(why string) {
		p.out = append(p.out, ResAction{Kind: ResBlocked, Resource: u.Name, Reason: why})
	}
	needsFencing := u.Requires != RequiresQuorum
	// A unit active on a lost node, or that failed to stop, waits for
	// that node to be fenced.
	for _, n := range sortedKeys(active) {
		node, ok := p.nodes[n]
		lease := p.lease(u, n)
		switch {
		case !ok:
			delete(active, n) // the node left the cluster
		case !node.Online || (node.Lease != 0 && lease != 0 && lease != node.Lease):
			// The incarnation that ran it is gone.
			if !needsFencing || p.fenced(n, lease) {
				delete(active, n)
				continue
			}
			p.fence(n, lease, u.Name, fmt.Sprintf("resource %s was active on %s, lost without a clean stop", u.Name, n))
			blocked(fmt.Sprintf("was active on %s, which was lost; %s", n, p.waitFence(n)))
			return
		case active[n] == StateStopFailed:
			if p.fenced(n, lease) {
				delete(active, n)
				continue
			}
			p.fence(n, lease, u.Name, fmt.Sprintf("resource %s failed to stop on %s", u.Name, n))
			blocked(fmt.Sprintf("failed to stop on %s; %s", n, p.waitFence(n)))
			return
		case p.onFail(u) == OnFailFence && (active[n] == StateFailed || (fails[n].Count > 0 && !p.expired(u, fails[n]))):
			if p.fenced(n, lease) {
				delete(active, n)
				continue
			}
			p.fence(n, lease, u.Name, fmt.Sprintf("resource %s failed on %s (on-fail=fence)", u.Name, n))
			blocked(fmt.Sprintf("failed on %s (on-fail=fence); %s", n, p.waitFence(n)))
			return
		}
	}
	current := ""
	if len(active) == 1 {
		current = sortedKeys(active)[0]
	} else if len(active) == 0 && u.Assigned != "" {
		current = u.Assigned
	}
	target, why := p.choose(u, current, fails)
	wait, mustStop := p.orderGate(u)
	switch {
	case target == "":
	case mustStop != "" && len(active) > 0:
		target, why = "", mustStop
	case wait != "" && len(active) == 0:
		target, why = "", wait
	}
	var others []string
	for _, n := range sortedKeys(active) {
		if n != target {
			others = append(others, n)
		}
	}
	if len(others) > 0 {
		// Stop it there first; it starts on target once stopped.
		p.desired[u.Name] = ""
		if u.Assigned != "" && u.Assigned == target {
			// Its node keeps it; the others stop it (not theirs).
			return
		}
		if u.Assigned != "" {
			if w := p.stopWait(u); w != "" {
				blocked(w)
				return
			}
			reason := why
			if target != "" {
				reason = p.moveWhy(u, current, target, fails)
			}
			p.out = append(p.out, ResAction{Kind: ResUnassign, Resource: u.Name, From: u.Assigned, Reason: reason})
		} else if target != "" {
			blocked(fmt.Sprintf("waiting for it to stop on %s before starting on %s", strings.Join(others, ", "), target))
		}
		if target == "" && !u.Stopped {
			blocked(why)
		}
		return
	}
	if target == "" && u.Assigned != "" && len(active) > 0 {
		if w := p.stopWait(u); w != "" {
			p.desired[u.Name] = ""
			blocked(w)
			return
		}
	}
	p.desired[u.Name] = target
	switch {
	case target == "" && u.Assigned != "":
		p.out = append(p.out, ResAction{Kind: ResUnassign, Resource: u.Name, From: u.Assigned, Reason: why})
	case target != "" && u.Assigned != target:
		reason := "placed (" + why + ")"
		if u.Assigned != "" {
			reason = p.moveWhy(u, u.Assigned, target, fails)
		}
		p.out = append(p.out, ResAction{Kind: ResAssign, Resource: u.Name, Node: target, From: u.Assigned, Reason: reason})
	}
	if target == "" && !u.Stopped {
		blocked(why)
	}
	if target != "" && u.Assigned == target {
		all := len(p.members(u)) > 0
		for _, m := range p.members(u) {
			if s := m.Active[target]; s != StateRunning && s != StatePromoted {
				all = false
			}
		}
		p.running[u.Name] = all
	}
}

// moveWhy explains a move from one node to another.
func (p *resPlanner) moveWhy(u *Resource, from, to string, fails map[string]Failure) string {
	n, ok := p.nodes[from]
	switch {
	case from == "":
		return "placed"
	case !ok:
		return fmt.Sprintf("%s left the cluster; moving to %s", from, to)
	case !n.Online:
		return fmt.Sprintf("%s is offline; moving to %s", from, to)
	case n.Standby:
		return fmt.Sprintf("%s is in standby; moving to %s", from, to)
	}
	if why := p.banned(u, fails, from); why != "" {
		return fmt.Sprintf("cannot stay on %s: %s; moving to %s", from, why, to)
	}
	must, _, mustNot, add := p.colocations(u)
	if must != "" && must != from {
		return fmt.Sprintf("must run on %s with what it is colocated with; moving from %s", to, from)
	}
	if slices.Contains(mustNot, from) {
		return fmt.Sprintf("a colocation forbids %s; moving to %s", from, to)
	}
	return fmt.Sprintf("%s is preferred (score %d) over %s (score %d with stickiness %d); moving",
		to, p.locScore(u, to)+add[to], from, p.locScore(u, from)+add[from]+p.stickiness(u), p.stickiness(u))
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
