package dataplane

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// Op is one change to kernel state. Plan produces them, a Kernel applies them; String gives
// one line in the spirit of iproute2, e.g.
// "route add 10.32.1.0/26 via 10.32.1.0 dev weft-vxlan onlink proto 0x77".
// The set is closed: the concrete types are the ones below.
type Op interface {
	String() string
	isOp()
}

// LinkAdd creates a link (down; a LinkSetUp follows).
type LinkAdd struct{ Link Link }

// LinkDel deletes a link, and with it every address, route, neighbour and FDB entry on it.
type LinkDel struct{ Name string }

// LinkSetMTU changes a link's MTU in place.
type LinkSetMTU struct {
	Name string
	MTU  int
}

// LinkSetMAC changes a link's hardware address in place.
type LinkSetMAC struct {
	Name string
	MAC  net.HardwareAddr
}

// LinkSetUp sets a link administratively up.
type LinkSetUp struct{ Name string }

// AddrAdd adds an address.
type AddrAdd struct{ Addr Addr }

// AddrDel deletes an address.
type AddrDel struct{ Addr Addr }

// RouteAdd adds a route; it fails rather than overwrite someone else's route to Dst.
type RouteAdd struct{ Route Route }

// RouteReplace changes weft's existing route to Route.Dst into Route.
type RouteReplace struct{ Route Route }

// RouteDel deletes a route.
type RouteDel struct{ Route Route }

// NeighSet creates or replaces a permanent neighbour entry. Replace only changes the
// wording: an entry (of some state, or another MAC) already existed.
type NeighSet struct {
	Neigh   Neigh
	Replace bool
}

// NeighDel deletes a neighbour entry.
type NeighDel struct{ Neigh Neigh }

// FDBSet creates a permanent FDB entry, or replaces the remote of the MAC's existing one.
type FDBSet struct {
	FDB     FDB
	Replace bool
}

// FDBDel deletes one remote of an FDB entry.
type FDBDel struct{ FDB FDB }

// SysctlSet writes a sysctl of the network namespace.
type SysctlSet struct {
	Key   string // e.g. "net.ipv4.ip_forward"
	Value string
}

// NFTTableSet rebuilds table "ip weft" in one atomic nftables transaction (see the package
// doc): chains "prerouting" and "output" (filter, raw) that exempt UDP packets to VXLANPort,
// the overlay's outer packets, from connection tracking; chains "hostports-prerouting" and
// "hostports-output" (nat, dstnat) with one DNAT rule per host port, in the order given
// (Plan sorts them), both present even when there are none; and chain "postrouting" (nat,
// srcnat) with the masquerade rule for ClusterCIDR, when Bridge is set the hairpin
// masquerade rule for connections DNATed from the bridge back onto it, and one for each pod
// with a host port reaching itself.
type NFTTableSet struct {
	ClusterCIDR netip.Prefix
	VXLANPort   int
	Bridge      string
	HostPorts   []HostPort
}

func (LinkAdd) isOp()      {}
func (LinkDel) isOp()      {}
func (LinkSetMTU) isOp()   {}
func (LinkSetMAC) isOp()   {}
func (LinkSetUp) isOp()    {}
func (AddrAdd) isOp()      {}
func (AddrDel) isOp()      {}
func (RouteAdd) isOp()     {}
func (RouteReplace) isOp() {}
func (RouteDel) isOp()     {}
func (NeighSet) isOp()     {}
func (NeighDel) isOp()     {}
func (FDBSet) isOp()       {}
func (FDBDel) isOp()       {}
func (SysctlSet) isOp()    {}
func (NFTTableSet) isOp()  {}

