// Package api is the agent's local API: the wire types, the errors, and the client that
// weft-cni and the weft CLI use to reach the agent on its root-only unix socket. The agent
// serves it with package apiserver; this package stays free of net/http, so that weft-cni,
// started once per pod, starts fast.
//
// The API is deliberately small: the CNI plugin asks the agent for an address (ADD), gives
// it back (DEL), verifies it (CHECK), reconciles leases against the runtime's list (GC) and
// asks whether the node is ready (STATUS). Everything is JSON over HTTP on a unix socket, so
// `curl --unix-socket /run/weft/weft.sock http://weft/v1/status` works for a person too.
package api

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"time"
)

// DefaultSocket is where the agent listens and where weft-cni looks by default.
const DefaultSocket = "/run/weft/weft.sock"

// Attachment names one pod interface the way the CNI spec does: container ID + interface.
type Attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// AddRequest asks the agent for a pod address.
type AddRequest struct {
	Attachment
	Netns        string `json:"netns,omitempty"`
	PodNamespace string `json:"podNamespace,omitempty"`
	PodName      string `json:"podName,omitempty"`
	// PortMappings are the pod's hostPorts (the CNI capability "portMappings"): the agent
	// forwards each host port on the node's addresses to the pod.
	PortMappings []PortMapping `json:"portMappings,omitempty"`
}

// PortMapping is one hostPort, as the CNI capability "portMappings" describes it.
type PortMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"` // tcp, udp or sctp
	// HostIP limits the mapping to one address of the node; the zero Addr (or 0.0.0.0)
	// means all of them.
	HostIP netip.Addr `json:"hostIP,omitzero"`
}

// Validate reports what is wrong with m, in words that name the fix.
func (m PortMapping) Validate() error {
	switch {
	case m.HostPort < 1 || m.HostPort > 65535:
		return fmt.Errorf("hostPort %d is not a port: use 1 to 65535", m.HostPort)
	case m.ContainerPort < 1 || m.ContainerPort > 65535:
		return fmt.Errorf("containerPort %d is not a port: use 1 to 65535", m.ContainerPort)
	case m.Protocol != "tcp" && m.Protocol != "udp" && m.Protocol != "sctp":
		return fmt.Errorf("protocol %q of hostPort %d: use tcp, udp or sctp", m.Protocol, m.HostPort)
	case m.HostIP.IsValid() && !m.HostIP.Is4():
		return fmt.Errorf("hostIP %s of hostPort %d: weft forwards IPv4 only; leave hostIP empty or give an IPv4 address of the node", m.HostIP, m.HostPort)
	case m.HostIP.IsLoopback():
		return fmt.Errorf("hostIP %s of hostPort %d: host ports on loopback addresses are not supported (see CVE-2020-8558); leave hostIP empty or give an address of the node's interfaces", m.HostIP, m.HostPort)
	}
	return nil
}

// Lease is what the agent hands out for one attachment: everything the plugin needs to
// wire the pod interface.
type Lease struct {
	Attachment
	// Address is the pod address with its block's prefix length, e.g. 10.32.0.5/26.
	Address netip.Prefix `json:"address"`
	// Gateway is the node's address on the bridge; pods route through it.
	Gateway netip.Addr `json:"gateway"`
	// ClusterCIDR gets an explicit route in the pod, so pod-to-pod traffic leaves through
	// weft's interface even when another interface holds the default route.
	ClusterCIDR netip.Prefix `json:"clusterCIDR"`
	Bridge      string       `json:"bridge"`
	MTU         int          `json:"mtu"`
}

// GCRequest lists the attachments the runtime still considers valid; the agent frees every
// other lease it holds.
type GCRequest struct {
	Valid []Attachment `json:"valid"`
}

// GCResponse reports what GC freed.
type GCResponse struct {
	Released []Attachment `json:"released"`
}

// Status is the agent's view of its node and the cluster.
type Status struct {
	Node        string       `json:"node"`
	Version     string       `json:"version"`
	Ready       bool         `json:"ready"`
	Reason      string       `json:"reason,omitempty"` // why not ready
	Underlay    netip.Addr   `json:"underlay"`
	ClusterCIDR netip.Prefix `json:"clusterCIDR"`
	Gateway     netip.Addr   `json:"gateway"`
	MTU         int          `json:"mtu"`
	Blocks      []BlockUsage `json:"blocks"`
	Peers       []Peer       `json:"peers"`
	// LastReconcile is when the dataplane was last reconciled; Drift counts kernel changes
	// the reconciler made since start (routes deleted by hand and put back, and so on).
	LastReconcile time.Time `json:"lastReconcile"`
	Reconciles    uint64    `json:"reconciles"`
	Drift         uint64    `json:"drift"`
	// Goroutines is the agent's goroutine count, for leak checks (tests, `weft status --json`).
	Goroutines int `json:"goroutines,omitzero"`
	// Tunnel is the node's overlay address; UnderlayMTU its underlay interface's MTU.
	Tunnel      netip.Addr `json:"tunnel,omitzero"`
	UnderlayMTU int        `json:"underlayMTU,omitzero"`
	// Health sums up the peers' health: "ok", or the causes found ("" when not probing).
	Health string `json:"health,omitempty"`
	// Kernel is the last comparison of wanted and present kernel entries.
	Kernel *KernelStatus `json:"kernel,omitempty"`
	// FastPath says whether the BPF fast path carries pod-to-pod traffic: "on", or "off" or
	// "unavailable" and why.
	FastPath string `json:"fastPath,omitempty"`
	// FastPathPackets counts the packets the fast path has seen, by what it did with them
	// (fastpath.Verdicts).
	FastPathPackets map[string]uint64 `json:"fastPathPackets,omitempty"`
}

