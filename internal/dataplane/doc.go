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
// # The nftables table
//
// Table "ip weft" is weft's alone and is rebuilt whole, in one transaction, whenever one of
// its three chains differs from weft's. Pod traffic that leaves the cluster CIDR is
// masqueraded by the one rule of chain "postrouting"; traffic between pods is never
// translated. That nat chain switches connection tracking on for every packet of the
// namespace, including the outer UDP packets of weft's own tunnel, which nobody translates:
// tracking them only costs throughput. So chains "prerouting" and "output" (priority raw,
// before conntrack) each hold one rule, `udp dport <VXLAN port> notrack`. The pod packets
// inside the tunnel stay tracked, as kube-proxy's Service NAT needs; a host firewall must
// accept the VXLAN port by port, since untracked packets never match `ct state established`.
package dataplane
