package lab

// End-to-end tests with the real `weft agent` and weft-cni, built by TestMain.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/api"
	"github.com/weftnet/weft/internal/testutil"
)

// Kernel names and numbers of weft's dataplane (internal/dataplane/doc.go), repeated so
// the lab's plumbing tests do not depend on the dataplane package compiling.
const (
	vxlanDev      = "weft-vxlan"
	routeProtocol = 0x77
)

// upReal brings up a lab with the real binaries and logs how long it took.
func upReal(t *testing.T, nodes, pods int) *Lab {
	t.Helper()
	testutil.RequireRoot(t)
	weft, bins := requireBins(t)
	name, dir := newLab(t)
	start := time.Now()
	l, err := Up(context.Background(), Options{
		Name: name, Dir: dir, Nodes: nodes, PodsPerNode: pods,
		WeftBin: weft, CNIBinDir: bins, Out: testOut(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("TIMING lab up (%d nodes x %d pods): %s", nodes, pods, time.Since(start).Round(time.Millisecond))
	return l
}

// mustCheck runs Check and fails the test on any unreachable pair.
func mustCheck(t *testing.T, l *Lab, what string) Matrix {
	t.Helper()
	m, err := l.Check(context.Background())
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if len(m.Sources) <= 30 {
		t.Logf("%s:\n%s", what, m)
	}
	ok, n := m.Counts()
	t.Logf("TIMING check %s: %d/%d reachable in %s", what, ok, n, m.Elapsed.Round(time.Millisecond))
	if f := m.Failures(); len(f) > 0 {
		for i, x := range f {
			if i == 20 {
				t.Errorf("... and %d more", len(f)-20)
				break
			}
			t.Errorf("%s: %v", what, x)
		}
		t.FailNow()
	}
	return m
}

// vtep is what identifies a node in its peers' kernel state.
type vtep struct {
	tunnel   netip.Addr
	mac      net.HardwareAddr
	underlay netip.Addr
}

func nodeVTEP(t *testing.T, l *Lab, node string) vtep {
	t.Helper()
	n, err := l.node(node)
	if err != nil {
		t.Fatal(err)
	}
	v := vtep{underlay: n.Underlay}
	err = inNodeNS(l, node, func() error {
		link, err := netlink.LinkByName(vxlanDev)
		if err != nil {
			return err
		}
		v.mac = link.Attrs().HardwareAddr
		addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
		if err != nil || len(addrs) == 0 {
			return fmt.Errorf("no address on %s: %v", vxlanDev, err)
		}
		v.tunnel, _ = netip.AddrFromSlice(addrs[0].IP.To4())
		return nil
	})
	if err != nil {
		t.Fatalf("%s: reading its VTEP: %v", node, err)
	}
	return v
}

func inNodeNS(l *Lab, node string, f func() error) error {
	h, err := l.NodeNS(node)
	if err != nil {
		return err
	}
	defer h.Close()
	return h.Do(func(ns.NetNS) error { return f() })
}

// vxlanState counts weft's kernel entries on weft-vxlan in node: routes (protocol
// 0x77), FDB and neighbour entries; with v set, only those pointing at that VTEP.
type vxlanState struct{ routes, fdb, neigh int }

func countVXLAN(l *Lab, node string, v *vtep) (vxlanState, error) {
	var c vxlanState
	err := inNodeNS(l, node, func() error {
		link, err := netlink.LinkByName(vxlanDev)
		if err != nil {
			return err
		}
		idx := link.Attrs().Index
		routes, err := retryDump(func() ([]netlink.Route, error) {
			return netlink.RouteListFiltered(netlink.FAMILY_V4,
				&netlink.Route{Protocol: routeProtocol, LinkIndex: idx}, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_OIF)
		})
		if err != nil {
			return err
		}
		for _, r := range routes {
			if v == nil || r.Gw.Equal(v.tunnel.AsSlice()) {
				c.routes++
			}
		}
		fdb, err := retryDump(func() ([]netlink.Neigh, error) { return netlink.NeighList(idx, unix.AF_BRIDGE) })
		if err != nil {
			return err
		}
		for _, e := range fdb {
			if v == nil || e.IP.Equal(v.underlay.AsSlice()) || e.HardwareAddr.String() == v.mac.String() {
				c.fdb++
			}
		}
		neigh, err := retryDump(func() ([]netlink.Neigh, error) { return netlink.NeighList(idx, netlink.FAMILY_V4) })
		if err != nil {
			return err
		}
		for _, e := range neigh {
			if v == nil || e.IP.Equal(v.tunnel.AsSlice()) {
				c.neigh++
			}
		}
		return nil
	})
	return c, err
}

// TestLabEndToEnd: 3 nodes x 2 pods; the full matrix passes; a node whose agent is
// killed disappears from its peers' kernels; restarted, it comes back with the same pod
// addresses and the matrix passes again.
func TestLabEndToEnd(t *testing.T) {
	l := upReal(t, 3, 2)
	ctx := context.Background()
	st, err := l.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		t.Log(s)
		if !s.Alive || s.Agent == nil || !s.Agent.Ready {
			t.Errorf("%s not healthy: %+v", s.Node, s)
		}
	}
	mustCheck(t, l, "after up")

	const victim = "node2"
	v := nodeVTEP(t, l, victim)
	t.Logf("%s: tunnel %s, VTEP MAC %s, underlay %s", victim, v.tunnel, v.mac, v.underlay)
	others := []string{"node1", "node3"}
	for _, o := range others {
		c, err := countVXLAN(l, o, &v)
		if err != nil {
			t.Fatal(err)
		}
		if c.routes < 1 || c.fdb != 1 || c.neigh != 1 {
			t.Fatalf("%s before the kill: entries for %s %+v, want >=1 route, 1 FDB, 1 neighbour", o, victim, c)
		}
	}
	var victimPods []Pod
	for _, p := range l.Pods() {
		if p.Node == victim {
			victimPods = append(victimPods, p)
		}
	}

	if err := l.StopAgent(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	ok, note := poll(30*time.Second, func() (bool, string) {
		for _, o := range others {
			c, err := countVXLAN(l, o, &v)
			if err != nil {
				return false, err.Error()
			}
			if c != (vxlanState{}) {
				return false, fmt.Sprintf("%s still has %+v for %s", o, c, victim)
			}
		}
		return true, ""
	})
	if !ok {
		t.Fatalf("30s after kill -9 of %s's agent: %s", victim, note)
	}
	t.Logf("TIMING %s's routes/FDB/neighbours gone from its peers %s after kill -9", victim, time.Since(killed).Round(time.Millisecond))

	if err := l.StartAgent(ctx, victim); err != nil {
		t.Fatal(err)
	}
	t.Logf("TIMING %s's agent restarted and cluster settled %s after kill -9", victim, time.Since(killed).Round(time.Millisecond))
	mustCheck(t, l, "after restart")
	n, _ := l.node(victim)
	c := api.NewClient(n.Socket, 5*time.Second)
	for _, p := range victimPods {
		lease, err := c.Check(ctx, api.Attachment{ContainerID: p.ContainerID, IfName: "eth0"})
		if err != nil {
			t.Errorf("%s/%s: the restarted agent lost the lease: %v", p.Node, p.Name, err)
			continue
		}
		if lease.Address != p.Address {
			t.Errorf("%s/%s: lease %s after restart, pod has %s", p.Node, p.Name, lease.Address, p.Address)
		}
	}
	for _, p := range l.Pods() {
		if p.Node == victim {
			for _, q := range victimPods {
				if q.Name == p.Name && q.Address != p.Address {
					t.Errorf("%s/%s: address changed %s -> %s", p.Node, p.Name, q.Address, p.Address)
				}
			}
		}
	}
	for _, o := range others {
		if c, err := countVXLAN(l, o, &v); err != nil || c.routes < 1 || c.fdb != 1 || c.neigh != 1 {
			t.Errorf("%s after the restart: entries for %s %+v (%v)", o, victim, c, err)
		}
	}
}

// TestLabMultiNetwork: every pod of node1 gets a second interface net1 on a
// "Docker-style" bridge in the node, holding the pod's default route; pod traffic still
// uses weft because weft-cni installs an explicit cluster-CIDR route.
func TestLabMultiNetwork(t *testing.T) {
	l := upReal(t, 3, 2)
	const node = "node1"
	n, err := l.node(node)
	if err != nil {
		t.Fatal(err)
	}
	gw := net.IPv4(198, 19, 0, 1).To4()
	mask := net.CIDRMask(16, 32)
	err = withHandle(n.Namespace, func(h *netlink.Handle) error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "dock0", MTU: 1500}}
		if err := h.LinkAdd(br); err != nil {
			return err
		}
		if err := h.AddrAdd(br, &netlink.Addr{IPNet: &net.IPNet{IP: gw, Mask: mask}}); err != nil {
			return err
		}
		return h.LinkSetUp(br)
	})
	if err != nil {
		t.Fatalf("creating the second bridge: %v", err)
	}
	var remote netip.Addr
	for _, p := range l.Pods() {
		if p.Node != node {
			remote = p.Address.Addr()
		}
	}
	i := 0
	for _, p := range l.Pods() {
		if p.Node != node {
			continue
		}
		i++
		if err := attachSecond(n.Namespace, p.Namespace, fmt.Sprintf("dk%d", i), net.IPv4(198, 19, 0, byte(10+i)).To4(), mask, gw); err != nil {
			t.Fatalf("%s: attaching net1: %v", p.Name, err)
		}
		// The default route is on net1 now, the cluster goes through eth0.
		err := withHandle(p.Namespace, func(h *netlink.Handle) error {
			for dst, want := range map[string]string{"203.0.113.1": "net1", remote.String(): "eth0"} {
				rs, err := h.RouteGet(net.ParseIP(dst))
				if err != nil {
					return err
				}
				l, err := h.LinkByIndex(rs[0].LinkIndex)
				if err != nil {
					return err
				}
				if l.Attrs().Name != want {
					return fmt.Errorf("route to %s via %s, want %s", dst, l.Attrs().Name, want)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: %v", p.Name, err)
		}
	}
	mustCheck(t, l, "with net1 holding the default route in node1's pods")
}

// attachSecond gives pod a second interface net1 (addr/mask) on the node's dock0
// bridge, and makes it the pod's default route via gw.
func attachSecond(nodeNS, podNS, hostName string, addr net.IP, mask net.IPMask, gw net.IP) error {
	podFd, err := os.Open(nsPath(podNS))
	if err != nil {
		return err
	}
	defer podFd.Close()
	err = withHandle(nodeNS, func(h *netlink.Handle) error {
		br, err := h.LinkByName("dock0")
		if err != nil {
			return err
		}
		if err := h.LinkAdd(&netlink.Veth{
			LinkAttrs: netlink.LinkAttrs{Name: hostName, MTU: 1500, MasterIndex: br.Attrs().Index},
			PeerName:  "net1", PeerNamespace: netlink.NsFd(int(podFd.Fd())),
		}); err != nil {
			return err
		}
		l, err := h.LinkByName(hostName)
		if err != nil {
			return err
		}
		return h.LinkSetUp(l)
	})
	if err != nil {
		return err
	}
	return withHandle(podNS, func(h *netlink.Handle) error {
		l, err := h.LinkByName("net1")
		if err != nil {
			return err
		}
		if err := h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: addr, Mask: mask}}); err != nil {
			return err
		}
		if err := h.LinkSetUp(l); err != nil {
			return err
		}
		return h.RouteReplace(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: gw})
	})
}

