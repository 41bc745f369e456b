package health

import (
	"fmt"
	"strings"

	"github.com/weftnet/weft/internal/api"
	"github.com/weftnet/weft/internal/dataplane"
)

// Path names, in the order Monitor reports them.
const (
	PathUnderlay      = "underlay"
	PathUnderlayLarge = "underlay-large"
	PathOverlay       = "overlay"
	PathOverlayLarge  = "overlay-large"
)

// Input is everything Classify looks at for one peer.
type Input struct {
	Gossip  string           // alive, suspect, dead, left, unknown
	Missing []string         // this node's kernel entries for the peer that are absent
	Paths   []api.PathHealth // by Path name; absent or Sent == 0: not probed yet
}

func (in Input) path(name string) (api.PathHealth, bool) {
	for _, p := range in.Paths {
		if p.Path == name && p.Sent > 0 {
			return p, true
		}
	}
	return api.PathHealth{}, false
}

// refused reports a probe answered by ICMP port unreachable: the host is there, the
// agent is not.
func refused(p api.PathHealth) bool { return p.Failing && strings.Contains(p.Error, "refused") }

// Classify names the cause of a peer's trouble (one of api.Health*) and says what was seen.
func Classify(in Input) (cause, detail string) {
	switch in.Gossip {
	case "dead", "left":
		return api.HealthPeerDown, "gossip declares it " + in.Gossip
	}
	u, uok := in.path(PathUnderlay)
	o, ook := in.path(PathOverlay)
	if uok && refused(u) {
		return api.HealthPeerDown, "its host answers but no agent listens (probe refused)"
	}
	if len(in.Missing) > 0 {
		return api.HealthMissingKernel, "absent from this node's kernel: " + strings.Join(in.Missing, "; ")
	}
	if ook && o.Failing && strings.Contains(o.Error, "no route") {
		return api.HealthMissingKernel, o.Error // the entry vanished between two kernel checks
	}
	if !uok || !ook {
		return api.HealthUnknown, "not probed yet"
	}
	if u.Failing {
		if o.Failing && in.Gossip == "suspect" {
			return api.HealthPeerDown, "nothing answers and gossip suspects it"
		}
		if o.Failing {
			return api.HealthUnderlayBroken, fmt.Sprintf("nothing answers on the underlay (%s) or the overlay, though gossip sees it alive", u.Error)
		}
		return api.HealthUnderlayBroken, fmt.Sprintf("underlay probe lost (%s) while the overlay answers", u.Error)
	}
	if o.Failing {
		return api.HealthVXLANBlocked, fmt.Sprintf("the underlay answers, the overlay does not (%s): is UDP %d blocked between the nodes?", o.Error, dataplane.VXLANPort)
	}
	for _, name := range []string{PathOverlayLarge, PathUnderlayLarge} {
		if l, ok := in.path(name); ok && l.Failing {
			return api.HealthMTUBlackhole, fmt.Sprintf("small probes pass, %d-byte %s probes with DF are lost (%s)", l.Size, strings.TrimSuffix(name, "-large"), l.Error)
		}
	}
	return api.HealthOK, ""
}

// Summary sums up the causes of all peers for Status.Health: "ok", or e.g.
// "node2 vxlan-blocked, node3 peer-down".
func Summary(peers []api.Peer) string {
	var bad []string
	probed := false
	for _, p := range peers {
		if p.Health == "" {
			continue
		}
		probed = true
		if p.Health != api.HealthOK {
			bad = append(bad, p.Name+" "+p.Health)
		}
	}
	switch {
	case len(bad) > 0:
		return strings.Join(bad, ", ")
	case probed || len(peers) == 0:
		return api.HealthOK
	}
	return ""
}
