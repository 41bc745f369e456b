// Package fastpath is weft's BPF fast path for pod-to-pod traffic.
//
// # Why
//
// Without it a pod's packet crosses the node's bridge, the IP stack and netfilter on each
// node it passes. The nat chains that masquerading and kube-proxy's Services need switch
// connection tracking on for every packet of the namespace, and br_netfilter passes even
// bridged packets between two pods of one node through it. That costs 6-20 % of a TCP
// stream's throughput here (BENCHMARKS.md), and it buys nothing for the packets of a plain
// connection between two pods, which nobody translates.
//
// # What it does
//
// Two tc programs (bpf/fastpath.c), on the ingress of each pod veth's host end (from_pod)
// and of the VXLAN device (from_tunnel), hand such packets straight on:
//
//   - to a pod of this node: bpf_redirect_peer into the pod's namespace, past the bridge,
//     routing and netfilter. A packet the pod sent to another pod's MAC (one block,
//     bridged) goes as it is; a routed one (from the gateway's MAC, or out of the tunnel)
//     gets the MACs of the kernel's FIB and neighbour lookup and its TTL one less. When the
//     kernel has no neighbour entry for the pod yet, bpf_redirect_neigh sends the packet
//     out of the bridge and lets the kernel resolve it, still past netfilter.
//   - to a pod of another node: the FIB lookup resolves weft's route and permanent
//     neighbour entry (package dataplane's VXLAN scheme), and bpf_redirect hands the packet
//     to the VXLAN device, which encapsulates it as before.
//
// Everything else takes the normal path unchanged (TC_ACT_OK): anything but IPv4 TCP and
// UDP without options or fragments (ICMP included), packets for addresses that are not
// local pods or remote blocks (Service addresses, the node, the outside world), and the
// packets of every connection netfilter translates. The programs look each candidate
// packet up in the kernel's connection tracking table (the bpf_skb_ct_lookup kfunc) and
// leave it alone when its connection has source or destination NAT. That is what keeps
// Services working: the client's packets go to a Service address and so take the normal
// path, where kube-proxy's DNAT makes the entry; the backend's replies come back as pod to
// pod, find that entry, and go to netfilter, which un-DNATs them. Host ports (weft's own
// DNAT) and masquerading work the same way. Connections the fast path carries get no
// tracking entry at all.
//
// So the fast path only shortens the path of packets the normal path would deliver
// unchanged. What it skips is netfilter's filtering of pod-to-pod packets: a rule in the
// node's FORWARD chain (a NetworkPolicy enforcer working there, say) does not see them.
// Such a node runs the agent with --fast-path=false.
//
// # How it is kept
//
// The agent loads the programs (Load) and reconciles them like the rest of the dataplane
// (Syncer): the program on the VXLAN device and on every veth of the bridge, the map of
// local pods (address -> host veth, from IPAM's leases and api.HostVethName) and the
// node's devices. Filters are classic clsact filters, which outlive the agent: during an
// agent restart the old programs keep working, and the new agent replaces them in place.
// A kernel without BPF, BTF or the conntrack kfuncs fails Load with ErrUnsupported and the
// agent runs without the fast path. The compiled object (fastpath.o, `make bpf`) is
// committed, so building weft needs no clang.
package fastpath
