package dataplane

import (
	"errors"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current Plan output")

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

var (
	macA = mustMAC("02:00:00:00:00:0a")
	macB = mustMAC("02:00:00:00:00:0b")
	macC = mustMAC("02:00:00:00:00:0c")
	// Entries the kernel lists on a VXLAN device by itself; weft must leave them alone.
	macMcast = mustMAC("33:33:00:00:00:01")
	macZero  = mustMAC("00:00:00:00:00:00")
)

var (
	ip   = netip.MustParseAddr
	cidr = netip.MustParsePrefix
)

// desiredA is node A of a three-node cluster: two local blocks, two peers with two blocks each.
func desiredA(prune bool) Desired {
	return Desired{
		Bridge: Bridge{Name: BridgeName, Gateway: ip("10.32.0.1"), MAC: BridgeMAC("node-a"),
			Blocks: []netip.Prefix{cidr("10.32.0.0/26"), cidr("10.32.1.128/26")}},
		VXLAN: VXLAN{Name: VXLANName, VNI: VNI, Port: VXLANPort, UnderlayIP: ip("198.18.0.1"),
			Underlay: "eth0", MAC: macA, TunnelIP: ip("10.32.0.0")},
		Peers: []Peer{
			{Name: "node-b", UnderlayIP: ip("198.18.0.2"), MAC: macB, TunnelIP: ip("10.32.0.64"),
				Blocks: []netip.Prefix{cidr("10.32.0.64/26"), cidr("10.32.1.0/26")}},
			{Name: "node-c", UnderlayIP: ip("198.18.0.3"), MAC: macC, TunnelIP: ip("10.32.0.128"),
				Blocks: []netip.Prefix{cidr("10.32.0.128/26"), cidr("10.32.1.64/26")}},
		},
		ClusterCIDR: cidr("10.32.0.0/16"),
		MTU:         1450,
		Prune:       prune,
	}
}

// desiredHP is desiredA with host ports: every local address (tcp, udp) and one address
// (tcp), listed in Plan's order.
func desiredHP(prune bool) Desired {
	d := desiredA(prune)
	d.HostPorts = []HostPort{
		{Protocol: "tcp", HostPort: 18080, PodIP: ip("10.32.0.5"), PodPort: 8080},
		{Protocol: "udp", HostPort: 15353, PodIP: ip("10.32.0.6"), PodPort: 5353},
		{Protocol: "tcp", HostIP: ip("198.18.0.1"), HostPort: 8443, PodIP: ip("10.32.1.130"), PodPort: 443},
	}
	return d
}

// converged is the kernel state d asks for, written out by hand (independently of Plan),
// plus the entries the kernel makes by itself, which no plan may touch.
func converged(d Desired) Observed {
	vx := d.VXLAN
	o := Observed{
		Bridge: &Link{Name: d.Bridge.Name, Kind: "bridge", MTU: d.MTU, MAC: d.Bridge.MAC, Up: true},
		VXLAN: &Link{Name: vx.Name, Kind: "vxlan", MTU: d.MTU, MAC: vx.MAC, Up: true,
			VNI: vx.VNI, Port: vx.Port, Local: vx.UnderlayIP, Underlay: vx.Underlay},
		Addrs: []Addr{
			{Dev: d.Bridge.Name, Prefix: netip.PrefixFrom(d.Bridge.Gateway, 32)},
			{Dev: vx.Name, Prefix: netip.PrefixFrom(vx.TunnelIP, 32)},
		},
		IPForward: true,
		NAT: NAT{Table: true,
			Chain: &NATChain{ChainHeader: ChainHeader{Type: "nat", Hook: "postrouting", Priority: 100, Policy: "accept"},
				Rules: []NATRule{{Masquerade: d.ClusterCIDR}, {Hairpin: d.Bridge.Name}}},
			Prerouting: &RawChain{ChainHeader: ChainHeader{Type: "filter", Hook: "prerouting", Priority: -300, Policy: "accept"},
				Rules: []int{vx.Port}},
			Output: &RawChain{ChainHeader: ChainHeader{Type: "filter", Hook: "output", Priority: -300, Policy: "accept"},
				Rules: []int{vx.Port}},
			HostPortsPrerouting: &HostPortChain{ChainHeader: ChainHeader{Type: "nat", Hook: "prerouting", Priority: -100, Policy: "accept"},
				Rules: slices.Clone(d.HostPorts)},
			HostPortsOutput: &HostPortChain{ChainHeader: ChainHeader{Type: "nat", Hook: "output", Priority: -100, Policy: "accept"},
				Rules: slices.Clone(d.HostPorts)},
		},
	}
	pods := map[netip.Addr]bool{}
	for _, h := range d.HostPorts {
		pods[h.PodIP] = true
	}
	for _, pod := range slices.SortedFunc(maps.Keys(pods), netip.Addr.Compare) {
		o.NAT.Chain.Rules = append(o.NAT.Chain.Rules, NATRule{HairpinPod: pod})
	}
	for _, b := range d.Bridge.Blocks {
		o.Routes = append(o.Routes, Route{Dst: b, Dev: d.Bridge.Name, Scope: ScopeLink, Src: d.Bridge.Gateway})
	}
	for _, p := range d.Peers {
		for _, b := range Aggregate(p.Blocks) { // adjacent blocks are one route
			o.Routes = append(o.Routes, Route{Dst: b, Gw: p.TunnelIP, Dev: vx.Name, OnLink: true})
		}
		o.Neighs = append(o.Neighs, Neigh{Dev: vx.Name, IP: p.TunnelIP, MAC: p.MAC, Permanent: true})
		o.FDB = append(o.FDB, FDB{Dev: vx.Name, MAC: p.MAC, Dst: p.UnderlayIP, Permanent: true})
	}
	o.FDB = append(o.FDB,
		FDB{Dev: vx.Name, MAC: vx.MAC, Permanent: true},   // the device's own address
		FDB{Dev: vx.Name, MAC: macMcast, Permanent: true}, // a multicast address of the device
	)
	return o
}

func without[T any](s []T, drop func(T) bool) []T {
	return slices.DeleteFunc(slices.Clone(s), drop)
}

var planCases = []struct {
	name string
	d    Desired
	o    Observed
}{
	{
		name: "empty-kernel",
		d:    desiredA(true),
		o:    Observed{},
	},
	{
		name: "converged",
		d:    desiredA(true),
		o:    converged(desiredA(true)),
	},
	{
		name: "route-deleted-by-hand",
		d:    desiredA(true),
		o: func() Observed {
			o := converged(desiredA(true))
			o.Routes = without(o.Routes, func(r Route) bool { return r.Dst == cidr("10.32.1.0/26") })
			return o
		}(),
	},
	{
		name: "peer-gone-no-prune",
		d: func() Desired {
			d := desiredA(false)
			d.Peers = d.Peers[:1]
			return d
		}(),
		o: converged(desiredA(false)),
	},
	{
		name: "peer-gone-prune",
		d: func() Desired {
			d := desiredA(true)
			d.Peers = d.Peers[:1]
			return d
		}(),
		o: converged(desiredA(true)),
	},
	{
		name: "peer-underlay-changed",
		d: func() Desired {
			d := desiredA(true)
			d.Peers[1].UnderlayIP = ip("198.18.7.3")
			return d
		}(),
		o: converged(desiredA(true)),
	},
	{
		name: "vxlan-wrong-vni",
		d:    desiredA(false),
		o: func() Observed {
			o := converged(desiredA(false))
			o.VXLAN.VNI = 2
			return o
		}(),
	},
	{
		name: "vxlan-wrong-underlay",
		d:    desiredA(false),
		o: func() Observed {
			o := converged(desiredA(false))
			o.VXLAN.Underlay = "eth1"
			o.VXLAN.Local = ip("192.0.2.1")
			return o
		}(),
	},
	{
		name: "mtu-changed",
		d: func() Desired {
			d := desiredA(true)
			d.MTU = 8950
			return d
		}(),
		o: converged(desiredA(true)),
	},
	{
		name: "mac-changed-links-down",
		d:    desiredA(true),
		o: func() Observed {
			o := converged(desiredA(true))
			o.VXLAN.MAC = mustMAC("02:00:00:00:00:99")
			o.VXLAN.Up = false
			o.Bridge.Up = false
			return o
		}(),
	},
	{
		name: "bridge-wrong-kind",
		d:    desiredA(true),
		o: func() Observed {
			o := converged(desiredA(true))
			o.Bridge.Kind = "dummy"
			return o
		}(),
	},
	{
		name: "stale-entries-prune",
		d:    desiredA(true),
		o:    withStale(converged(desiredA(true))),
	},
	{
		name: "stale-entries-no-prune",
		d:    desiredA(false),
		o:    withStale(converged(desiredA(false))),
	},
	{
		name: "entries-changed",
		d:    desiredA(false),
		o: func() Observed {
			o := converged(desiredA(false))
			for i, r := range o.Routes {
				switch r.Dst {
				case cidr("10.32.1.0/26"): // points at the wrong peer
					o.Routes[i].Gw = ip("10.32.0.128")
				case cidr("10.32.0.0/26"): // lost its source
					o.Routes[i].Src = netip.Addr{}
				case cidr("10.32.1.64/26"): // another metric: a different kernel entry
					o.Routes[i].Metric = 10
				}
			}
			o.Neighs[0].MAC = macC                                    // node-b's tunnel resolves to node-c
			o.Neighs[1].Permanent = false                             // node-c's is only a learnt entry
			o.FDB[0].Permanent = false                                // node-b's FDB entry is not permanent
			o.Addrs[0].Prefix = netip.PrefixFrom(ip("10.32.0.1"), 26) // gateway with the wrong length
			return o
		}(),
	},
	{
		name: "fdb-extra-remotes",
		d:    desiredA(true),
		o: func() Observed {
			o := converged(desiredA(true))
			// node-b's MAC has two remotes, neither the desired one; node-c's has the right one
			// and a stale second one. (Linux keeps one remote per unicast MAC, as `bridge fdb
			// append` is for multicast and all-zeros entries only; the planner copes anyway.)
			o.FDB = slices.Concat([]FDB{
				{Dev: VXLANName, MAC: macB, Dst: ip("198.18.9.1"), Permanent: true},
				{Dev: VXLANName, MAC: macB, Dst: ip("198.18.9.2"), Permanent: true},
				{Dev: VXLANName, MAC: macC, Dst: ip("198.18.9.3"), Permanent: true},
			}, o.FDB[1:])
			return o
		}(),
	},
	{
		name: "sysctl-and-nat-drift",
		d:    desiredA(false),
		o: func() Observed {
			o := converged(desiredA(false))
			o.IPForward = false
			o.NAT.Chain.Rules = append(o.NAT.Chain.Rules, NATRule{}) // someone added a rule
			return o
		}(),
	},
	{
		name: "nat-old-cidr",
		d:    desiredA(true),
		o: func() Observed {
			o := converged(desiredA(true))
			o.NAT.Chain.Rules[0] = NATRule{Masquerade: cidr("10.40.0.0/16")}
			return o
		}(),
	},
	{
		name: "nat-chain-wrong-priority",
		d:    desiredA(true),
		o: func() Observed {
			o := converged(desiredA(true))
			o.NAT.Chain.Priority = 0
			return o
		}(),
	},
	{
		name: "notrack-chain-missing",
		d:    desiredA(true),
		o: func() Observed {
			o := converged(desiredA(true))
			o.NAT.Prerouting = nil // e.g. the table of an older weft, masquerade only
			return o
		}(),
	},
	{
		name: "notrack-foreign-rule",
		d:    desiredA(true),
		o: func() Observed {
			o := converged(desiredA(true))
			o.NAT.Output.Rules = []int{VXLANPort, 0} // someone added a rule
			return o
		}(),
	},
	{
		name: "notrack-old-port",
		d:    desiredA(true),
		o: func() Observed {
			o := converged(desiredA(true))
			o.NAT.Prerouting.Rules = []int{4789} // left by an agent with another VXLAN port
			o.NAT.Output.Rules = []int{4789}
			return o
		}(),
	},
	{
		name: "notrack-chain-wrong-priority",
		d:    desiredA(true),
		o: func() Observed {
			o := converged(desiredA(true))
			o.NAT.Output.Priority = 0 // filter priority: after conntrack, too late for notrack
			return o
		}(),
	},
	{
		name: "hostports-empty-kernel",
		d:    desiredHP(true),
		o:    Observed{},
	},
	{
		name: "hostports-added",
		d:    desiredHP(true),
		o:    converged(desiredA(true)),
	},
	{
		// The agent's order, a duplicate and 0.0.0.0 for every address do not matter.
		name: "hostports-converged",
		d: func() Desired {
			d := desiredHP(true)
			h := d.HostPorts
			wildcard := h[0]
			wildcard.HostIP = ip("0.0.0.0")
			d.HostPorts = []HostPort{h[2], h[1], wildcard, h[0], h[2]}
			return d
		}(),
		o: converged(desiredHP(true)),
	},
	{
		name: "hostports-removed",
		d:    desiredA(true),
		o:    converged(desiredHP(true)),
	},
	{
		name: "hostports-one-removed",
		d: func() Desired {
			d := desiredHP(true)
			d.HostPorts = d.HostPorts[1:]
			return d
		}(),
		o: converged(desiredHP(true)),
	},
	{
		name: "hostports-rule-edited-by-hand",
		d:    desiredHP(true),
		o: func() Observed {
			o := converged(desiredHP(true))
			o.NAT.HostPortsOutput.Rules[1] = HostPort{} // no longer exactly weft's rule
			return o
		}(),
	},
	{
		name: "hostports-rule-added-by-hand",
		d:    desiredHP(true),
		o: func() Observed {
			o := converged(desiredHP(true))
			o.NAT.HostPortsPrerouting.Rules = append(o.NAT.HostPortsPrerouting.Rules, HostPort{})
			return o
		}(),
	},
	{
		name: "hostports-chains-missing",
		d:    desiredA(true),
		o: func() Observed {
			o := converged(desiredA(true))
			o.NAT.HostPortsPrerouting, o.NAT.HostPortsOutput = nil, nil // the table of an older weft
			o.NAT.Chain.Rules = o.NAT.Chain.Rules[:1]                   // without the hairpin rule
			return o
		}(),
	},
	{
		name: "hostports-chain-wrong-priority",
		d:    desiredHP(true),
		o: func() Observed {
			o := converged(desiredHP(true))
			o.NAT.HostPortsPrerouting.Priority = 100
			return o
		}(),
	},
	{
		name: "hairpin-pod-rule-missing",
		d:    desiredHP(true),
		o: func() Observed {
			o := converged(desiredHP(true))
			o.NAT.Chain.Rules = o.NAT.Chain.Rules[:len(o.NAT.Chain.Rules)-1]
			return o
		}(),
	},
	{
		name: "hairpin-rule-other-bridge",
		d:    desiredHP(true),
		o: func() Observed {
			o := converged(desiredHP(true))
			o.NAT.Chain.Rules[1] = NATRule{Hairpin: "cni0"}
			return o
		}(),
	},
}

// withStale adds entries weft once made and no longer wants, and some it must never touch.
func withStale(o Observed) Observed {
	o.Addrs = append(o.Addrs,
		Addr{Dev: BridgeName, Prefix: cidr("10.32.5.1/32")},
		Addr{Dev: VXLANName, Prefix: cidr("10.32.5.0/32")})
	o.Routes = append(o.Routes,
		Route{Dst: cidr("10.32.9.0/26"), Gw: ip("10.32.9.0"), Dev: VXLANName, OnLink: true},
		Route{Dst: cidr("10.32.5.0/26"), Dev: BridgeName, Scope: ScopeLink, Src: ip("10.32.5.1")})
	o.Neighs = append(o.Neighs,
		Neigh{Dev: VXLANName, IP: ip("10.32.9.0"), MAC: mustMAC("02:00:00:00:00:99"), Permanent: true},
		Neigh{Dev: VXLANName, IP: ip("10.32.9.64"), MAC: nil, Permanent: false}) // failed ARP: the kernel's
	o.FDB = append(o.FDB,
		FDB{Dev: VXLANName, MAC: mustMAC("02:00:00:00:00:99"), Dst: ip("198.18.0.9"), Permanent: true},
		FDB{Dev: VXLANName, MAC: macZero, Dst: ip("198.18.0.10"), Permanent: true}) // flood entry: not weft's
	return o
}

func render(ops []Op) string {
	var b strings.Builder
	for _, op := range ops {
		b.WriteString(op.String())
		b.WriteByte('\n')
	}
	return b.String()
}

func TestPlanGolden(t *testing.T) {
	for _, tc := range planCases {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.d.Validate(); err != nil {
				t.Fatalf("test case has an invalid Desired: %v", err)
			}
			got := render(Plan(tc.d, tc.o))
			path := filepath.Join("testdata", tc.name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run `go test ./internal/dataplane/ -run TestPlanGolden -update` to create it)", err)
			}
			if got != string(want) {
				t.Errorf("plan differs from %s (rerun with -update if the change is intended)\n--- got\n%s--- want\n%s", path, got, want)
			}
		})
	}
}

