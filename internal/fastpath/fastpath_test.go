package fastpath_test

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/dataplane"
	"github.com/weftnet/weft/internal/fastpath"
	"github.com/weftnet/weft/internal/testutil"
)

// node is one test node: its namespace, desired dataplane, fast path and pods.
type node struct {
	ns   ns.NetNS
	d    dataplane.Desired
	sync *fastpath.Syncer
	pods map[netip.Addr]string // address -> host veth
}

// newNode reconciles a weft node in a fresh namespace with the underlay address ul on
// eth0 (made by the caller) and loads a fast path for it.
func newNode(t *testing.T, n ns.NetNS, self, peer dataplane.Peer, gateway string) *node {
	t.Helper()
	d := dataplane.Desired{
		Bridge: dataplane.Bridge{Name: dataplane.BridgeName, Gateway: netip.MustParseAddr(gateway), Blocks: self.Blocks, MAC: dataplane.BridgeMAC(self.Name)},
		VXLAN: dataplane.VXLAN{Name: dataplane.VXLANName, VNI: dataplane.VNI, Port: dataplane.VXLANPort,
			UnderlayIP: self.UnderlayIP, Underlay: "eth0", MAC: self.MAC, TunnelIP: self.TunnelIP},
		Peers:       []dataplane.Peer{peer},
		ClusterCIDR: netip.MustParsePrefix("10.32.0.0/16"),
		MTU:         dataplane.MTUFor(1500),
		Prune:       true,
	}
	testutil.InNS(t, n, func() error {
		_, err := dataplane.NewReconciler(dataplane.NewKernel()).Reconcile(d)
		if err != nil {
			return err
		}
		// Kubernetes nodes pass bridged IPv4 to netfilter (kube-proxy needs it).
		return os.WriteFile("/proc/sys/net/bridge/bridge-nf-call-iptables", []byte("1"), 0o644)
	})
	p, err := fastpath.Load()
	if err != nil {
		t.Fatalf("loading the fast path: %v (this machine's kernel has BPF, BTF and conntrack kfuncs)", err)
	}
	t.Cleanup(func() { p.Close() })
	s, err := fastpath.NewSyncer(p)
	if err != nil {
		t.Fatal(err)
	}
	return &node{ns: n, d: d, sync: s, pods: map[netip.Addr]string{}}
}

// addPod attaches a pod as weft-cni does (a veth on the bridge, the gateway on-link, the
// default route through it) and serves TCP and UDP in it.
func (nd *node) addPod(t *testing.T, host, addr string) ns.NetNS {
	t.Helper()
	pod := testutil.NewNS(t)
	testutil.InNS(t, nd.ns, func() error {
		br, err := netlink.LinkByName(nd.d.Bridge.Name)
		if err != nil {
			return err
		}
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host, MTU: nd.d.MTU, MasterIndex: br.Attrs().Index},
			PeerName: "eth0", PeerNamespace: netlink.NsFd(int(pod.Fd()))})
	})
	testutil.Run(t, nd.ns, "ip", "link", "set", host, "up")
	gw := nd.d.Bridge.Gateway.String()
	testutil.Run(t, pod, "ip", "addr", "add", addr, "dev", "eth0")
	testutil.Run(t, pod, "ip", "link", "set", "eth0", "up")
	testutil.Run(t, pod, "ip", "route", "add", gw, "dev", "eth0", "scope", "link")
	testutil.Run(t, pod, "ip", "route", "add", "default", "via", gw, "dev", "eth0")
	nd.pods[netip.MustParsePrefix(addr).Addr()] = host
	testutil.Serve(t, pod, host)
	return pod
}

// syncFP runs one Sync in the node and returns how many changes it made.
func (nd *node) syncFP(t *testing.T, full bool) int {
	t.Helper()
	var n int
	testutil.InNS(t, nd.ns, func() error {
		var err error
		n, err = nd.sync.Sync(fastpath.Want{Bridge: nd.d.Bridge.Name, VXLAN: nd.d.VXLAN.Name, Pods: nd.pods}, full)
		return err
	})
	return n
}

func (nd *node) counts(t *testing.T) map[string]uint64 {
	t.Helper()
	c, err := nd.sync.Counts()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// filters lists the devices of the node that carry weft's fast-path filter.
func (nd *node) filters(t *testing.T) []string {
	t.Helper()
	var out []string
	testutil.InNS(t, nd.ns, func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			if id, err := fastpath.Attached(l); err != nil {
				return err
			} else if id != 0 {
				out = append(out, l.Attrs().Name)
			}
		}
		return nil
	})
	return out
}

