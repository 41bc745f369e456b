package dataplane

import (
	"net"
	"net/netip"
)

// Default names and numbers of weft's kernel objects.
const (
	BridgeName = "weft"
	VXLANName  = "weft-vxlan"
	// VXLANPort is the UDP port of the overlay (the one Weave Net's fast datapath used).
	VXLANPort = 6784
	VNI       = 1
	// VXLANOverhead is what VXLAN over IPv4 adds to a packet: outer IP 20 + UDP 8 +
	// VXLAN 8 + inner Ethernet 14.
	VXLANOverhead = 50
	// RouteProtocol marks routes weft owns (see /etc/iproute2/rt_protos: unassigned).
	RouteProtocol = 0x77
	// NFTTable is the nftables table (family ip) holding weft's rules.
	NFTTable = "weft"
)

// Desired is the complete kernel state one node should have.
type Desired struct {
	Bridge Bridge
	VXLAN  VXLAN
	// Peers are the other live nodes.
	Peers []Peer
	// ClusterCIDR: pod traffic from it to anywhere outside it is masqueraded.
	ClusterCIDR netip.Prefix
	// MTU of the bridge, the VXLAN device and (set by weft-cni) pod veths.
	MTU int
	// HostPorts are the pods' hostPort mappings (CNI capability portMappings): traffic
	// to a local address of the node on the host port goes to the pod.
	HostPorts []HostPort
	// Prune allows deleting kernel entries that are not desired. False until the agent
	// has heard the cluster's state, so a restart never drops routes it simply does not
	// know about yet.
	Prune bool
}

// Bridge is the node's pod bridge.
type Bridge struct {
	Name    string
	Gateway netip.Addr // on the bridge as /32
	// MAC is set explicitly: a bridge otherwise takes the lowest MAC of its ports and
	// changes it when that pod goes, leaving every other pod with a stale gateway entry.
	MAC    net.HardwareAddr
	Blocks []netip.Prefix // blocks this node owns: one link route each on the bridge
}

// VXLAN is the node's VTEP.
type VXLAN struct {
	Name       string
	VNI        int
	Port       int
	UnderlayIP netip.Addr // local VTEP address; also selects the underlay interface
	Underlay   string     // name of the underlay interface (holds UnderlayIP)
	MAC        net.HardwareAddr
	TunnelIP   netip.Addr // on the VXLAN device as /32
}

// Peer is one remote node as the dataplane needs it.
type Peer struct {
	Name       string
	UnderlayIP netip.Addr
	MAC        net.HardwareAddr
	TunnelIP   netip.Addr
	Blocks     []netip.Prefix
}

// HostPort maps a port of the node to a port of a pod on it, like the CNI portmap plugin
// does: Kubernetes' hostPort.
type HostPort struct {
	Protocol string     // "tcp", "udp" or "sctp"
	HostIP   netip.Addr // only this local address; the zero Addr: every local address
	HostPort uint16
	PodIP    netip.Addr
	PodPort  uint16
}