// Every planned op is applied to a fake kernel; planning again must find nothing to do.
// This checks that the plan is complete and that applying it in its order works.
func TestPlanConvergesOnFake(t *testing.T) {
	for _, tc := range planCases {
		t.Run(tc.name, func(t *testing.T) {
			k := &FakeKernel{State: clone(tc.o)}
			r := NewReconciler(k)
			first, err := r.Reconcile(tc.d)
			if err != nil {
				t.Fatalf("first reconcile: %v", err)
			}
			if got, want := render(first.Ops), render(Plan(tc.d, tc.o)); got != want {
				t.Errorf("Reconcile applied\n%s\nwant the plan\n%s", got, want)
			}
			second, err := r.Reconcile(tc.d)
			if err != nil {
				t.Fatalf("second reconcile: %v", err)
			}
			if len(second.Ops) != 0 {
				t.Errorf("second reconcile is not a no-op:\n%s", render(second.Ops))
			}
		})
	}
}

// The plan for the same state does not depend on the order of peers, blocks or observed
// entries.
func TestPlanDeterministic(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range planCases {
		t.Run(tc.name, func(t *testing.T) {
			want := render(Plan(tc.d, tc.o))
			for range 20 {
				d := tc.d
				d.Peers = slices.Clone(d.Peers)
				shuffle(rng, d.Peers)
				for i := range d.Peers {
					d.Peers[i].Blocks = slices.Clone(d.Peers[i].Blocks)
					shuffle(rng, d.Peers[i].Blocks)
				}
				d.Bridge.Blocks = slices.Clone(d.Bridge.Blocks)
				shuffle(rng, d.Bridge.Blocks)
				d.HostPorts = slices.Clone(d.HostPorts)
				shuffle(rng, d.HostPorts)
				o := clone(tc.o)
				shuffle(rng, o.Addrs)
				shuffle(rng, o.Routes)
				shuffle(rng, o.Neighs) // FDB keeps kernel order: it is meaningful
				if got := render(Plan(d, o)); got != want {
					t.Fatalf("plan depends on input order:\n%s\nwant\n%s", got, want)
				}
			}
		})
	}
}

