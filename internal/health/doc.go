// Package health finds out whether this node reaches every peer, and if not, why.
//
// Every agent runs a small UDP echo responder (Responder, port DefaultPort) and probes
// each peer (Monitor) over two paths: the underlay (to the peer's underlay address) and the
// overlay (to the peer's tunnel address, so the probe is encapsulated by weft-vxlan and
// crosses UDP 6784). Each path is probed with a small payload and a near-MTU one with DF
// set, so a path-MTU black hole shows as "small passes, large is lost". Probing is spread
// over time: one peer per tick, each peer once per Interval (slower when there are many
// peers), never a burst to all peers at once.
//
// Alongside the probes the agent compares the kernel entries it wants for each peer with
// those the kernel had when the last reconcile read it, before repairing anything
// (KernelDiff, on top of dataplane.Plan; Monitor.SetKernel), because a missing route
// explains a failing overlay better than the probe does. Reusing the reconcile's read
// rather than dumping the kernel again is what keeps an idle agent cheap at hundreds of
// peers; the price is that a repaired entry shows as missing for one more resync period.
//
// Classify turns one peer's gossip state, probe results and missing entries into a cause:
//
//	peer-down            gossip declares it dead, or its host refuses the probe (no agent),
//	                     or nothing answers and gossip already suspects it
//	missing-kernel-entry this node's route, neighbour or FDB entry for the peer is absent
//	underlay-broken      the underlay probe is lost while gossip still sees the peer alive
//	vxlan-blocked        the underlay answers, the overlay does not (UDP 6784 dropped?)
//	mtu-blackhole        small probes pass, near-MTU ones are lost
//	ok
//
// A path counts as failing after two probes lost in a row (one lost packet is noise), or
// at once when the probe is refused (ICMP port unreachable) or rejected locally (EMSGSIZE,
// no route). One answered probe clears it.
package health
