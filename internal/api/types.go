// Package api is the agent's local API: the wire types, an HTTP handler the agent serves on
// a root-only unix socket, and the client that weft-cni and the weft CLI use to reach it.
//
// The API is deliberately small: the CNI plugin asks the agent for an address (ADD), gives
// it back (DEL), verifies it (CHECK), reconciles leases against the runtime's list (GC) and
// asks whether the node is ready (STATUS). Everything is JSON over HTTP on a unix socket, so
// `curl --unix-socket /run/weft/weft.sock http://weft/v1/status` works for a person too.
package api

import (
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
}