func shuffle[T any](rng *rand.Rand, s []T) {
	rng.Shuffle(len(s), func(i, j int) { s[i], s[j] = s[j], s[i] })
}

// The formats the agent's logs and the brief rely on.
func TestOpStrings(t *testing.T) {
	for _, tc := range []struct {
		op   Op
		want string
	}{
		{RouteAdd{Route{Dst: cidr("10.32.1.0/26"), Gw: ip("10.32.1.0"), Dev: VXLANName, OnLink: true}},
			"route add 10.32.1.0/26 via 10.32.1.0 dev weft-vxlan onlink proto 0x77"},
		{RouteAdd{Route{Dst: cidr("10.32.0.0/26"), Dev: BridgeName, Scope: ScopeLink, Src: ip("10.32.0.1")}},
			"route add 10.32.0.0/26 dev weft scope link src 10.32.0.1 proto 0x77"},
		{NeighSet{Neigh: Neigh{Dev: VXLANName, IP: ip("10.32.1.0"), MAC: macB}},
			"neigh add 10.32.1.0 lladdr 02:00:00:00:00:0b dev weft-vxlan nud permanent"},
		{FDBSet{FDB: FDB{Dev: VXLANName, MAC: macB, Dst: ip("198.18.0.2")}, Replace: true},
			"fdb replace 02:00:00:00:00:0b dst 198.18.0.2 dev weft-vxlan self permanent"},
		{LinkAdd{Link{Name: VXLANName, Kind: "vxlan", VNI: 1, Port: 6784, Local: ip("198.18.0.1"), Underlay: "eth0", MAC: macA, MTU: 1450}},
			"link add weft-vxlan type vxlan id 1 dstport 6784 local 198.18.0.1 dev eth0 nolearning address 02:00:00:00:00:0a mtu 1450"},
		{NFTTableSet{ClusterCIDR: cidr("10.32.0.0/16"), VXLANPort: 6784},
			"nft rebuild table ip weft { postrouting: ip saddr 10.32.0.0/16 ip daddr != 10.32.0.0/16 masquerade; prerouting, output: udp dport 6784 notrack; hostports: none }"},
		{wantTable(desiredHP(true)),
			"nft rebuild table ip weft { postrouting: ip saddr 10.32.0.0/16 ip daddr != 10.32.0.0/16 masquerade, iifname weft oifname weft ct status dnat masquerade, " +
				"ip saddr P ip daddr P ct status dnat masquerade for P in {10.32.0.5, 10.32.0.6, 10.32.1.130}; " +
				"prerouting, output: udp dport 6784 notrack; hostports: tcp 18080 -> 10.32.0.5:8080, udp 15353 -> 10.32.0.6:5353, tcp 198.18.0.1:8443 -> 10.32.1.130:443 }"},
	} {
		if got := tc.op.String(); got != tc.want {
			t.Errorf("got  %q\nwant %q", got, tc.want)
		}
	}
}

