package health

import (
	"bytes"

	"github.com/weftnet/weft/internal/api"
	"github.com/weftnet/weft/internal/dataplane"
)

// KernelReport is KernelDiff's answer: the node-wide comparison and, per peer name, the
// entries for that peer that are missing.
type KernelReport struct {
	Status      api.KernelStatus
	PeerMissing map[string][]string
}

// KernelDrift is KernelDiff restricted to the missing entries that were already due:
// wanted by due, the desired state of the reconcile before this one (nil: none is due
// yet). An entry the kernel lacks because it is new — a peer that just joined — is the
// reconcile's work in progress, not a fault; one that was wanted before and is still
// absent was taken away, or cannot be put in, and that is what the health report names.
func KernelDrift(d dataplane.Desired, due *dataplane.Desired, read dataplane.Observed) KernelReport {
	r := KernelDiff(d, read)
	wanted := map[string]bool{}
	if due != nil {
		for _, m := range KernelDiff(*due, dataplane.Observed{}).Status.Missing {
			wanted[m] = true
		}
	}
	keep := func(list []string) []string {
		var out []string
		for _, m := range list {
			if wanted[m] {
				out = append(out, m)
			}
		}
		return out
	}
	r.Status.Missing = keep(r.Status.Missing)
	for peer, list := range r.PeerMissing {
		if list = keep(list); len(list) > 0 {
			r.PeerMissing[peer] = list
		} else {
			delete(r.PeerMissing, peer)
		}
	}
	r.Status.Present = max(r.Status.Expected-len(r.Status.Missing), 0)
	return r
}

// KernelDiff compares the desired state with the observed one through dataplane.Plan: every
// add the plan would make is an entry the kernel lacks, every delete (planned as if pruning
// were on) a stale one. It changes nothing.
func KernelDiff(d dataplane.Desired, o dataplane.Observed) KernelReport {
	d.Prune = true
	r := KernelReport{PeerMissing: map[string][]string{}}
	r.Status.Expected = len(d.Bridge.Blocks)
	for _, p := range d.Peers {
		r.Status.Expected += len(dataplane.Aggregate(p.Blocks)) + 2 // routes, neighbour, FDB
	}
	owner := func(match func(p dataplane.Peer) bool) string {
		for _, p := range d.Peers {
			if match(p) {
				return p.Name
			}
		}
		return ""
	}
	missing := func(peer, what string) {
		r.Status.Missing = append(r.Status.Missing, what)
		if peer != "" {
			r.PeerMissing[peer] = append(r.PeerMissing[peer], what)
		}
	}
	for _, op := range dataplane.Plan(d, o) {
		switch op := op.(type) {
		case dataplane.RouteAdd, dataplane.RouteReplace:
			var rt dataplane.Route
			if ra, ok := op.(dataplane.RouteAdd); ok {
				rt = ra.Route
			} else {
				rt = op.(dataplane.RouteReplace).Route
			}
			missing(owner(func(p dataplane.Peer) bool {
				return rt.Gw.IsValid() && p.TunnelIP == rt.Gw // a route may cover several blocks
			}), "route "+rt.String())
		case dataplane.NeighSet:
			ip := op.Neigh.IP
			missing(owner(func(p dataplane.Peer) bool { return p.TunnelIP == ip }), "neighbour "+op.Neigh.IP.String()+" lladdr "+op.Neigh.MAC.String())
		case dataplane.FDBSet:
			mac := op.FDB.MAC
			missing(owner(func(p dataplane.Peer) bool { return bytes.Equal(p.MAC, mac) }), "fdb "+op.FDB.MAC.String()+" dst "+op.FDB.Dst.String())
		case dataplane.RouteDel, dataplane.NeighDel, dataplane.FDBDel:
			r.Status.Stale = append(r.Status.Stale, op.String())
		default:
			r.Status.Other = append(r.Status.Other, op.String())
		}
	}
	r.Status.Present = max(r.Status.Expected-len(r.Status.Missing), 0)
	return r
}
