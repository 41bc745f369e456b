// Package lab builds a weft cluster of simulated nodes on one machine, out of network
// namespaces, so weft can be tried and tested end to end without a Kubernetes cluster.
//
// A lab named N (default "weft-lab") consists of:
//
//   - the underlay: namespace "N-underlay" holding a bridge "ul0";
//   - nodes node1..nodeK: namespace "N-node<i>", joined to ul0 by a veth whose node end is
//     "eth0" with address 198.18.0.0+i/15 (RFC 2544 benchmarking space, MTU 1500), and a
//     real `weft agent` started inside the namespace;
//   - pods: namespace "N-node<i>-<pod>", wired by the real weft-cni plugin called through
//     libcni from inside the node's namespace, exactly as a container runtime would.
//
// Nothing is linked to the root namespace and no namespace has a route to the outside:
// all lab traffic stays between the lab's namespaces. The namespaces are bind-mounted
// under /run/netns, so `ip netns list` shows them and `ip netns exec` works on them.
//
// State lives in a directory (default /run/N): lab.json (nodes, agent pids, pods and
// their addresses), the gossip key, the shared claims directory, and one directory per
// node with the agent's log, state, socket and CNI configuration. Separate invocations
// of the CLI find a lab again with Load. Down removes everything the lab made, also for a
// half-built lab or when lab.json is lost, by falling back to the namespace names the lab
// owns by construction.
//
// Check probes reachability with ICMP echo from every pod and every node to every pod
// and returns a Matrix.
//
// One thing a lab cannot keep to its namespaces: the kernel's IPv4 neighbour table is
// shared by all namespaces, with its limits set in the root namespace. A large lab (about
// nodes x pods-per-node^2 entries) would overflow the default limit of 1024, so Up raises
// net.ipv4.neigh.default.gc_thresh2/3 by what the lab needs when it needs more than half
// of it, and Down restores them.
package lab
