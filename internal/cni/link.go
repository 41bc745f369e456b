package cni

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
)

// HostVethName is the name of the host end of the veth for one attachment: "veth" and 11
// hex digits of sha256(containerID/ifName), 15 characters, the most a Linux interface name
// holds. Being derived from the attachment, DEL finds the veth without any state, even when
// the pod's network namespace is already gone.
func HostVethName(containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "/" + ifName))
	return "veth" + hex.EncodeToString(sum[:])[:11]
}

// podRoute is one route weft puts into a pod: to Dst via GW, or on-link when GW is not valid.
type podRoute struct {
	Dst netip.Prefix
	GW  netip.Addr
}

func (r podRoute) String() string {
	if !r.GW.IsValid() {
		return r.Dst.String() + " scope link"
	}
	return r.Dst.String() + " via " + r.GW.String()
}

// podRoutes are the routes a pod with this gateway and cluster CIDR gets, in the order they
// must be added: the gateway on-link first (it may lie outside the pod's block), then the
// cluster CIDR and the default route through it.
func podRoutes(gw netip.Addr, cluster netip.Prefix) []podRoute {
	return []podRoute{
		{Dst: netip.PrefixFrom(gw, gw.BitLen())},
		{Dst: cluster.Masked(), GW: gw},
		{Dst: netip.PrefixFrom(netip.IPv4Unspecified(), 0), GW: gw},
	}
}

// configurePod gives the pod end of the veth its address and routes and brings it up. It
// runs inside the pod's network namespace.
func configurePod(link netlink.Link, addr netip.Prefix, routes []podRoute) error {
	if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: ipNet(addr)}); err != nil {
		return fmt.Errorf("adding %s to %s: %w", addr, link.Attrs().Name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bringing %s up: %w", link.Attrs().Name, err)
	}
	for _, r := range routes {
		nr := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: ipNet(r.Dst)}
		if r.GW.IsValid() {
			nr.Gw = r.GW.AsSlice()
		} else {
			nr.Scope = netlink.SCOPE_LINK
		}
		if err := netlink.RouteAdd(nr); err != nil {
			return fmt.Errorf("adding route %s dev %s: %w", r, link.Attrs().Name, err)
		}
	}
	return nil
}

// errNoBridge: the lease names a bridge that this namespace does not have.
var errNoBridge = errors.New("bridge not found")

// attachHost enslaves the host end of the veth to the bridge, turns hairpin mode on (so a pod
// reaches itself through a service address) and makes sure it is up.
func attachHost(hostVeth, bridge string) error {
	br, err := netlinksafe.LinkByName(bridge)
	if err != nil {
		if isNotFound(err) {
			return fmt.Errorf("%w: %q", errNoBridge, bridge)
		}
		return fmt.Errorf("looking up bridge %q: %w", bridge, err)
	}
	if _, ok := br.(*netlink.Bridge); !ok {
		return fmt.Errorf("%q is a %s, not a bridge", bridge, br.Type())
	}
	link, err := netlinksafe.LinkByName(hostVeth)
	if err != nil {
		return fmt.Errorf("looking up %s: %w", hostVeth, err)
	}
	if err := netlink.LinkSetMaster(link, br); err != nil {
		return fmt.Errorf("attaching %s to bridge %s: %w", hostVeth, bridge, err)
	}
	if err := netlink.LinkSetHairpin(link, true); err != nil {
		return fmt.Errorf("turning on hairpin mode on %s: %w", hostVeth, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bringing %s up: %w", hostVeth, err)
	}
	return nil
}

// deleteVeth deletes the veth named name in the current namespace, which takes its peer
// with it. A missing link is not an error, and a link of that name that is not a veth is
// left alone: weft never made it.
func deleteVeth(name string) error {
	link, err := netlinksafe.LinkByName(name)
	if err != nil {
		if isNotFound(err) {
			return nil
		}
		return fmt.Errorf("looking up %s: %w", name, err)
	}
	if _, ok := link.(*netlink.Veth); !ok {
		return nil
	}
	if err := netlink.LinkDel(link); err != nil {
		return fmt.Errorf("deleting %s: %w", name, err)
	}
	return nil
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	ones, bits := n.Mask.Size()
	if !ok || bits == 0 {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a.Unmap(), ones), true
}
