package dataplane

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
)

// ErrInvalidDesired is wrapped by every problem Validate reports, and by the reasons in
// Result.Ignored.
var ErrInvalidDesired = errors.New("invalid desired dataplane state")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidDesired}, args...)...)
}

// Validate checks that d describes a state the kernel can hold and the scheme allows: names
// and numbers in range, IPv4 addresses, unicast VTEP MACs, and no block, tunnel address or
// MAC claimed twice. The error lists every problem.
//
// Reconcile is more forgiving about peers, which come from other nodes: it refuses only a
// d whose own part (everything but Peers) is invalid, and leaves out of the plan a
// malformed or conflicting peer, or just the contested block (see Result.Ignored).
func (d Desired) Validate() error {
	_, ignored := d.usablePeers()
	return errors.Join(append([]error{d.validateNode()}, ignored...)...)
}

// validateNode checks everything but Peers.
func (d Desired) validateNode() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, invalid(format, args...)) }

	checkName := func(what, name string) {
		if name == "" || len(name) > 15 {
			bad("%s name %q: must be 1 to 15 characters (a Linux interface name)", what, name)
		}
	}
	checkName("bridge", d.Bridge.Name)
	checkName("VXLAN device", d.VXLAN.Name)
	if d.Bridge.Name == d.VXLAN.Name {
		bad("bridge and VXLAN device are both named %q: give them different names", d.Bridge.Name)
	}
	if d.VXLAN.Underlay == "" || d.VXLAN.Underlay == d.Bridge.Name || d.VXLAN.Underlay == d.VXLAN.Name {
		bad("underlay interface %q: set it to the interface that holds the underlay IP (see UnderlayLink)", d.VXLAN.Underlay)
	}
	if d.VXLAN.VNI < 1 || d.VXLAN.VNI > 1<<24-1 {
		bad("VNI %d: must be 1 to 16777215", d.VXLAN.VNI)
	}
	if d.VXLAN.Port < 1 || d.VXLAN.Port > 65535 {
		bad("VXLAN port %d: must be 1 to 65535", d.VXLAN.Port)
	}
	if d.MTU < 68 || d.MTU > 65535 {
		bad("MTU %d: must be 68 to 65535 (use MTUFor(underlay MTU))", d.MTU)
	}
	for _, err := range []error{
		checkIP("underlay IP", d.VXLAN.UnderlayIP),
		checkIP("tunnel IP", d.VXLAN.TunnelIP),
		checkIP("gateway", d.Bridge.Gateway),
		checkMAC("VTEP MAC", d.VXLAN.MAC),
	} {
		if err != nil {
			errs = append(errs, err)
		}
	}
	if c := d.ClusterCIDR; !c.Addr().Is4() || c.Bits() < 1 || c != c.Masked() {
		bad("cluster CIDR %v: must be an IPv4 network like 10.32.0.0/12", c)
	}
	for _, h := range d.HostPorts {
		if err := CheckHostPort(h, d.VXLAN.Port); err != nil {
			errs = append(errs, err)
		}
	}
	seen := map[netip.Prefix]bool{}
	for _, b := range d.Bridge.Blocks {
		if err := checkBlock(b); err != nil {
			bad("this node's %v", err)
		} else if seen[b] {
			bad("this node lists block %v twice", b)
		}
		seen[b] = true
	}
	return errors.Join(errs...)
}

// CheckHostPort reports what is wrong with a host port mapping on a node whose VXLAN
// device uses vxlanPort, so that the agent can refuse it when a pod asks, rather than fail
// every later reconcile.
func CheckHostPort(h HostPort, vxlanPort int) error {
	if h.HostIP.IsUnspecified() {
		h.HostIP = netip.Addr{} // 0.0.0.0: every address, as Plan reads it
	}
	if err := checkHostPort(h); err != nil {
		return err
	}
	if h.Protocol == "udp" && int(h.HostPort) == vxlanPort {
		return invalid("host port %s: UDP port %d is weft's VXLAN port, whose packets are never tracked and so cannot be translated: give the pod another hostPort",
			hostPortText(h, " -> "), h.HostPort)
	}
	return nil
}

func checkIP(what string, ip netip.Addr) error {
	if !ip.Is4() || ip.IsUnspecified() || ip.IsMulticast() {
		return invalid("%s %v: must be an IPv4 unicast address", what, ip)
	}
	return nil
}