// TestFastPath: with the fast path on two weft nodes, pods reach each other over TCP and
// UDP on one block, across blocks of one node and across nodes, and those packets go
// around netfilter (no conntrack entry); a connection netfilter translates (a Service's
// DNAT, as kube-proxy makes it) still works, its packets left to the normal path. The
// Syncer attaches to new veths, repairs a removed filter on a full sync, drops pods that
// go, and Remove takes everything off.
func TestFastPath(t *testing.T) {
	nodeA, nodeB := testutil.NewNS(t), testutil.NewNS(t)
	testutil.InNS(t, nodeA, func() error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: 1500}, PeerName: "eth0b",
			PeerNamespace: netlink.NsFd(int(nodeB.Fd()))})
	})
	testutil.Run(t, nodeB, "ip", "link", "set", "eth0b", "name", "eth0")
	for n, addr := range map[ns.NetNS]string{nodeA: "198.18.0.1/15", nodeB: "198.18.0.2/15"} {
		testutil.Run(t, n, "ip", "addr", "add", addr, "dev", "eth0")
		testutil.Run(t, n, "ip", "link", "set", "eth0", "up")
	}
	pa := dataplane.Peer{Name: "node-a", UnderlayIP: netip.MustParseAddr("198.18.0.1"), MAC: dataplane.VTEPMAC("node-a"),
		TunnelIP: netip.MustParseAddr("10.32.0.0"), Blocks: []netip.Prefix{netip.MustParsePrefix("10.32.0.0/26"), netip.MustParsePrefix("10.32.0.128/26")}}
	pb := dataplane.Peer{Name: "node-b", UnderlayIP: netip.MustParseAddr("198.18.0.2"), MAC: dataplane.VTEPMAC("node-b"),
		TunnelIP: netip.MustParseAddr("10.32.0.64"), Blocks: []netip.Prefix{netip.MustParsePrefix("10.32.0.64/26")}}
	a, b := newNode(t, nodeA, pa, pb, "10.32.0.1"), newNode(t, nodeB, pb, pa, "10.32.0.65")
	a1 := a.addPod(t, "veth-a1", "10.32.0.5/26")
	a.addPod(t, "veth-a2", "10.32.0.6/26")
	a.addPod(t, "veth-a3", "10.32.0.130/26") // another block of node A: routed, not bridged
	b1 := b.addPod(t, "veth-b1", "10.32.0.69/26")
	if n := a.syncFP(t, false); n != 8 { // the device map, 4 filters (VXLAN, 3 veths), 3 pods
		t.Errorf("node A: the first sync made %d changes, want 8", n)
	}
	b.syncFP(t, false)
	if got, want := strings.Join(a.filters(t), " "), "weft-vxlan veth-a1 veth-a2 veth-a3"; got != want {
		t.Fatalf("node A has the fast path on %q, want %q", got, want)
	}
	if n := a.syncFP(t, true); n != 0 {
		t.Errorf("a second full sync made %d changes, want 0", n)
	}

	// A Service as kube-proxy makes it: DNAT in prerouting, on the client's node.
	nftService(t, nodeA, map[string]string{"10.96.0.10": "10.32.0.69", "10.96.0.11": "10.32.0.6"})

	type check struct {
		name, proto, dst, want string
		from                   ns.NetNS
		fast                   bool // the connection's own packets take the fast path
	}
	checks := []check{
		{"one block, bridged", "tcp", "10.32.0.6:8080", "veth-a2 tcp from 10.32.0.5", a1, true},
		{"two blocks of one node, routed", "tcp", "10.32.0.130:8080", "veth-a3 tcp from 10.32.0.5", a1, true},
		{"across nodes", "tcp", "10.32.0.69:8080", "veth-b1 tcp from 10.32.0.5", a1, true},
		{"across nodes, back", "tcp", "10.32.0.5:8080", "veth-a1 tcp from 10.32.0.69", b1, true},
		{"across nodes, UDP", "udp", "10.32.0.69:5353", "veth-b1 udp from 10.32.0.5", a1, true},
		{"Service on another node", "tcp", "10.96.0.10:80", "veth-b1 tcp from 10.32.0.5", a1, false},
		{"Service on the same bridge", "tcp", "10.96.0.11:80", "veth-a2 tcp from 10.32.0.5", a1, false},
	}
	for _, c := range checks {
		beforeA, beforeB := a.counts(t), b.counts(t)
		got, err := testutil.Ask(t, c.from, c.proto, c.dst, 2*time.Second, 3)
		if err != nil || got != c.want {
			t.Errorf("%s: %s %s answered %q, %v; want %q", c.name, c.proto, c.dst, got, err, c.want)
			continue
		}
		afterA, afterB := a.counts(t), b.counts(t)
		fast := afterA["to_pod"] + afterA["to_tunnel"] + afterB["to_pod"] + afterB["to_tunnel"] -
			beforeA["to_pod"] - beforeA["to_tunnel"] - beforeB["to_pod"] - beforeB["to_tunnel"]
		translated := afterA["translated"] - beforeA["translated"]
		switch {
		case c.fast && fast == 0:
			t.Errorf("%s: no packet took the fast path (node A %v, node B %v)", c.name, afterA, afterB)
		case !c.fast && translated == 0:
			t.Errorf("%s: no packet was left to netfilter as translated (node A %v)", c.name, afterA)
		}
	}
	// The direct connections are in neither node's connection table; the Services' are.
	for name, n := range map[string]ns.NetNS{"node A": nodeA, "node B": nodeB} {
		for _, e := range conntrack(t, n) {
			if strings.Contains(e, "dport=8080 ") || strings.Contains(e, "dport=5353 ") {
				t.Errorf("%s tracks a connection the fast path carried: %s", name, e)
			}
		}
	}
	if !slicesContain(conntrack(t, nodeA), "dst=10.96.0.10 ") {
		t.Errorf("node A does not track the Service connection; conntrack has:\n%s", strings.Join(conntrack(t, nodeA), "\n"))
	}

	// Repair: a filter removed by hand comes back at the next full sync only.
	testutil.Run(t, nodeA, "tc", "filter", "del", "dev", "veth-a2", "ingress")
	if n := a.syncFP(t, false); n != 0 {
		t.Errorf("a sync that does not read made %d changes, want 0", n)
	}
	if n := a.syncFP(t, true); n != 1 {
		t.Errorf("a full sync after removing one filter made %d changes, want 1", n)
	}

	// An agent restart: a new program takes over every device, its maps filled first.
	p2, err := fastpath.Load()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p2.Close() })
	if a.sync, err = fastpath.NewSyncer(p2); err != nil {
		t.Fatal(err)
	}
	if n := a.syncFP(t, true); n != 8 {
		t.Errorf("a new program's first sync made %d changes, want 8", n)
	}
	if got, err := testutil.Ask(t, a1, "tcp", "10.32.0.69:8080", 2*time.Second, 3); err != nil || got != "veth-b1 tcp from 10.32.0.5" {
		t.Errorf("after the new program took over: %q, %v", got, err)
	}
	if c := a.counts(t); c["to_tunnel"] == 0 {
		t.Errorf("the new program carried nothing: %v", c)
	}

	// A pod that goes: its address leaves the map and reaches the normal path.
	delete(a.pods, netip.MustParseAddr("10.32.0.6"))
	if n := a.syncFP(t, false); n != 1 {
		t.Errorf("dropping one pod made %d changes, want 1", n)
	}
	before := a.counts(t)["not_pod"]
	if got, err := testutil.Ask(t, a1, "tcp", "10.32.0.6:8080", 2*time.Second, 3); err != nil || got != "veth-a2 tcp from 10.32.0.5" {
		t.Errorf("to a pod the fast path does not know: %q, %v", got, err)
	}
	if a.counts(t)["not_pod"] == before {
		t.Error("a packet for a pod the fast path does not know was not counted as not_pod")
	}

	var removed int
	testutil.InNS(t, nodeA, func() (err error) {
		removed, err = fastpath.Remove(dataplane.BridgeName, dataplane.VXLANName)
		return err
	})
	if removed != 4 || len(a.filters(t)) != 0 {
		t.Errorf("Remove removed %d filters, left %v; want 4, none", removed, a.filters(t))
	}
	if got, err := testutil.Ask(t, a1, "tcp", "10.32.0.69:8080", 2*time.Second, 3); err != nil || got != "veth-b1 tcp from 10.32.0.5" {
		t.Errorf("without the fast path: %q, %v", got, err)
	}
}

// nftService adds kube-proxy's part of a ClusterIP Service to n: each address's port 80
// DNATed to the pod's port 8080, in prerouting.
func nftService(t *testing.T, n ns.NetNS, svc map[string]string) {
	t.Helper()
	rules := "table ip svc {\n chain pre {\n  type nat hook prerouting priority dstnat;\n"
	for vip, pod := range svc {
		rules += fmt.Sprintf("  ip daddr %s tcp dport 80 dnat to %s:8080\n", vip, pod)
	}
	rules += " }\n}\n"
	f, err := os.CreateTemp(t.TempDir(), "svc*.nft")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(rules); err != nil {
		t.Fatal(err)
	}
	f.Close()
	testutil.Run(t, n, "nft", "-f", f.Name())
}

// conntrack lists n's connection tracking table, one entry a line.
func conntrack(t *testing.T, n ns.NetNS) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(testutil.Run(t, n, "conntrack", "-L"), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "conntrack v") {
			out = append(out, l+" ")
		}
	}
	return out
}

func slicesContain(lines []string, sub string) bool {
	for _, l := range lines {
		if strings.Contains(l, sub) {
			return true
		}
	}
	return false
}