func TestReconcileStopsAtFirstFailure(t *testing.T) {
	boom := fmt.Errorf("injected failure")
	k := &FakeKernel{Fail: func(op Op) error {
		if _, ok := op.(FDBSet); ok {
			return boom
		}
		return nil
	}}
	d := desiredA(true)
	res, err := NewReconciler(k).Reconcile(d)
	if err == nil || !strings.Contains(err.Error(), "fdb add") || !strings.Contains(err.Error(), "injected failure") {
		t.Fatalf("err = %v, want the failing op and the cause", err)
	}
	if !errors.Is(err, boom) {
		t.Errorf("err does not wrap the cause: %v", err)
	}
	for _, op := range res.Ops {
		if _, ok := op.(RouteAdd); ok {
			t.Errorf("a route was added although an FDB entry before it failed: %s", op)
		}
	}
	if got := render(res.Ops); got != render(k.Applied) {
		t.Errorf("Result.Ops\n%s\ndiffers from what the kernel applied\n%s", got, render(k.Applied))
	}
	k.Fail = nil
	if _, err := NewReconciler(k).Reconcile(d); err != nil {
		t.Fatal(err)
	}
	if res, _ := NewReconciler(k).Reconcile(d); len(res.Ops) != 0 {
		t.Errorf("did not converge after the failure cleared:\n%s", render(res.Ops))
	}
}

