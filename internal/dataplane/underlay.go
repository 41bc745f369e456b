package dataplane

import (
	"cmp"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ErrNoUnderlay is wrapped by UnderlayLink and DefaultUnderlayIP when the namespace has no
// suitable interface or address.
var ErrNoUnderlay = errors.New("no underlay")

// VTEPMAC returns the VXLAN MAC of the node named node: the first six bytes of the SHA-256
// of the name, made locally administered and unicast. Every node computes every other
// node's MAC the same way, and it survives restarts. Never change the derivation: nodes of
// different versions must agree on it.
func VTEPMAC(node string) net.HardwareAddr { return nodeMAC(node) }

// BridgeMAC is the stable MAC of a node's bridge, derived like VTEPMAC but distinct from it.
func BridgeMAC(node string) net.HardwareAddr { return nodeMAC("bridge/" + node) }

func nodeMAC(s string) net.HardwareAddr {
	sum := sha256.Sum256([]byte(s))
	mac := net.HardwareAddr(sum[:6])
	mac[0] = mac[0]&^0x01 | 0x02 // unicast, locally administered
	return mac
}

// MTUFor is the MTU of the bridge, the VXLAN device and the pods on an underlay of the given
// MTU: what is left after the VXLAN encapsulation.
func MTUFor(underlayMTU int) int { return underlayMTU - VXLANOverhead }

// UnderlayLink returns the name and MTU of the interface holding ip in the current network
// namespace.
func UnderlayLink(ip netip.Addr) (name string, mtu int, err error) {
	ip = ip.Unmap()
	addrs, err := dump("addresses", func() ([]netlink.Addr, error) {
		return netlink.AddrList(nil, netlink.FAMILY_ALL)
	})
	if err != nil {
		return "", 0, err
	}
	for _, a := range addrs {
		if addrFrom(a.IP) != ip {
			continue
		}
		l, err := netlink.LinkByIndex(a.LinkIndex)
		if err != nil {
			return "", 0, fmt.Errorf("looking up the interface holding %s: %w", ip, err)
		}
		return l.Attrs().Name, l.Attrs().MTU, nil
	}
	return "", 0, fmt.Errorf("%w: no interface holds %s: configure the node's underlay IP to an address of one of its interfaces (or leave it empty to use DefaultUnderlayIP)",
		ErrNoUnderlay, ip)
}

// DefaultUnderlayIP picks the node's underlay address: the IPv4 source of the default route
// (its preferred source, else the first global IPv4 address of its interface), else the
// first global IPv4 address on an up, non-loopback interface. weft's own bridge and VXLAN
// device are never chosen.
func DefaultUnderlayIP() (netip.Addr, error) {
	links, err := dump("links", netlink.LinkList)
	if err != nil {
		return netip.Addr{}, err
	}
	slices.SortFunc(links, func(a, b netlink.Link) int { return cmp.Compare(a.Attrs().Index, b.Attrs().Index) })
	byIndex := map[int]netlink.Link{}
	for _, l := range links {
		byIndex[l.Attrs().Index] = l
	}
	usable := func(l netlink.Link) bool {
		a := l.Attrs()
		return a.Flags&net.FlagUp != 0 && a.Flags&net.FlagLoopback == 0 &&
			a.Name != BridgeName && a.Name != VXLANName
	}
	firstGlobal := func(l netlink.Link) (netip.Addr, error) {
		addrs, err := dump("addresses of "+l.Attrs().Name, func() ([]netlink.Addr, error) {
			return netlink.AddrList(l, netlink.FAMILY_V4)
		})
		if err != nil {
			return netip.Addr{}, err
		}
		for _, a := range addrs {
			if ip := addrFrom(a.IP); ip.Is4() && a.Scope == int(netlink.SCOPE_UNIVERSE) {
				return ip, nil
			}
		}
		return netip.Addr{}, nil
	}

	routes, err := dump("routes", func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return netip.Addr{}, err
	}
	var defaults []netlink.Route
	for _, r := range routes {
		if p, ok := prefixFrom(r.Dst, true); r.Dst == nil || (ok && p.Bits() == 0) {
			defaults = append(defaults, r)
		}
	}
	slices.SortStableFunc(defaults, func(a, b netlink.Route) int { return cmp.Compare(a.Priority, b.Priority) })
	for _, r := range defaults {
		if src := addrFrom(r.Src); src.Is4() {
			return src, nil
		}
		index := r.LinkIndex
		if index == 0 && len(r.MultiPath) > 0 {
			index = r.MultiPath[0].LinkIndex
		}
		if l, ok := byIndex[index]; ok && usable(l) {
			ip, err := firstGlobal(l)
			if err != nil || ip.IsValid() {
				return ip, err
			}
		}
	}
	for _, l := range links {
		if !usable(l) {
			continue
		}
		ip, err := firstGlobal(l)
		if err != nil || ip.IsValid() {
			return ip, err
		}
	}
	return netip.Addr{}, fmt.Errorf("%w: no IPv4 default route and no global IPv4 address on an up interface: configure the node's network, or set the underlay IP explicitly",
		ErrNoUnderlay)
}