// BlockUsage is one address block the node owns.
type BlockUsage struct {
	Block    netip.Prefix `json:"block"`
	Used     int          `json:"used"`
	Capacity int          `json:"capacity"`
}

// Peer is another node as gossip sees it.
type Peer struct {
	Name     string         `json:"name"`
	Underlay netip.Addr     `json:"underlay"`
	State    string         `json:"state"` // alive, suspect, dead, left
	Blocks   []netip.Prefix `json:"blocks"`
	Version  string         `json:"version,omitempty"`

	// The rest is this node's health view of the peer: its own probes over the underlay and
	// through the overlay, and its own kernel entries for the peer (see internal/health).
	Tunnel netip.Addr `json:"tunnel,omitzero"`
	// Health is one of the Health* causes; "" when the agent does not probe.
	Health       string `json:"health,omitempty"`
	HealthDetail string `json:"healthDetail,omitempty"`
	// OverlayRTTMs and UnderlayRTTMs are the last small probe's round trip, 0 if lost.
	OverlayRTTMs  float64 `json:"overlayRTTMs,omitzero"`
	UnderlayRTTMs float64 `json:"underlayRTTMs,omitzero"`
	// LastHeard is the last time any probe of this peer was answered.
	LastHeard time.Time `json:"lastHeard,omitzero"`
	// Paths are the four probe kinds, by name: underlay, underlay-large, overlay,
	// overlay-large.
	Paths []PathHealth `json:"paths,omitempty"`
	// MTU, AddrsUsed and AddrsCapacity are what the peer's echo responder reports.
	MTU           int `json:"mtu,omitzero"`
	AddrsUsed     int `json:"addrsUsed,omitzero"`
	AddrsCapacity int `json:"addrsCapacity,omitzero"`
	// MissingKernelEntries are this node's route, FDB and neighbour entries for the peer
	// that the kernel does not have right now.
	MissingKernelEntries []string `json:"missingKernelEntries,omitempty"`
}

// Health causes, from the most to the least fundamental (see internal/health).
const (
	HealthOK             = "ok"
	HealthUnknown        = "unknown" // not probed yet
	HealthPeerDown       = "peer-down"
	HealthUnderlayBroken = "underlay-broken"
	HealthVXLANBlocked   = "vxlan-blocked"
	HealthMTUBlackhole   = "mtu-blackhole"
	HealthMissingKernel  = "missing-kernel-entry"
)

// PathHealth is one probe kind towards one peer.
type PathHealth struct {
	Path string `json:"path"` // underlay, underlay-large, overlay, overlay-large
	Size int    `json:"size"` // UDP payload bytes, sent with DF set
	// OK: the last probe was answered; Failing: the path is considered broken (two
	// probes lost in a row, or one refused or rejected locally).
	OK      bool    `json:"ok"`
	Failing bool    `json:"failing"`
	RTTMs   float64 `json:"rttMs,omitzero"`
	Sent    uint64  `json:"sent"`
	Lost    uint64  `json:"lost"`
	Error   string  `json:"error,omitempty"` // why the last probe failed
}

// KernelStatus compares the kernel entries the node wants with those it has.
type KernelStatus struct {
	CheckedAt time.Time `json:"checkedAt"`
	// Expected counts the routes, neighbour and FDB entries weft wants (own blocks and,
	// per live peer, one route per block, one neighbour, one FDB entry); Present how many
	// of them the kernel has.
	Expected int `json:"expected"`
	Present  int `json:"present"`
	// Missing are wanted entries the kernel lacks (the reconciler adds them within one
	// resync); Stale are weft's entries that nothing wants (removed once pruning is on);
	// Other are differences on weft's links, addresses, sysctl and nftables table (ip weft).
	Missing []string `json:"missing,omitempty"`
	Stale   []string `json:"stale,omitempty"`
	Other   []string `json:"other,omitempty"`
	Error   string   `json:"error,omitempty"`
}

// HostVethName is the name of the host end of the veth for one attachment: "veth" and 11
// hex digits of sha256(containerID/ifName), 15 characters, the most a Linux interface name
// holds. weft-cni names the veth it makes with it, and the agent finds a pod's veth by it.
// Being derived from the attachment, weft-cni's DEL finds the veth without any state, even when
// the pod's network namespace is already gone.
func HostVethName(containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "/" + ifName))
	return "veth" + hex.EncodeToString(sum[:])[:11]
}
