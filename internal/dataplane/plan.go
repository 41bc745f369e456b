package dataplane

import (
	"bytes"
	"cmp"
	"maps"
	"net/netip"
	"slices"
)

// Plan computes the changes that turn o into d. It is pure and deterministic: the same
// inputs give the same ops in the same order, whatever the order of d.Peers, of the blocks
// or of o's slices.
//
// Ops come in apply order: links, addresses, route deletes, neighbour and FDB entries, route
// adds and replaces, then the sysctl and the nftables table. So a route never points at a
// peer whose neighbour or FDB entry is missing, and a route that goes away goes first.
//
// Adds and updates are always planned. Deletes of entries that are not desired (routes with
// protocol RouteProtocol in the main table, permanent neighbours and weft's FDB entries on
// the VXLAN device, IPv4 addresses on the bridge and the VXLAN device) are planned only when
// d.Prune is true. Replacing a link of the wrong kind, or a VXLAN device whose fixed
// parameters differ (VNI, port, local address, underlay, learning), is an update: it
// happens whatever Prune says.
func Plan(d Desired, o Observed) []Op {
	p := planner{d: d, o: o, peers: sortedPeers(d.Peers)}

	// A link that is (re)created has nothing on it: what was observed on the old one goes
	// with it, and is planned from scratch.
	brOps, brFresh := planLink(wantBridge(d), o.Bridge)
	vxOps, vxFresh := planLink(wantVXLAN(d), o.VXLAN)
	p.fresh = map[string]bool{d.Bridge.Name: brFresh, d.VXLAN.Name: vxFresh}

	addrAdds, addrDels := p.addrs()
	routeSets, routeDels := p.routes()
	neighSets, neighDels := p.neighs()
	fdbSets, fdbDels := p.fdb()
	var tail []Op
	if !o.IPForward {
		tail = append(tail, SysctlSet{Key: ipForward, Value: "1"})
	}
	if table := wantTable(d); !natConverged(o.NAT, table) {
		tail = append(tail, table)
	}
	return slices.Concat(brOps, vxOps, addrAdds, addrDels, routeDels,
		neighSets, fdbSets, neighDels, fdbDels, routeSets, tail)
}

type planner struct {
	d     Desired
	o     Observed
	peers []*Peer         // sorted by name
	fresh map[string]bool // links (re)created by this plan
}

// live reports whether an observed entry on dev survives the link ops.
func (p *planner) live(dev string) bool { return !p.fresh[dev] }

// addrs: the gateway on the bridge, the tunnel address on the VXLAN device.
func (p *planner) addrs() (adds, dels []Op) {
	want := []Addr{
		{Dev: p.d.Bridge.Name, Prefix: netip.PrefixFrom(p.d.Bridge.Gateway, 32)},
		{Dev: p.d.VXLAN.Name, Prefix: netip.PrefixFrom(p.d.VXLAN.TunnelIP, 32)},
	}
	have := map[Addr]bool{}
	for _, a := range p.o.Addrs {
		if (a.Dev == p.d.Bridge.Name || a.Dev == p.d.VXLAN.Name) && p.live(a.Dev) {
			have[a] = true
		}
	}
	for _, a := range want {
		if !have[a] {
			adds = append(adds, AddrAdd{Addr: a})
		}
	}
	if p.d.Prune {
		for _, a := range sortedAddrs(have) {
			if !slices.Contains(want, a) {
				dels = append(dels, AddrDel{Addr: a})
			}
		}
	}
	return adds, dels
}