func (o LinkAdd) String() string { return "link add " + o.Link.String() }
func (o LinkDel) String() string { return "link del " + o.Name }
func (o LinkSetMTU) String() string {
	return fmt.Sprintf("link set %s mtu %d", o.Name, o.MTU)
}
func (o LinkSetMAC) String() string {
	return fmt.Sprintf("link set %s address %s", o.Name, o.MAC)
}
func (o LinkSetUp) String() string    { return "link set " + o.Name + " up" }
func (o AddrAdd) String() string      { return "addr add " + o.Addr.String() }
func (o AddrDel) String() string      { return "addr del " + o.Addr.String() }
func (o RouteAdd) String() string     { return "route add " + o.Route.String() }
func (o RouteReplace) String() string { return "route replace " + o.Route.String() }
func (o RouteDel) String() string     { return "route del " + o.Route.String() }
func (o NeighSet) String() string {
	return fmt.Sprintf("neigh %s %s lladdr %s dev %s nud permanent",
		verb(o.Replace), o.Neigh.IP, o.Neigh.MAC, o.Neigh.Dev)
}
func (o NeighDel) String() string {
	return fmt.Sprintf("neigh del %s lladdr %s dev %s", o.Neigh.IP, o.Neigh.MAC, o.Neigh.Dev)
}
func (o FDBSet) String() string {
	return fmt.Sprintf("fdb %s %s dst %s dev %s self permanent",
		verb(o.Replace), o.FDB.MAC, o.FDB.Dst, o.FDB.Dev)
}
func (o FDBDel) String() string {
	return fmt.Sprintf("fdb del %s dst %s dev %s self", o.FDB.MAC, o.FDB.Dst, o.FDB.Dev)
}
func (o SysctlSet) String() string { return "sysctl " + o.Key + "=" + o.Value }
func (o NFTTableSet) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "nft rebuild table ip %s { %s: ip saddr %s ip daddr != %s masquerade",
		NFTTable, natChainName, o.ClusterCIDR, o.ClusterCIDR)
	if o.Bridge != "" {
		fmt.Fprintf(&b, ", iifname %[1]s oifname %[1]s ct status dnat masquerade", o.Bridge)
	}
	if pods := o.hairpinPods(); len(pods) > 0 {
		b.WriteString(", ip saddr P ip daddr P ct status dnat masquerade for P in {")
		for i, p := range pods {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(p.String())
		}
		b.WriteByte('}')
	}
	fmt.Fprintf(&b, "; %s, %s: udp dport %d notrack; hostports:", rawPreroutingName, rawOutputName, o.VXLANPort)
	if len(o.HostPorts) == 0 {
		b.WriteString(" none")
	}
	for i, h := range o.HostPorts {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(" " + hostPortText(h, " -> "))
	}
	b.WriteString(" }")
	return b.String()
}

func verb(replace bool) string {
	if replace {
		return "replace"
	}
	return "add"
}

// String formats a link the way `ip link add` would take it.
func (l Link) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s type %s", l.Name, l.Kind)
	if l.Kind == "vxlan" {
		fmt.Fprintf(&b, " id %d dstport %d local %s dev %s", l.VNI, l.Port, l.Local, l.Underlay)
		if l.Learning {
			b.WriteString(" learning")
		} else {
			b.WriteString(" nolearning")
		}
	}
	if len(l.MAC) > 0 {
		fmt.Fprintf(&b, " address %s", l.MAC)
	}
	fmt.Fprintf(&b, " mtu %d", l.MTU)
	return b.String()
}

func (a Addr) String() string { return a.Prefix.String() + " dev " + a.Dev }

// String formats a route like `ip route`, always ending in weft's protocol.
func (r Route) String() string {
	var b strings.Builder
	b.WriteString(r.Dst.String())
	if r.Gw.IsValid() {
		b.WriteString(" via " + r.Gw.String())
	}
	if r.Dev != "" {
		b.WriteString(" dev " + r.Dev)
	}
	switch r.Scope {
	case ScopeUniverse:
	case ScopeLink:
		b.WriteString(" scope link")
	case ScopeHost:
		b.WriteString(" scope host")
	default:
		fmt.Fprintf(&b, " scope %d", r.Scope)
	}
	if r.Src.IsValid() {
		b.WriteString(" src " + r.Src.String())
	}
	if r.Metric != 0 {
		fmt.Fprintf(&b, " metric %d", r.Metric)
	}
	if r.OnLink {
		b.WriteString(" onlink")
	}
	fmt.Fprintf(&b, " proto %#x", RouteProtocol)
	return b.String()
}
