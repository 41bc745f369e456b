package cni

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

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

// podHandle opens a netlink socket in the pod's network namespace: the namespace is
// entered only to create the socket, and every later call on the handle acts in the pod
// from whatever thread makes it.
func podHandle(podNS ns.NetNS) (netlinksafe.Handle, error) {
	var h netlinksafe.Handle
	err := podNS.Do(func(ns.NetNS) error {
		var err error
		h, err = netlinksafe.NewHandle(unix.NETLINK_ROUTE)
		return err
	})
	return h, err
}

// errPodIfExists: the pod's interface name was taken when the veth was created.
var errPodIfExists = errors.New("the pod interface name is taken")

// makeVeth creates the pod's veth in one netlink request: the host end hostName in the
// current namespace, up and on the bridge with index bridge, and the pod end ifName
// directly in the pod's namespace (creating it there spares the namespace move, which
// waits for an RCU grace period), both with mtu. Then it turns hairpin mode on for the
// host end, so a pod reaches itself through a service address. A veth named hostName left
// by an earlier ADD of the same attachment that did not finish (the name is derived from
// the attachment) is replaced once. It returns both ends as the kernel made them.
func makeVeth(podNS ns.NetNS, pod netlinksafe.Handle, hostName, ifName string, mtu, bridge int) (host, podIf netlink.Link, err error) {
	veth := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: hostName, MTU: mtu, TxQLen: -1, MasterIndex: bridge, Flags: net.FlagUp},
		PeerName:  ifName, PeerTxQLen: -1, PeerNamespace: netlink.NsFd(int(podNS.Fd())),
	}
	err = netlink.LinkAdd(veth)
	if errors.Is(err, unix.EEXIST) {
		if _, perr := pod.LinkByName(ifName); perr == nil {
			return nil, nil, fmt.Errorf("%w: %s", errPodIfExists, ifName)
		}
		if derr := deleteVeth(hostName); derr != nil {
			return nil, nil, fmt.Errorf("creating veth %s: %w; replacing a stale one: %w", hostName, err, derr)
		}
		err = netlink.LinkAdd(veth)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("creating veth %s (pod end %s): %w", hostName, ifName, err)
	}
	defer func() {
		if err != nil {
			_ = deleteVeth(hostName)
		}
	}()
	if host, err = netlinksafe.LinkByName(hostName); err != nil {
		return nil, nil, fmt.Errorf("looking up %s: %w", hostName, err)
	}
	if err = netlink.LinkSetHairpin(host, true); err != nil {
		return nil, nil, fmt.Errorf("turning on hairpin mode on %s: %w", hostName, err)
	}
	if podIf, err = pod.LinkByName(ifName); err != nil {
		return nil, nil, fmt.Errorf("looking up %s in the pod: %w", ifName, err)
	}
	return host, podIf, nil
}

// configurePod gives the pod end of the veth its address and routes and brings it up,
// through a netlink handle in the pod's namespace.
func configurePod(pod netlinksafe.Handle, link netlink.Link, addr netip.Prefix, routes []podRoute) error {
	if err := pod.AddrAdd(link, &netlink.Addr{IPNet: ipNet(addr)}); err != nil {
		return fmt.Errorf("adding %s to %s: %w", addr, link.Attrs().Name, err)
	}
	if err := pod.LinkSetUp(link); err != nil {
		return fmt.Errorf("bringing %s up: %w", link.Attrs().Name, err)
	}
	for _, r := range routes {
		nr := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: ipNet(r.Dst)}
		if r.GW.IsValid() {
			nr.Gw = r.GW.AsSlice()
		} else {
			nr.Scope = netlink.SCOPE_LINK
		}
		if err := pod.RouteAdd(nr); err != nil {
			return fmt.Errorf("adding route %s dev %s: %w", r, link.Attrs().Name, err)
		}
	}
	return nil
}

// errNoBridge: the lease names a bridge that this namespace does not have.
var errNoBridge = errors.New("bridge not found")

// findBridge returns the index of the bridge the pod's host end goes on.
func findBridge(name string) (int, error) {
	br, err := netlinksafe.LinkByName(name)
	if err != nil {
		if isNotFound(err) {
			return 0, fmt.Errorf("%w: %q", errNoBridge, name)
		}
		return 0, fmt.Errorf("looking up bridge %q: %w", name, err)
	}
	if _, ok := br.(*netlink.Bridge); !ok {
		return 0, fmt.Errorf("%q is a %s, not a bridge", name, br.Type())
	}
	return br.Attrs().Index, nil
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