// routes: a link route per local block, a route via the peer's tunnel address per remote
// block, adjacent blocks of one peer merged (see Aggregate). Keyed by destination; the first claim of a destination wins (local blocks, then
// peers by name), though Reconcile leaves contested blocks out before it comes to that.
func (p *planner) routes() (sets, dels []Op) {
	var want []Route
	claimed := map[netip.Prefix]bool{}
	claim := func(r Route) {
		if !claimed[r.Dst] {
			claimed[r.Dst] = true
			want = append(want, r)
		}
	}
	for _, b := range sortedPrefixes(p.d.Bridge.Blocks) {
		claim(Route{Dst: b, Dev: p.d.Bridge.Name, Scope: ScopeLink, Src: p.d.Bridge.Gateway})
	}
	for _, peer := range p.peers {
		for _, b := range Aggregate(peer.Blocks) {
			claim(Route{Dst: b, Gw: peer.TunnelIP, Dev: p.d.VXLAN.Name, OnLink: true})
		}
	}
	slices.SortFunc(want, func(a, b Route) int { return comparePrefix(a.Dst, b.Dst) })

	have := make(map[netip.Prefix][]int, len(p.o.Routes))
	for i, r := range p.o.Routes {
		if p.live(r.Dev) {
			have[r.Dst] = append(have[r.Dst], i)
		}
	}
	kept := make([]bool, len(p.o.Routes))
	for _, w := range want {
		idx := have[w.Dst]
		if i, ok := find(idx, func(i int) bool { return p.o.Routes[i] == w }); ok {
			kept[i] = true
		} else if i, ok := find(idx, func(i int) bool { return p.o.Routes[i].Metric == 0 }); ok {
			kept[i] = true // the replace rewrites this very entry
			sets = append(sets, RouteReplace{Route: w})
		} else {
			sets = append(sets, RouteAdd{Route: w})
		}
	}
	if p.d.Prune {
		var stale []Route
		for i, r := range p.o.Routes {
			if !kept[i] && p.live(r.Dev) {
				stale = append(stale, r)
			}
		}
		slices.SortFunc(stale, compareRoute)
		for _, r := range stale {
			dels = append(dels, RouteDel{Route: r})
		}
	}
	return sets, dels
}

// neighs: each peer's tunnel address resolves statically to its VTEP MAC. Only permanent
// entries are weft's to delete; the kernel's own (ARP attempts) age out by themselves.
func (p *planner) neighs() (sets, dels []Op) {
	vx := p.d.VXLAN.Name
	have := map[netip.Addr]Neigh{}
	for _, n := range p.o.Neighs {
		if n.Dev == vx && p.live(vx) {
			have[n.IP] = n
		}
	}
	want := map[netip.Addr]bool{}
	for _, peer := range sortedBy(p.peers, func(p *Peer) netip.Addr { return p.TunnelIP }, netip.Addr.Compare) {
		if want[peer.TunnelIP] {
			continue
		}
		want[peer.TunnelIP] = true
		h, ok := have[peer.TunnelIP]
		if ok && h.Permanent && bytes.Equal(h.MAC, peer.MAC) {
			continue
		}
		sets = append(sets, NeighSet{Neigh: Neigh{Dev: vx, IP: peer.TunnelIP, MAC: peer.MAC, Permanent: true}, Replace: ok})
	}
	if p.d.Prune {
		for _, ip := range slices.SortedFunc(maps.Keys(have), netip.Addr.Compare) {
			if h := have[ip]; h.Permanent && !want[ip] {
				dels = append(dels, NeighDel{Neigh: h})
			}
		}
	}
	return sets, dels
}

// fdb: each peer's VTEP MAC goes to its underlay address. Entries without a remote, and
// flood entries, are the kernel's or someone else's (see FDB.ours).
func (p *planner) fdb() (sets, dels []Op) {
	vx := p.d.VXLAN.Name
	var fdb []FDB
	byMAC := map[string][]int{} // entries with a remote, by MAC, in kernel order
	for _, f := range p.o.FDB {
		if f.Dev == vx && p.live(vx) {
			if f.Dst.IsValid() {
				byMAC[string(f.MAC)] = append(byMAC[string(f.MAC)], len(fdb))
			}
			fdb = append(fdb, f)
		}
	}
	kept := make([]bool, len(fdb))
	want := map[string]bool{}
	for _, peer := range sortedBy(p.peers, func(p *Peer) []byte { return p.MAC }, bytes.Compare) {
		if want[string(peer.MAC)] {
			continue
		}
		want[string(peer.MAC)] = true
		w := FDB{Dev: vx, MAC: peer.MAC, Dst: peer.UnderlayIP, Permanent: true}
		cands := byMAC[string(w.MAC)]
		if i, ok := find(cands, func(i int) bool { return fdb[i].Dst == w.Dst && fdb[i].Permanent }); ok {
			kept[i] = true
			continue
		}
		if len(cands) > 0 {
			kept[cands[0]] = true // a replace rewrites the entry's first remote
		}
		sets = append(sets, FDBSet{FDB: w, Replace: len(cands) > 0})
	}
	if p.d.Prune {
		var stale []FDB
		for i, f := range fdb {
			if !kept[i] && f.ours() {
				stale = append(stale, f)
			}
		}
		slices.SortFunc(stale, func(a, b FDB) int {
			return cmp.Or(bytes.Compare(a.MAC, b.MAC), a.Dst.Compare(b.Dst))
		})
		for _, f := range stale {
			dels = append(dels, FDBDel{FDB: f})
		}
	}
	return sets, dels
}