// checkHostPort checks one host port mapping as table ip weft holds it (HostIP unset for
// every address). The error names the mapping and every problem with it.
func checkHostPort(h HostPort) error {
	var why []string
	if _, ok := hostPortProtocols[h.Protocol]; !ok {
		why = append(why, fmt.Sprintf(`protocol %q: must be "tcp", "udp" or "sctp" (lower case)`, h.Protocol))
	}
	if h.HostPort == 0 {
		why = append(why, "host port 0: must be 1 to 65535")
	}
	if h.PodPort == 0 {
		why = append(why, "pod port 0: must be 1 to 65535")
	}
	if !h.PodIP.Is4() || h.PodIP.IsUnspecified() || h.PodIP.IsMulticast() || h.PodIP.IsLoopback() || h.PodIP == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		why = append(why, fmt.Sprintf("pod IP %v: must be the pod's IPv4 address", h.PodIP))
	}
	switch ip := h.HostIP; {
	case !ip.IsValid():
	case ip.IsLoopback():
		// See hostPortExprs: that would need route_localnet (CVE-2020-8558).
		why = append(why, fmt.Sprintf("host IP %v: host ports on loopback addresses are not supported (they would need route_localnet, see CVE-2020-8558): use an address of the node's interfaces, or none for every address", ip))
	case !ip.Is4() || ip.IsUnspecified() || ip.IsMulticast() || ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		why = append(why, fmt.Sprintf("host IP %v: must be an IPv4 unicast address of this node, or unset for every address", ip))
	}
	if len(why) == 0 {
		return nil
	}
	return invalid("host port %s: %s", hostPortText(h, " -> "), strings.Join(why, "; "))
}

func checkMAC(what string, mac net.HardwareAddr) error {
	if !unicastMAC(mac) {
		return invalid("%s %q: must be a 6-byte unicast, non-zero MAC (see VTEPMAC)", what, mac)
	}
	return nil
}

func checkBlock(b netip.Prefix) error {
	if !b.Addr().Is4() || b != b.Masked() {
		return fmt.Errorf("block %v: must be an IPv4 network (host bits zero)", b)
	}
	return nil
}

// usablePeers returns the peers Reconcile plans for, and why it leaves out the others (or
// some of their blocks). Peers are taken in name order, so when two peers claim the same
// name, tunnel IP, VTEP MAC or block, the first by name keeps it, whatever the input order;
// this node's own addresses and blocks are never given to a peer.
func (d Desired) usablePeers() (usable []Peer, ignored []error) {
	peers := slices.SortedStableFunc(slices.Values(d.Peers), func(a, b Peer) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), a.TunnelIP.Compare(b.TunnelIP))
	})
	names := map[string]bool{}
	tunnels := map[netip.Addr]string{d.VXLAN.TunnelIP: "this node"}
	macs := map[string]string{string(d.VXLAN.MAC): "this node"}
	blocks := map[netip.Prefix]string{}
	for _, b := range d.Bridge.Blocks {
		blocks[b] = "this node"
	}
	for _, p := range peers {
		who := fmt.Sprintf("peer %q", p.Name)
		drop := func(err error) { ignored = append(ignored, fmt.Errorf("%s ignored: %w", who, err)) }
		switch {
		case p.Name == "":
			drop(invalid("it has no name: every peer needs its node name"))
		case names[p.Name]:
			drop(invalid("it is listed twice: list each node once"))
		case checkIP("underlay IP", p.UnderlayIP) != nil:
			drop(checkIP("underlay IP", p.UnderlayIP))
		case checkIP("tunnel IP", p.TunnelIP) != nil:
			drop(checkIP("tunnel IP", p.TunnelIP))
		case checkMAC("VTEP MAC", p.MAC) != nil:
			drop(checkMAC("VTEP MAC", p.MAC))
		case p.UnderlayIP == d.VXLAN.UnderlayIP:
			drop(invalid("it has this node's underlay IP %v: two nodes are configured with the same address", p.UnderlayIP))
		case tunnels[p.TunnelIP] != "":
			drop(invalid("%s already has tunnel IP %v: the allocator gave one home block to two nodes", tunnels[p.TunnelIP], p.TunnelIP))
		case macs[string(p.MAC)] != "":
			drop(invalid("%s already has VTEP MAC %v: node names must differ", macs[string(p.MAC)], p.MAC))
		default:
			names[p.Name] = true
			tunnels[p.TunnelIP] = who
			macs[string(p.MAC)] = who
			var kept []netip.Prefix
			for _, b := range p.Blocks {
				if err := checkBlock(b); err != nil {
					ignored = append(ignored, fmt.Errorf("%s: %w", who, invalid("%v; the block is ignored", err)))
				} else if owner := blocks[b]; owner != "" {
					ignored = append(ignored, fmt.Errorf("%s: %w", who, invalid(
						"block %v is ignored: %s claims it too, and the allocator must give it to one node", b, owner)))
				} else {
					blocks[b] = who
					kept = append(kept, b)
				}
			}
			p.Blocks = kept
			usable = append(usable, p)
		}
	}
	return usable, ignored
}