// TestLabBig: 10 nodes x 20 pods (set WEFT_LAB_BIG=1). Kernel state on weft-vxlan must
// grow with nodes, not pods.
func TestLabBig(t *testing.T) {
	if os.Getenv("WEFT_LAB_BIG") != "1" {
		t.Skip("set WEFT_LAB_BIG=1 to run the 10-node x 20-pod lab")
	}
	const nodes, pods = 10, 20
	l := upReal(t, nodes, pods)
	mustCheck(t, l, fmt.Sprintf("%dx%d", nodes, pods))
	const slack = 8
	limit := 3*(nodes-1) + slack
	var report strings.Builder
	for _, n := range l.Nodes() {
		c, err := countVXLAN(l, n.Name, nil)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&report, "%s: routes(proto 0x77) %d  fdb %d  neigh %d  total %d (limit %d)\n",
			n.Name, c.routes, c.fdb, c.neigh, c.routes+c.fdb+c.neigh, limit)
		if total := c.routes + c.fdb + c.neigh; total > limit {
			t.Errorf("%s: %d entries on %s for %d remote nodes, want <= 3 per remote node + %d", n.Name, total, vxlanDev, nodes-1, slack)
		}
	}
	t.Logf("kernel state on %s per node:\n%s", vxlanDev, report.String())
}

// retryDump retries a netlink dump the kernel interrupted because the table changed.
func retryDump[T any](list func() ([]T, error)) ([]T, error) {
	var err error
	for range 10 {
		var v []T
		if v, err = list(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return nil, err
}