func wantBridge(d Desired) Link {
	return Link{Name: d.Bridge.Name, Kind: "bridge", MTU: d.MTU, MAC: d.Bridge.MAC, Up: true}
}

func wantVXLAN(d Desired) Link {
	return Link{
		Name: d.VXLAN.Name, Kind: "vxlan", MTU: d.MTU, MAC: d.VXLAN.MAC, Up: true,
		VNI: d.VXLAN.VNI, Port: d.VXLAN.Port, Local: d.VXLAN.UnderlayIP, Underlay: d.VXLAN.Underlay,
		Learning: false,
	}
}

// sameIdentity reports whether have can become want in place: the same kind and, for a
// VXLAN device, the same parameters the kernel cannot change on a live device.
func sameIdentity(want, have Link) bool {
	if want.Kind != have.Kind {
		return false
	}
	if want.Kind != "vxlan" {
		return true
	}
	return want.VNI == have.VNI && want.Port == have.Port && want.Local == have.Local &&
		want.Underlay == have.Underlay && want.Learning == have.Learning
}

// planLink returns the ops for one link, and whether the link is (re)created, so that
// nothing observed on it survives.
func planLink(want Link, have *Link) (ops []Op, fresh bool) {
	if have != nil && sameIdentity(want, *have) {
		if have.MTU != want.MTU {
			ops = append(ops, LinkSetMTU{Name: want.Name, MTU: want.MTU})
		}
		if len(want.MAC) > 0 && !bytes.Equal(have.MAC, want.MAC) {
			ops = append(ops, LinkSetMAC{Name: want.Name, MAC: want.MAC})
		}
		if !have.Up {
			ops = append(ops, LinkSetUp{Name: want.Name})
		}
		return ops, false
	}
	if have != nil {
		ops = append(ops, LinkDel{Name: want.Name})
	}
	return append(ops, LinkAdd{Link: want}, LinkSetUp{Name: want.Name}), true
}

// wantTable is the content of table "ip weft" that d asks for.
func wantTable(d Desired) NFTTableSet {
	return NFTTableSet{ClusterCIDR: d.ClusterCIDR, VXLANPort: d.VXLAN.Port, Bridge: d.Bridge.Name,
		HostPorts: sortedHostPorts(d.HostPorts)}
}

// sortedHostPorts orders host ports by HostIP, Protocol, HostPort, PodIP, PodPort, and drops
// duplicates, so that the table does not depend on the order the agent lists them in. A
// HostIP of 0.0.0.0 means every local address, like the zero Addr, and becomes it. Two
// mappings of one host port to different pods are both kept, in that order: the first
// rule translates, the second never matches (the kubelet does not let two pods of a node
// claim one host port, so this is at most a passing state).
func sortedHostPorts(hs []HostPort) []HostPort {
	if len(hs) == 0 {
		return nil
	}
	out := slices.Clone(hs)
	for i := range out {
		if out[i].HostIP.IsUnspecified() {
			out[i].HostIP = netip.Addr{}
		}
	}
	slices.SortFunc(out, func(a, b HostPort) int {
		return cmp.Or(a.HostIP.Compare(b.HostIP), cmp.Compare(a.Protocol, b.Protocol),
			cmp.Compare(a.HostPort, b.HostPort), a.PodIP.Compare(b.PodIP), cmp.Compare(a.PodPort, b.PodPort))
	})
	return slices.Compact(out)
}

// natConverged reports whether table "ip weft" is exactly want: each chain of the right
// type, hook, priority and policy, holding exactly weft's rules for want, in order. The
// hostports chains must exist even when want has no host ports. Other chains in the table
// are not observed; the rebuild removes them anyway.
func natConverged(n NAT, want NFTTableSet) bool {
	c := n.Chain
	return n.Table && c != nil && c.Type == natChainType && c.Hook == natChainHook &&
		c.Priority == natChainPriority && c.Policy == natChainPolicy && slices.Equal(c.Rules, want.postrouting()) &&
		rawConverged(n.Prerouting, rawPreroutingName, want.VXLANPort) &&
		rawConverged(n.Output, rawOutputName, want.VXLANPort) &&
		hostPortsConverged(n.HostPortsPrerouting, "prerouting", want.HostPorts) &&
		hostPortsConverged(n.HostPortsOutput, "output", want.HostPorts)
}

