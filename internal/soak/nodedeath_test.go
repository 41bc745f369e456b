package soak

import (
	"fmt"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/cluster"
	"github.com/weftnet/weft/internal/lab"
)

func setUplink(l *lab.Lab, node string, up bool) error {
	return inNode(l, node, func() error {
		link, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if up {
			return netlink.LinkSetUp(link)
		}
		return netlink.LinkSetDown(link)
	})
}

// TestNodeDeathAndReturn: a node loses its underlay link. Its peers must declare it dead
// within the documented time (cluster.DeadWithin) and remove its route, FDB and neighbour
// entries; when the link comes back the cluster converges, the matrix passes, and its pods kept their
// addresses.
func TestNodeDeathAndReturn(t *testing.T) {
	l := upLab(t, 3, 1)
	const victim = "node2"
	tunnel, err := tunnelOf(l, victim)
	if err != nil {
		t.Fatal(err)
	}
	ul := node(t, l, victim).Underlay.String()
	others := []string{"node1", "node3"}
	entries := func(o string) (int, int, int, error) {
		k, err := snapshot(l, o)
		r, f, n := k.countFor(tunnel, ul)
		return r, f, n, err
	}
	for _, o := range others {
		if r, f, n, err := entries(o); err != nil || r < 1 || f != 1 || n != 1 {
			t.Fatalf("%s before: %d routes, %d FDB, %d neighbours for %s (%v)", o, r, f, n, victim, err)
		}
	}
	addrs := map[string]string{}
	for _, p := range l.Pods() {
		a, err := podAddr(p.Namespace)
		if err != nil {
			t.Fatal(err)
		}
		addrs[p.Namespace] = a.String()
	}
	t.Cleanup(func() { _ = setUplink(l, victim, true) })
	if err := setUplink(l, victim, false); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	ok, note := poll(30*time.Second, func() (bool, string) {
		for _, o := range others {
			r, f, n, err := entries(o)
			if err != nil {
				return false, err.Error()
			}
			if r+f+n != 0 {
				return false, fmt.Sprintf("%s still has %d routes, %d FDB, %d neighbours for %s", o, r, f, n, victim)
			}
		}
		return true, ""
	})
	dead := time.Since(cut)
	if !ok {
		t.Fatalf("30s after %s lost its link: %s", victim, note)
	}
	t.Logf("FIGURE node death: %s's entries gone from its peers %s after its link went down", victim, dead.Round(time.Millisecond))
	if limit := cluster.DeadWithin(len(l.Nodes())); dead > limit || dead < 2*time.Second {
		t.Errorf("peers removed %s after %s, want within the documented %s (and not at once)", victim, dead.Round(time.Millisecond), limit.Round(100*time.Millisecond))
	}
	if err := setUplink(l, victim, true); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	conv := waitCheck(t, l, 60*time.Second, "after the link came back")
	t.Logf("FIGURE node return: matrix passes %s after the link came back", (time.Since(back)).Round(time.Millisecond))
	_ = conv
	for _, o := range others {
		if r, f, n, err := entries(o); err != nil || r < 1 || f != 1 || n != 1 {
			t.Errorf("%s after the return: %d routes, %d FDB, %d neighbours for %s (%v)", o, r, f, n, victim, err)
		}
	}
	for _, p := range l.Pods() {
		a, err := podAddr(p.Namespace)
		if err != nil {
			t.Fatal(err)
		}
		if a.String() != addrs[p.Namespace] {
			t.Errorf("%s/%s: address %s, was %s", p.Node, p.Name, a, addrs[p.Namespace])
		}
	}
}
