// Package cni is weft-cni, weft's CNI plugin (spec 1.1.0, and 0.3.1 to 1.0.0 configs).
//
// The plugin holds no state of its own. The agent on the node owns the addresses: ADD asks it
// for a lease over the local API (package api) and wires the pod to the node's bridge with a
// veth, DEL removes the veth and gives the lease back, CHECK compares kernel and lease with
// the ADD result, GC hands the runtime's list of live attachments to the agent, and STATUS
// asks whether the agent is ready. See package dataplane for the network the pod joins.
//
// In the pod, CNI_IFNAME gets the lease's address (with its block's prefix, e.g.
// 10.32.0.5/26) and three routes: the gateway on-link (it may lie outside the pod's block),
// the cluster CIDR via the gateway, and the default route via the gateway. The host end,
// named by api.HostVethName, is a port of the lease's bridge with hairpin mode on.
//
// Every error is a *types.Error whose message says what to do. Codes: 4 bad CNI_* variables,
// 7 bad network config, 8 bad CNI_NETNS, 11 agent unreachable or not ready (the runtime
// retries), 50 STATUS: network not available, and weft's own ErrCodeExhausted,
// ErrCodeInterfaceExists and ErrCodeCheckFailed.
package cni