// postrouting is the rules of chain postrouting for op, in order: the masquerade rule, the
// same-bridge hairpin rule (when op names the bridge), and one pod-to-itself hairpin rule
// per pod with a host port, by address.
func (op NFTTableSet) postrouting() []NATRule {
	rules := []NATRule{{Masquerade: op.ClusterCIDR}}
	if op.Bridge != "" {
		rules = append(rules, NATRule{Hairpin: op.Bridge})
	}
	for _, pod := range op.hairpinPods() {
		rules = append(rules, NATRule{HairpinPod: pod})
	}
	return rules
}

// hairpinPods is the pods of op's host ports, sorted, each once.
func (op NFTTableSet) hairpinPods() []netip.Addr {
	var pods []netip.Addr
	for _, h := range op.HostPorts {
		pods = append(pods, h.PodIP)
	}
	slices.SortFunc(pods, netip.Addr.Compare)
	return slices.Compact(pods)
}

func rawConverged(c *RawChain, hook string, port int) bool {
	return c != nil && c.Type == rawChainType && c.Hook == hook &&
		c.Priority == rawChainPriority && c.Policy == rawChainPolicy &&
		len(c.Rules) == 1 && c.Rules[0] == port
}

func hostPortsConverged(c *HostPortChain, hook string, want []HostPort) bool {
	return c != nil && c.Type == hostPortsChainType && c.Hook == hook &&
		c.Priority == hostPortsChainPriority && c.Policy == hostPortsChainPolicy &&
		slices.Equal(c.Rules, want)
}

func find(idx []int, ok func(int) bool) (int, bool) {
	for _, i := range idx {
		if ok(i) {
			return i, true
		}
	}
	return 0, false
}

func comparePrefix(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
}

func compareRoute(a, b Route) int {
	return cmp.Or(comparePrefix(a.Dst, b.Dst), cmp.Compare(a.Metric, b.Metric),
		cmp.Compare(a.Dev, b.Dev), a.Gw.Compare(b.Gw), a.Src.Compare(b.Src))
}

// Aggregate returns the fewest prefixes covering exactly ps: sorted, duplicates and
// prefixes inside others dropped, and two halves of an aligned prefix merged into it,
// repeatedly. IPAM claims a node's blocks next to each other, so a node with 4 blocks
// usually gets one route on its peers instead of 4.
func Aggregate(ps []netip.Prefix) []netip.Prefix {
	out := sortedPrefixes(ps)
	for {
		merged := out[:0:0]
		changed := false
		for i := 0; i < len(out); i++ {
			p := out[i]
			if len(merged) > 0 && merged[len(merged)-1].Overlaps(p) {
				changed = true // inside the previous (sorted by address, wider first)
				continue
			}
			if i+1 < len(out) && p.Bits() > 0 && p.Bits() == out[i+1].Bits() {
				parent := netip.PrefixFrom(p.Addr(), p.Bits()-1).Masked()
				other := out[i+1]
				if parent.Addr() == p.Addr() && other.Addr() != p.Addr() && parent.Contains(other.Addr()) {
					merged = append(merged, parent)
					i++
					changed = true
					continue
				}
			}
			merged = append(merged, p)
		}
		out = merged
		if !changed {
			return out
		}
	}
}

func sortedPrefixes(ps []netip.Prefix) []netip.Prefix {
	return slices.SortedFunc(slices.Values(ps), comparePrefix)
}

func sortedAddrs(m map[Addr]bool) []Addr {
	return slices.SortedFunc(maps.Keys(m), func(a, b Addr) int {
		return cmp.Or(cmp.Compare(a.Dev, b.Dev), comparePrefix(a.Prefix, b.Prefix))
	})
}

// sortedPeers orders peers by name (then tunnel address), so that which of two conflicting
// peers wins does not depend on input order. It sorts pointers: peers are large.
func sortedPeers(ps []Peer) []*Peer {
	out := make([]*Peer, len(ps))
	for i := range ps {
		out[i] = &ps[i]
	}
	slices.SortStableFunc(out, func(a, b *Peer) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), a.TunnelIP.Compare(b.TunnelIP))
	})
	return out
}

// sortedBy returns s stably sorted by key.
func sortedBy[T, K any](s []T, key func(T) K, compare func(a, b K) int) []T {
	return slices.SortedStableFunc(slices.Values(s), func(a, b T) int { return compare(key(a), key(b)) })
}
