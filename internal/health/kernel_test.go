package health

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/weftnet/weft/internal/dataplane"
)

func peer(name, under, tunnel string, mac byte) dataplane.Peer {
	t := netip.MustParseAddr(tunnel)
	return dataplane.Peer{Name: name, UnderlayIP: netip.MustParseAddr(under), TunnelIP: t,
		MAC: net.HardwareAddr{2, 0, 0, 0, 0, mac}, Blocks: []netip.Prefix{netip.PrefixFrom(t, 26)}}
}

func desired(peers ...dataplane.Peer) dataplane.Desired {
	return dataplane.Desired{
		Bridge: dataplane.Bridge{Name: dataplane.BridgeName, Gateway: netip.MustParseAddr("10.32.0.1"),
			MAC: net.HardwareAddr{2, 0, 0, 0, 1, 1}, Blocks: []netip.Prefix{netip.MustParsePrefix("10.32.0.0/26")}},
		VXLAN: dataplane.VXLAN{Name: dataplane.VXLANName, VNI: 1, Port: dataplane.VXLANPort,
			UnderlayIP: netip.MustParseAddr("198.18.0.1"), Underlay: "eth0",
			MAC: net.HardwareAddr{2, 0, 0, 0, 1, 2}, TunnelIP: netip.MustParseAddr("10.32.0.0")},
		Peers: peers, ClusterCIDR: netip.MustParsePrefix("10.32.0.0/16"), MTU: 1450, Prune: true,
	}
}

// converged is the kernel after reconciling d on the fake kernel.
func converged(t *testing.T, d dataplane.Desired) dataplane.Observed {
	t.Helper()
	k := &dataplane.FakeKernel{}
	if _, err := dataplane.NewReconciler(k).Reconcile(d); err != nil {
		t.Fatal(err)
	}
	o, _ := k.Observe(dataplane.BridgeName, dataplane.VXLANName)
	return o
}

// TestKernelDrift: only entries that were already due and are absent count as missing;
// a peer that just joined is work in progress.
func TestKernelDrift(t *testing.T) {
	b, c := peer("b", "198.18.0.2", "10.32.0.64", 2), peer("c", "198.18.0.3", "10.32.0.128", 3)
	before, now := desired(b), desired(b, c)
	kernel := converged(t, before) // c's entries are not in yet
	withoutBRoute := converged(t, before)
	withoutBRoute.Routes = slices.DeleteFunc(withoutBRoute.Routes, func(r dataplane.Route) bool { return r.Gw == b.TunnelIP })
	for _, tc := range []struct {
		name    string
		due     *dataplane.Desired
		read    dataplane.Observed
		missing map[string]string // peer -> a word its report must contain
	}{
		{"new peer is not missing", &before, kernel, nil},
		{"nothing due yet", nil, withoutBRoute, nil},
		{"route taken away", &before, withoutBRoute, map[string]string{"b": "route 10.32.0.64/26"}},
		{"still absent a reconcile later", &now, kernel, map[string]string{"c": "10.32.0.128"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := KernelDrift(now, tc.due, tc.read)
			if len(r.PeerMissing) != len(tc.missing) {
				t.Fatalf("missing %v, want peers %v", r.PeerMissing, tc.missing)
			}
			for p, word := range tc.missing {
				if !strings.Contains(strings.Join(r.PeerMissing[p], "; "), word) {
					t.Errorf("peer %s: missing %v, want %q", p, r.PeerMissing[p], word)
				}
			}
			if r.Status.Present != r.Status.Expected-len(r.Status.Missing) {
				t.Errorf("present %d, expected %d, missing %d", r.Status.Present, r.Status.Expected, len(r.Status.Missing))
			}
		})
	}
}
