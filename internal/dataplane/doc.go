// Package dataplane turns a node's desired network state into kernel state, by
// reconciliation: compute the desired set, read what the kernel has, apply the difference.
// It never flushes at start-up, so an agent restart does not drop traffic.
//
// # The VXLAN scheme
//
// Every node has a bridge named "weft" that its pods attach to by veth, and one VXLAN device
// ("weft-vxlan", learning off) on its underlay interface. The cluster CIDR is cut into
// blocks; a node owns one or more. The first block a node claims is its home block: the
// block's network address is the node's tunnel address (on weft-vxlan, /32) and the first
// usable address is the pod gateway (on the bridge, /32). Each locally owned block gets a
// link route on the bridge, so the host reaches its pods.
//
// For every remote node R the kernel holds exactly:
//
//   - one route per block B of R:      B via R.tunnel dev weft-vxlan onlink
//   - one permanent neighbour entry:  R.tunnel lladdr R.vtepMAC dev weft-vxlan
//   - one permanent FDB entry:         R.vtepMAC dst R.underlay dev weft-vxlan
//
// so a packet for a pod on R is routed to R's tunnel address, whose MAC is known
// statically, and whose MAC maps statically to R's underlay address: the kernel
// encapsulates without any miss notification, and the receiving kernel decapsulates and
// routes to its bridge. Nothing is per pod: kernel state grows with nodes, not pods.
// Node-originated traffic to remote pods leaves with the tunnel address as its source, so
// the reply comes back through the overlay too.
//
// Routes weft installs carry the protocol number RouteProtocol, which is how the
// reconciler tells its own routes from everyone else's. Neighbour and FDB entries on
// weft-vxlan are all weft's.
//
// Deletion is gated: until the agent has heard the cluster's state (Desired.Prune false),
// the reconciler adds and updates but never deletes, so a restarted agent that knows only
// itself does not tear down the routes to every other node.
//
// This is the normal path. Where the kernel can, the agent adds package fastpath on top: BPF
// programs that hand pod-to-pod packets to the other pod's veth or to weft-vxlan directly,
// resolving the next hop through the very routes and neighbour entries described above, and
// leaving every packet netfilter translates to this path.
//
// # The nftables table
//
// Table "ip weft" is weft's alone and is rebuilt whole, in one transaction, whenever one of
// its chains differs from what weft wants (a rule counts as weft's only if its comment and
// its expressions both match; anything added or edited by hand triggers a rebuild). It holds
// five chains, listed in this order:
//
//   - "prerouting" and "output" (filter, priority raw, before conntrack): one rule each,
//     `udp dport <VXLAN port> notrack`. The nat chains below switch connection tracking on
//     for every packet of the namespace, including the outer UDP packets of weft's own
//     tunnel, which nobody translates: tracking them only costs throughput. The pod packets
//     inside the tunnel stay tracked, as kube-proxy's Service NAT needs; a host firewall
//     must accept the VXLAN port by port, since untracked packets never match `ct state
//     established`.
//   - "hostports-prerouting" and "hostports-output" (nat, priority dstnat): Kubernetes'
//     hostPort, what the CNI portmap plugin would do, so weft-cni needs no portmap chained.
//     One DNAT rule per Desired.HostPorts entry, sorted, in both chains: prerouting for
//     connections from elsewhere (other hosts, pods), output for the node's own. A mapping
//     with a HostIP matches `ip daddr <HostIP>`; one without matches every local address
//     (`fib daddr type local`) but 127.0.0.0/8: localhost host ports would need
//     route_localnet, which exposes services bound to localhost to the link
//     (CVE-2020-8558), so, as kube-proxy's nftables mode does for NodePorts, weft leaves
//     localhost alone. Both chains exist even without host ports, so the table's shape never
//     changes.
//   - "postrouting" (nat, priority srcnat): pod traffic that leaves the cluster CIDR is
//     masqueraded (traffic between pods is never translated); then the two hairpin rules
//     host ports need. A pod reaching a host port of a pod on the same bridge gets its
//     connection DNATed back onto the bridge, and would be answered directly, never
//     un-translated: `iifname <bridge> oifname <bridge> ct status dnat masquerade` makes the
//     answer come back through the node where the node routes such packets; where
//     br_netfilter bridges them instead (bridge-nf-call-iptables=1) conntrack un-translates
//     on the bridge and the rule does not match, keeping the client pod's address. (The same
//     goes for a connection kube-proxy DNATs from a pod to a Service endpoint on the same
//     bridge: masqueraded only where it would otherwise fail.) A pod reaching its own host
//     port is answered inside itself on either path, so each pod with a host port also has
//     `ip saddr <pod> ip daddr <pod> ct status dnat masquerade` (its bridge port needs
//     hairpin mode when br_netfilter bridges the packet back to it). Other clients keep
//     their source address.
package dataplane