func TestReconcileRejectsInvalidNode(t *testing.T) {
	k := &FakeKernel{}
	d := desiredA(true)
	d.MTU = 0
	res, err := NewReconciler(k).Reconcile(d)
	if !errors.Is(err, ErrInvalidDesired) || !strings.Contains(err.Error(), "MTU") {
		t.Fatalf("err = %v, want ErrInvalidDesired about the MTU", err)
	}
	if len(res.Ops) != 0 || len(k.Applied) != 0 {
		t.Errorf("an invalid Desired changed the kernel: %v", k.Applied)
	}
}

// A bad peer comes from another node: it is left out, the rest is reconciled.
func TestReconcileIgnoresBadPeers(t *testing.T) {
	d := desiredA(true)
	good := d.Peers
	d.Peers = append(slices.Clone(good),
		Peer{Name: "node-d", UnderlayIP: ip("198.18.0.4"), MAC: macMcast, TunnelIP: ip("10.32.2.0"),
			Blocks: []netip.Prefix{cidr("10.32.2.0/26")}}, // multicast MAC
		Peer{Name: "node-e", UnderlayIP: ip("198.18.0.5"), MAC: mustMAC("02:00:00:00:00:0e"), TunnelIP: ip("10.32.0.64"),
			Blocks: []netip.Prefix{cidr("10.32.2.64/26")}}, // node-b's tunnel IP
		Peer{Name: "node-f", UnderlayIP: ip("198.18.0.6"), MAC: mustMAC("02:00:00:00:00:0f"), TunnelIP: ip("10.32.2.128"),
			Blocks: []netip.Prefix{cidr("10.32.2.128/26"), cidr("10.32.0.0/26"), cidr("10.32.1.0/26")}}, // ours, node-b's
	)
	if err := d.Validate(); err == nil {
		t.Fatal("Validate accepted conflicting peers")
	}
	k := &FakeKernel{}
	res, err := NewReconciler(k).Reconcile(d)
	if err != nil {
		t.Fatal(err)
	}
	var why []string
	for _, e := range res.Ignored {
		if !errors.Is(e, ErrInvalidDesired) {
			t.Errorf("ignored reason does not wrap ErrInvalidDesired: %v", e)
		}
		why = append(why, e.Error())
	}
	for _, want := range []string{`peer "node-d" ignored`, `peer "node-e" ignored`, `"node-f": invalid desired dataplane state: block 10.32.0.0/26 is ignored: this node`, `block 10.32.1.0/26 is ignored: peer "node-b"`} {
		if !slices.ContainsFunc(why, func(s string) bool { return strings.Contains(s, want) }) {
			t.Errorf("Ignored lacks %q:\n%s", want, strings.Join(why, "\n"))
		}
	}
	if len(res.Ignored) != 4 {
		t.Errorf("got %d ignored, want 4:\n%s", len(res.Ignored), strings.Join(why, "\n"))
	}
	want := desiredA(true)
	want.Peers = append(slices.Clone(good), Peer{Name: "node-f", UnderlayIP: ip("198.18.0.6"),
		MAC: mustMAC("02:00:00:00:00:0f"), TunnelIP: ip("10.32.2.128"), Blocks: []netip.Prefix{cidr("10.32.2.128/26")}})
	if got, want := render(res.Ops), render(Plan(want, Observed{})); got != want {
		t.Errorf("applied\n%s\nwant the plan without the bad parts\n%s", got, want)
	}
}

