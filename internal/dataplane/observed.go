package dataplane

import (
	"net"
	"net/netip"
)

// Observed is the part of a network namespace's kernel state the reconciler looks at. It is
// plain data, so Plan can be tested without a kernel: NewKernel fills it from netlink and
// nftables, FakeKernel keeps one in memory.
type Observed struct {
	// Bridge and VXLAN are the links with the names in Desired, nil when absent (whatever
	// their kind: a "weft" that is a dummy is reported, and replaced).
	Bridge *Link
	VXLAN  *Link
	// Addrs are the IPv4 addresses on Bridge and VXLAN.
	Addrs []Addr
	// Routes are the IPv4 routes of the main table whose protocol is RouteProtocol.
	Routes []Route
	// Neighs are the IPv4 neighbour entries on the VXLAN device, in every state.
	Neighs []Neigh
	// FDB are the forwarding-database entries on the VXLAN device, in kernel order,
	// including the ones the kernel makes itself (no Dst).
	FDB []FDB
	// IPForward is net.ipv4.ip_forward == 1.
	IPForward bool
	// NAT is weft's nftables table.
	NAT NAT
}

// Link is a network interface. The VXLAN fields are zero for other kinds.
type Link struct {
	Name string
	Kind string // "bridge", "vxlan", or whatever else the kernel calls it ("dummy", "device", ...)
	MTU  int
	MAC  net.HardwareAddr
	Up   bool // administratively up (IFF_UP)

	VNI      int
	Port     int
	Local    netip.Addr
	Underlay string // name of the VTEP's underlay link (IFLA_VXLAN_LINK)
	Learning bool
}

// Addr is an interface address, e.g. 10.32.0.1/32 on "weft".
type Addr struct {
	Dev    string
	Prefix netip.Prefix
}

// Route is an IPv4 unicast route in the main table with protocol RouteProtocol.
type Route struct {
	Dst    netip.Prefix
	Gw     netip.Addr // invalid for a link route
	Dev    string     // "" when the route has no single output device (e.g. multipath)
	Src    netip.Addr // preferred source, invalid when unset
	Scope  uint8      // 0 universe, ScopeLink, ScopeHost
	OnLink bool
	Metric int
}

// Route scopes (rtm_scope) weft uses or prints.
const (
	ScopeUniverse uint8 = 0
	ScopeLink     uint8 = 253
	ScopeHost     uint8 = 254
)

// Neigh is an IPv4 neighbour (ARP) entry.
type Neigh struct {
	Dev       string
	IP        netip.Addr
	MAC       net.HardwareAddr
	Permanent bool
}

// FDB is a forwarding-database entry on a VXLAN device: frames for MAC go to Dst.
type FDB struct {
	Dev       string
	MAC       net.HardwareAddr
	Dst       netip.Addr // invalid for entries without a remote (the device's own addresses)
	Permanent bool
}

// NAT is what exists of nftables table "ip weft" (see the package doc, "The nftables
// table"). Every chain is nil when absent.
type NAT struct {
	Table bool
	// Chain is the chain "postrouting" (masquerading).
	Chain *NATChain
	// Prerouting and Output are the raw chains "prerouting" and "output" (notrack).
	Prerouting *RawChain
	Output     *RawChain
	// HostPortsPrerouting and HostPortsOutput are the dstnat chains "hostports-prerouting"
	// and "hostports-output" (hostPort DNAT, for traffic from elsewhere and from the node).
	HostPortsPrerouting *HostPortChain
	HostPortsOutput     *HostPortChain
}

// ChainHeader is a chain's type, hook, priority and policy as read from the kernel.
type ChainHeader struct {
	Type     string // "nat" or "filter"
	Hook     string // "prerouting", "output", "postrouting", or the hook number for another one
	Priority int    // -300 (raw), -100 (dstnat), 100 (srcnat)
	Policy   string // "accept" or "drop"
}

// NATChain describes weft's postrouting chain (nat, srcnat).
type NATChain struct {
	ChainHeader
	// Rules has one entry per rule in the chain, in chain order.
	Rules []NATRule
}

// NATRule is one rule of the postrouting chain as weft reads it: exactly one field is set
// for a rule that is exactly one of weft's, none for any other rule.
type NATRule struct {
	// Masquerade is the cluster CIDR of weft's masquerade rule for it.
	Masquerade netip.Prefix
	// Hairpin is the bridge of weft's same-bridge rule for it: `iifname B oifname B ct
	// status dnat masquerade`.
	Hairpin string
	// HairpinPod is the pod of weft's pod-to-itself rule for it: `ip saddr P ip daddr P
	// ct status dnat masquerade`.
	HairpinPod netip.Addr
}

// RawChain describes one of weft's raw chains, prerouting and output, which exempt the
// overlay's outer (VXLAN) packets from connection tracking.
type RawChain struct {
	ChainHeader // filter, prerouting or output, raw
	// Rules has one entry per rule in the chain: the UDP port of a rule that is exactly
	// weft's notrack rule, 0 for any other rule.
	Rules []int
}

// HostPortChain describes one of weft's hostPort chains, hostports-prerouting and
// hostports-output.
type HostPortChain struct {
	ChainHeader // nat, prerouting or output, dstnat
	// Rules has one entry per rule in the chain: the mapping of a rule that is exactly
	// weft's DNAT rule for it, the zero HostPort for any other rule.
	Rules []HostPort
}

// The chains weft installs: type nat hook postrouting priority srcnat policy accept, type
// filter hook prerouting/output priority raw policy accept, and type nat hook
// prerouting/output priority dstnat policy accept.
const (
	natChainName     = "postrouting"
	natChainType     = "nat"
	natChainHook     = "postrouting"
	natChainPriority = 100
	natChainPolicy   = "accept"

	rawPreroutingName = "prerouting"
	rawOutputName     = "output"
	rawChainType      = "filter"
	rawChainPriority  = -300
	rawChainPolicy    = "accept"

	hostPortsPreroutingName = "hostports-prerouting"
	hostPortsOutputName     = "hostports-output"
	hostPortsChainType      = "nat"
	hostPortsChainPriority  = -100
	hostPortsChainPolicy    = "accept"
)

// ours reports whether an FDB entry is one weft manages: a permanent unicast entry with a
// remote. The kernel lists others on the device too (its own MAC and multicast addresses,
// without a remote); an all-zeros entry would be a flood (BUM) destination, which weft
// never makes and leaves alone.
func (f FDB) ours() bool {
	return f.Permanent && f.Dst.IsValid() && unicastMAC(f.MAC)
}

func unicastMAC(mac net.HardwareAddr) bool {
	if len(mac) != 6 || mac[0]&1 != 0 {
		return false
	}
	for _, b := range mac {
		if b != 0 {
			return true
		}
	}
	return false
}
