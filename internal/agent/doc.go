// Package agent is the weft node agent. It wires the parts together, with data flowing one
// way: cluster state (gossip) and the node's own blocks (IPAM) make the desired node state,
// which the dataplane reconciles into the kernel — on every change and on a timer, so a
// route deleted by hand is back within one resync period. It also serves the local API on
// a root-only unix socket for weft-cni and the CLI.
//
// A restart never drops traffic: the agent adopts the kernel state it finds, does not
// announce a leave when it stops, and only deletes kernel entries once it has heard the
// cluster's state (after its first successful join, or after a grace period when no peer
// answers).
package agent