func BenchmarkPlan1000Peers(b *testing.B) {
	d := desiredA(true)
	d.ClusterCIDR = cidr("10.0.0.0/8")
	d.Peers = nil
	for i := range 1000 {
		name := fmt.Sprintf("node-%04d", i)
		base := netip.AddrFrom4([4]byte{10, 64 + byte(i/256), byte(i % 256), 0})
		d.Peers = append(d.Peers, Peer{
			Name:       name,
			UnderlayIP: netip.AddrFrom4([4]byte{198, 18, byte(1 + i/256), byte(i % 256)}),
			MAC:        VTEPMAC(name),
			TunnelIP:   base,
			Blocks:     []netip.Prefix{netip.PrefixFrom(base, 26), netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 64 + byte(i/256), byte(i % 256), 64}), 26)},
		})
	}
	if err := d.Validate(); err != nil {
		b.Fatal(err)
	}
	o := converged(d)
	if ops := Plan(d, o); len(ops) != 0 {
		b.Fatalf("converged state plans %d ops, first %s", len(ops), ops[0])
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = Plan(d, o)
	}
}

func TestAggregate(t *testing.T) {
	for _, tc := range []struct {
		in, want string
	}{
		{"", ""},
		{"10.32.0.0/26", "10.32.0.0/26"},
		{"10.32.0.64/26 10.32.0.0/26", "10.32.0.0/25"},
		{"10.32.0.0/26 10.32.0.64/26 10.32.0.128/26 10.32.0.192/26", "10.32.0.0/24"},
		{"10.32.0.0/26 10.32.0.64/26 10.32.0.128/26", "10.32.0.0/25 10.32.0.128/26"},
		{"10.32.0.64/26 10.32.0.128/26", "10.32.0.64/26 10.32.0.128/26"}, // adjacent, not one aligned prefix
		{"10.32.0.0/26 10.32.0.0/26", "10.32.0.0/26"},
		{"10.32.0.0/24 10.32.0.64/26", "10.32.0.0/24"},
		{"10.32.0.0/26 10.32.1.0/26", "10.32.0.0/26 10.32.1.0/26"},
	} {
		var in []netip.Prefix
		for _, f := range strings.Fields(tc.in) {
			in = append(in, netip.MustParsePrefix(f))
		}
		var got []string
		for _, p := range Aggregate(in) {
			got = append(got, p.String())
		}
		if strings.Join(got, " ") != tc.want {
			t.Errorf("Aggregate(%s) = %v, want %s", tc.in, got, tc.want)
		}
	}
}

