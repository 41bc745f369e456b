package health

import (
	"strings"
	"testing"

	"github.com/weftnet/weft/internal/api"
)

func path(name string, failing bool, errText string) api.PathHealth {
	return api.PathHealth{Path: name, Sent: 5, Failing: failing, Error: errText}
}

func healthy() []api.PathHealth {
	return []api.PathHealth{
		path(PathUnderlay, false, ""), path(PathUnderlayLarge, false, ""),
		path(PathOverlay, false, ""), path(PathOverlayLarge, false, ""),
	}
}

// with returns healthy paths with the named ones failing with errText.
func with(errText string, failing ...string) []api.PathHealth {
	ps := healthy()
	for i := range ps {
		for _, f := range failing {
			if ps[i].Path == f {
				ps[i].Failing, ps[i].Error = true, errText
			}
		}
	}
	return ps
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		name   string
		in     Input
		cause  string
		detail string // a substring the detail must contain
	}{
		{"all paths answer", Input{Gossip: "alive", Paths: healthy()}, api.HealthOK, ""},
		{"not probed yet", Input{Gossip: "alive"}, api.HealthUnknown, "not probed"},
		{"gossip dead wins over everything", Input{Gossip: "dead", Paths: with("timeout", PathUnderlay, PathOverlay)}, api.HealthPeerDown, "dead"},
		{"peer left", Input{Gossip: "left", Paths: healthy()}, api.HealthPeerDown, "left"},
		{"probe refused: host up, agent gone", Input{Gossip: "alive", Paths: with("connection refused", PathUnderlay)}, api.HealthPeerDown, "refused"},
		{"own route missing", Input{Gossip: "alive", Missing: []string{"route 10.32.0.64/26"}, Paths: healthy()}, api.HealthMissingKernel, "10.32.0.64/26"},
		{"route vanished between checks", Input{Gossip: "alive", Paths: with("sendto: no route to host", PathOverlay)}, api.HealthMissingKernel, "no route"},
		{"nothing answers, gossip suspects", Input{Gossip: "suspect", Paths: with("timeout", PathUnderlay, PathOverlay)}, api.HealthPeerDown, "suspects"},
		{"nothing answers, gossip alive", Input{Gossip: "alive", Paths: with("timeout", PathUnderlay, PathOverlay)}, api.HealthUnderlayBroken, "gossip sees it alive"},
		{"underlay lost, overlay answers", Input{Gossip: "alive", Paths: with("timeout", PathUnderlay)}, api.HealthUnderlayBroken, "overlay answers"},
		{"overlay lost: vxlan port blocked", Input{Gossip: "alive", Paths: with("timeout", PathOverlay, PathOverlayLarge)}, api.HealthVXLANBlocked, "UDP 6784"},
		{"large overlay lost: MTU black hole", Input{Gossip: "alive", Paths: with("timeout", PathOverlayLarge)}, api.HealthMTUBlackhole, "overlay probes"},
		{"large underlay lost: MTU black hole", Input{Gossip: "alive", Paths: with("timeout", PathUnderlayLarge)}, api.HealthMTUBlackhole, "underlay probes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cause, detail := Classify(tc.in)
			if cause != tc.cause || !strings.Contains(detail, tc.detail) {
				t.Fatalf("Classify = %q, %q; want %q with %q", cause, detail, tc.cause, tc.detail)
			}
		})
	}
}

func TestSummary(t *testing.T) {
	for _, tc := range []struct {
		name  string
		peers []api.Peer
		want  string
	}{
		{"no peers", nil, api.HealthOK},
		{"not probed", []api.Peer{{Name: "a"}}, ""},
		{"all ok", []api.Peer{{Name: "a", Health: api.HealthOK}, {Name: "b", Health: api.HealthOK}}, api.HealthOK},
		{"two bad", []api.Peer{{Name: "a", Health: api.HealthVXLANBlocked}, {Name: "b", Health: api.HealthOK}, {Name: "c", Health: api.HealthPeerDown}},
			"a vxlan-blocked, c peer-down"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Summary(tc.peers); got != tc.want {
				t.Fatalf("Summary = %q, want %q", got, tc.want)
			}
		})
	}
}