// countingKernel counts the kernel reads.
type countingKernel struct {
	*FakeKernel
	reads int
}

func (k *countingKernel) Observe(bridge, vxlan string) (Observed, error) {
	k.reads++
	return k.FakeKernel.Observe(bridge, vxlan)
}

// TestUpdatePlansFromTheModel: Update reads the kernel only when the model is unknown, plans
// peer changes from the model, and leaves drift made by someone else to Reconcile.
func TestUpdatePlansFromTheModel(t *testing.T) {
	k := &countingKernel{FakeKernel: &FakeKernel{}}
	r := NewReconciler(k)
	d := desiredA(true)
	peers := d.Peers
	d.Peers = peers[:1]
	res, err := r.Update(d) // no model yet: reads
	if err != nil || !res.Read || k.reads != 1 {
		t.Fatalf("first Update: read %v, %d reads, err %v", res.Read, k.reads, err)
	}
	// The links it made are not modelled: the next Update reads again.
	if res, err = r.Update(d); err != nil || !res.Read || len(res.Ops) != 0 {
		t.Fatalf("second Update: read %v, ops %v, err %v", res.Read, render(res.Ops), err)
	}
	reads := k.reads
	d.Peers = peers // a peer joined
	res, err = r.Update(d)
	if err != nil || res.Read || k.reads != reads || len(res.Ops) == 0 {
		t.Fatalf("Update for a new peer: read %v, reads %d -> %d, ops %v, err %v", res.Read, reads, k.reads, render(res.Ops), err)
	}
	if res, _ = r.Update(d); res.Read || len(res.Ops) != 0 {
		t.Errorf("Update after it converged: read %v, ops\n%s", res.Read, render(res.Ops))
	}
	// Someone deletes a route behind weft's back: Update does not see it, Reconcile does.
	k.State.Routes = k.State.Routes[1:]
	if res, _ = r.Update(d); len(res.Ops) != 0 {
		t.Errorf("Update saw drift it cannot know of:\n%s", render(res.Ops))
	}
	if res, _ = r.Reconcile(d); !res.Read || len(res.Ops) != 1 {
		t.Errorf("Reconcile after the drift: read %v, ops\n%s", res.Read, render(res.Ops))
	}
	if res, _ = r.Update(d); len(res.Ops) != 0 {
		t.Errorf("Update after the repair:\n%s", render(res.Ops))
	}
	// A failed op forgets the model.
	k.Fail = func(Op) error { return errors.New("injected") }
	d.Peers = peers[:1]
	if _, err := r.Update(d); err == nil {
		t.Fatal("Update with a failing kernel succeeded")
	}
	k.Fail = nil
	reads = k.reads
	if res, _ = r.Update(d); !res.Read || k.reads != reads+1 {
		t.Errorf("Update after a failed op did not read the kernel (read %v)", res.Read)
	}
}
