package dataplane

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/weftnet/weft/internal/testutil"
	"golang.org/x/sys/unix"
)

// The namespace helpers these tests share with other packages' (testutil).
var (
	inNS     = testutil.InNS
	run      = testutil.Run
	servePod = testutil.Serve
	ask      = testutil.Ask
)

// Real-kernel tests. Each works in throwaway namespaces from testutil.NewNS, enters them
// only inside ns.Do (locked OS thread), and inspects the result with iproute2 and nft, so
// the checks do not share code with what they check.

func reconcile(t *testing.T, n ns.NetNS, r *Reconciler, d Desired) []string {
	t.Helper()
	var res Result
	inNS(t, n, func() error {
		var err error
		res, err = r.Reconcile(d)
		return err
	})
	return strings.Split(strings.TrimSuffix(render(res.Ops), "\n"), "\n")
}

// addVeth creates a veth pair in n: name (up, with addr) and name+"p" (up), as an underlay.
func addVeth(t *testing.T, n ns.NetNS, name, addr string) {
	t.Helper()
	inNS(t, n, func() error {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: 1500}, PeerName: name + "p"}
		if err := netlink.LinkAdd(v); err != nil {
			return err
		}
		a, err := netlink.ParseAddr(addr)
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(v, a); err != nil {
			return err
		}
		for _, l := range []string{name, name + "p"} {
			if err := netlink.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: l}}); err != nil {
				return err
			}
		}
		return nil
	})
}

// kernelDesired is desiredA on a veth underlay named eth0.
func kernelDesired(prune bool) Desired {
	d := desiredA(prune)
	d.VXLAN.Underlay = "eth0"
	d.MTU = MTUFor(1500)
	return d
}

// view is the kernel state weft manages, as iproute2 and nft print it, normalised to sorted
// lines.
type view struct {
	Bridge, VXLAN string
	Addrs         []string
	Routes        []string
	Neighs        []string
	FDB           []string // entries with a remote
	IPForward     string
	NAT           []string // chain header and rules of table ip weft
}

func readView(t *testing.T, n ns.NetNS, d Desired) view {
	t.Helper()
	var v view
	v.Bridge = linkLine(t, n, d.Bridge.Name)
	v.VXLAN = linkLine(t, n, d.VXLAN.Name)

	for _, dev := range []string{d.Bridge.Name, d.VXLAN.Name} {
		var links []struct {
			AddrInfo []struct {
				Local     string `json:"local"`
				Prefixlen int    `json:"prefixlen"`
			} `json:"addr_info"`
		}
		decode(t, run(t, n, "ip", "-4", "-j", "addr", "show", "dev", dev), &links)
		for _, l := range links {
			for _, a := range l.AddrInfo {
				v.Addrs = append(v.Addrs, fmt.Sprintf("%s/%d dev %s", a.Local, a.Prefixlen, dev))
			}
		}
	}

	var routes []struct {
		Dst, Gateway, Dev, Scope, Prefsrc string
		Metric                            int
		Flags                             []string
	}
	decode(t, run(t, n, "ip", "-j", "route", "show", "table", "main", "proto", "0x77"), &routes)
	for _, r := range routes {
		s := r.Dst
		if r.Gateway != "" {
			s += " via " + r.Gateway
		}
		s += " dev " + r.Dev
		if r.Scope != "" {
			s += " scope " + r.Scope
		}
		if r.Prefsrc != "" {
			s += " src " + r.Prefsrc
		}
		if r.Metric != 0 {
			s += fmt.Sprintf(" metric %d", r.Metric)
		}
		if slices.Contains(r.Flags, "onlink") {
			s += " onlink"
		}
		v.Routes = append(v.Routes, s)
	}

	var neighs []struct {
		Dst, Lladdr string
		State       []string
	}
	decode(t, run(t, n, "ip", "-j", "neigh", "show", "dev", d.VXLAN.Name), &neighs)
	for _, e := range neighs {
		v.Neighs = append(v.Neighs, fmt.Sprintf("%s lladdr %s %s", e.Dst, e.Lladdr, strings.Join(e.State, ",")))
	}

	var fdb []struct {
		Mac, Dst, State string
		Flags           []string
	}
	decode(t, run(t, n, "bridge", "-j", "fdb", "show", "dev", d.VXLAN.Name), &fdb)
	for _, e := range fdb {
		if e.Dst != "" {
			v.FDB = append(v.FDB, fmt.Sprintf("%s dst %s %s %s", e.Mac, e.Dst, strings.Join(e.Flags, ","), e.State))
		}
	}

	v.IPForward = strings.TrimSpace(run(t, n, "sysctl", "-n", "net.ipv4.ip_forward"))

	var nftOut []byte
	inNS(t, n, func() error {
		nftOut, _ = exec.Command("nft", "list", "table", "ip", NFTTable).CombinedOutput() // fails when absent
		return nil
	})
	for _, line := range strings.Split(string(nftOut), "\n") {
		line = strings.TrimSpace(line)
		if line != "" && line != "}" && !strings.HasPrefix(line, "table ") {
			v.NAT = append(v.NAT, line)
		}
	}
	for _, s := range [][]string{v.Addrs, v.Routes, v.Neighs, v.FDB} {
		slices.Sort(s)
	}
	return v
}

func linkLine(t *testing.T, n ns.NetNS, name string) string {
	var links []struct {
		Ifname, Address string
		MTU             int
		Flags           []string
		Linkinfo        struct {
			InfoKind string `json:"info_kind"`
			InfoData struct {
				ID       int    `json:"id"`
				Local    string `json:"local"`
				Link     string `json:"link"`
				Port     int    `json:"port"`
				Learning *bool  `json:"learning"`
			} `json:"info_data"`
		}
	}
	var out []byte
	inNS(t, n, func() error {
		out, _ = exec.Command("ip", "-d", "-j", "link", "show", "dev", name).Output() // empty when absent
		return nil
	})
	if len(out) == 0 {
		return "absent"
	}
	decode(t, string(out), &links)
	l := links[0]
	s := fmt.Sprintf("%s kind %s mtu %d up %t", l.Ifname, l.Linkinfo.InfoKind, l.MTU, slices.Contains(l.Flags, "UP"))
	if i := l.Linkinfo.InfoData; l.Linkinfo.InfoKind == "vxlan" {
		s += fmt.Sprintf(" address %s id %d local %s link %s port %d learning %v", l.Address, i.ID, i.Local, i.Link, i.Port, *i.Learning)
	}
	return s
}

func decode(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("decoding %q: %v", s, err)
	}
}

// expectedView is what d asks for, written independently of Plan, plus FDB entries that
// are not weft's.
func expectedView(d Desired, foreignFDB ...string) view {
	v := view{
		Bridge:    fmt.Sprintf("%s kind bridge mtu %d up true", d.Bridge.Name, d.MTU),
		VXLAN:     fmt.Sprintf("%s kind vxlan mtu %d up true address %s id %d local %s link %s port %d learning false", d.VXLAN.Name, d.MTU, d.VXLAN.MAC, d.VXLAN.VNI, d.VXLAN.UnderlayIP, d.VXLAN.Underlay, d.VXLAN.Port),
		Addrs:     []string{fmt.Sprintf("%s/32 dev %s", d.Bridge.Gateway, d.Bridge.Name), fmt.Sprintf("%s/32 dev %s", d.VXLAN.TunnelIP, d.VXLAN.Name)},
		IPForward: "1",
		NAT: []string{
			"chain prerouting {",
			"type filter hook prerouting priority raw; policy accept;",
			fmt.Sprintf(`udp dport %[1]d notrack comment "weft: notrack vxlan %[1]d"`, d.VXLAN.Port),
			"chain output {",
			"type filter hook output priority raw; policy accept;",
			fmt.Sprintf(`udp dport %[1]d notrack comment "weft: notrack vxlan %[1]d"`, d.VXLAN.Port),
		},
	}
	for _, chain := range []string{"hostports-prerouting {", "type nat hook prerouting priority dstnat; policy accept;",
		"hostports-output {", "type nat hook output priority -100; policy accept;"} {
		if strings.HasSuffix(chain, "{") {
			v.NAT = append(v.NAT, "chain "+chain)
			continue
		}
		v.NAT = append(v.NAT, chain)
		for _, h := range sortedHostPorts(d.HostPorts) {
			match := "fib daddr type local ip daddr != 127.0.0.0/8"
			host := fmt.Sprint(h.HostPort)
			if h.HostIP.IsValid() {
				match, host = "ip daddr "+h.HostIP.String(), h.HostIP.String()+":"+host
			}
			v.NAT = append(v.NAT, fmt.Sprintf(`%s %s dport %d dnat to %s:%d comment "weft: hostport %s %s %s:%d"`,
				match, h.Protocol, h.HostPort, h.PodIP, h.PodPort, h.Protocol, host, h.PodIP, h.PodPort))
		}
	}
	v.NAT = append(v.NAT,
		"chain postrouting {",
		"type nat hook postrouting priority srcnat; policy accept;",
		fmt.Sprintf(`ip saddr %[1]s ip daddr != %[1]s masquerade comment "weft: masquerade %[1]s"`, d.ClusterCIDR),
		fmt.Sprintf(`iifname "%[1]s" oifname "%[1]s" ct status dnat masquerade comment "weft: hairpin masquerade bridge %[1]s"`, d.Bridge.Name),
	)
	pods := map[netip.Addr]bool{}
	for _, h := range d.HostPorts {
		pods[h.PodIP] = true
	}
	for _, pod := range slices.SortedFunc(maps.Keys(pods), netip.Addr.Compare) {
		v.NAT = append(v.NAT, fmt.Sprintf(`ip saddr %[1]s ip daddr %[1]s ct status dnat masquerade comment "weft: hairpin masquerade pod %[1]s"`, pod))
	}
	for _, b := range d.Bridge.Blocks {
		v.Routes = append(v.Routes, fmt.Sprintf("%s dev %s scope link src %s", b, d.Bridge.Name, d.Bridge.Gateway))
	}
	for _, p := range d.Peers {
		for _, b := range p.Blocks {
			v.Routes = append(v.Routes, fmt.Sprintf("%s via %s dev %s onlink", b, p.TunnelIP, d.VXLAN.Name))
		}
		v.Neighs = append(v.Neighs, fmt.Sprintf("%s lladdr %s PERMANENT", p.TunnelIP, p.MAC))
		v.FDB = append(v.FDB, fmt.Sprintf("%s dst %s self permanent", p.MAC, p.UnderlayIP))
	}
	v.FDB = append(v.FDB, foreignFDB...)
	for _, s := range [][]string{v.Addrs, v.Routes, v.Neighs, v.FDB} {
		slices.Sort(s)
	}
	return v
}

func checkView(t *testing.T, n ns.NetNS, d Desired, want view) {
	t.Helper()
	got := readView(t, n, d)
	g, _ := json.MarshalIndent(got, "", "  ")
	w, _ := json.MarshalIndent(want, "", "  ")
	if string(g) != string(w) {
		t.Fatalf("kernel state differs\n--- got\n%s\n--- want\n%s", g, w)
	}
}

func checkOps(t *testing.T, got []string, want ...string) {
	t.Helper()
	if len(want) == 0 {
		want = []string{""}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("applied ops\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestKernelReconcile(t *testing.T) {
	n := testutil.NewNS(t)
	addVeth(t, n, "eth0", "198.18.0.1/15")
	d := kernelDesired(true)
	r := NewReconciler(NewKernel())

	t.Log("from an empty namespace: everything is set up")
	if ops := reconcile(t, n, r, d); len(ops) != len(Plan(d, Observed{})) {
		t.Errorf("first reconcile applied %d ops, want the full plan of %d:\n%s", len(ops), len(Plan(d, Observed{})), strings.Join(ops, "\n"))
	}
	checkView(t, n, d, expectedView(d))

	t.Log("again: nothing to do, although the device has FDB entries that are not weft's")
	run(t, n, "bridge", "fdb", "append", "00:00:00:00:00:00", "dst", "198.18.0.77", "dev", VXLANName, "self", "permanent")
	const flood = "00:00:00:00:00:00 dst 198.18.0.77 self permanent"
	checkOps(t, reconcile(t, n, r, d))

	t.Log("a route deleted by hand comes back, and only it")
	run(t, n, "ip", "route", "del", "10.32.1.0/26")
	checkOps(t, reconcile(t, n, r, d), "route add 10.32.1.0/26 via 10.32.0.64 dev weft-vxlan onlink proto 0x77")
	checkView(t, n, d, expectedView(d, flood))

	t.Log("drift everywhere else is repaired in place")
	run(t, n, "ip", "link", "set", VXLANName, "mtu", "1400", "address", "02:00:00:00:00:99")
	run(t, n, "ip", "link", "set", BridgeName, "down") // the kernel drops the bridge's routes with it
	run(t, n, "ip", "neigh", "replace", "10.32.0.64", "lladdr", "02:00:00:00:00:99", "dev", VXLANName, "nud", "permanent")
	run(t, n, "bridge", "fdb", "replace", macC.String(), "dst", "198.18.0.99", "dev", VXLANName, "self", "permanent")
	run(t, n, "ip", "neigh", "replace", "10.32.0.128", "lladdr", macC.String(), "dev", VXLANName, "nud", "reachable")
	run(t, n, "bridge", "fdb", "replace", macB.String(), "dst", "198.18.0.2", "dev", VXLANName, "self", "dynamic")
	run(t, n, "ip", "route", "replace", "10.32.0.128/26", "via", "10.32.0.64", "dev", VXLANName, "onlink", "proto", "0x77")
	run(t, n, "nft", "add", "rule", "ip", NFTTable, "postrouting", "counter")
	inNS(t, n, func() error { return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("0"), 0o644) })
	checkOps(t, reconcile(t, n, r, d),
		"link set weft up",
		"link set weft-vxlan mtu 1450",
		"link set weft-vxlan address 02:00:00:00:00:0a",
		"neigh replace 10.32.0.64 lladdr 02:00:00:00:00:0b dev weft-vxlan nud permanent",
		"neigh replace 10.32.0.128 lladdr 02:00:00:00:00:0c dev weft-vxlan nud permanent",
		"fdb replace 02:00:00:00:00:0b dst 198.18.0.2 dev weft-vxlan self permanent",
		"fdb replace 02:00:00:00:00:0c dst 198.18.0.3 dev weft-vxlan self permanent",
		"route add 10.32.0.0/26 dev weft scope link src 10.32.0.1 proto 0x77",
		"route replace 10.32.0.128/26 via 10.32.0.128 dev weft-vxlan onlink proto 0x77",
		"route add 10.32.1.128/26 dev weft scope link src 10.32.0.1 proto 0x77",
		"sysctl net.ipv4.ip_forward=1",
		rebuildTable,
	)
	checkView(t, n, d, expectedView(d, flood))
	checkOps(t, reconcile(t, n, r, d))

	t.Log("a peer gone without Prune: its entries stay")
	gone := d
	gone.Prune = false
	gone.Peers = d.Peers[:1]
	checkOps(t, reconcile(t, n, r, gone))
	checkView(t, n, d, expectedView(d, flood))

	t.Log("a peer gone with Prune: its entries, and only they, go")
	gone.Prune = true
	checkOps(t, reconcile(t, n, r, gone),
		"route del 10.32.0.128/26 via 10.32.0.128 dev weft-vxlan onlink proto 0x77",
		"route del 10.32.1.64/26 via 10.32.0.128 dev weft-vxlan onlink proto 0x77",
		"neigh del 10.32.0.128 lladdr 02:00:00:00:00:0c dev weft-vxlan",
		"fdb del 02:00:00:00:00:0c dst 198.18.0.3 dev weft-vxlan self",
	)
	checkView(t, n, gone, expectedView(gone, flood))

	t.Log("a VXLAN device with another VNI is replaced, and what hung on it restored")
	run(t, n, "ip", "link", "del", VXLANName)
	run(t, n, "ip", "link", "add", VXLANName, "type", "vxlan", "id", "2", "dstport", "6784", "local", "198.18.0.1", "dev", "eth0", "nolearning")
	ops := reconcile(t, n, r, d)
	if len(ops) < 3 || ops[0] != "link del weft-vxlan" || !strings.HasPrefix(ops[1], "link add weft-vxlan type vxlan id 1 ") {
		t.Fatalf("ops do not recreate the device:\n%s", strings.Join(ops, "\n"))
	}
	checkView(t, n, d, expectedView(d))
	checkOps(t, reconcile(t, n, r, d))

	t.Log("a chain of the wrong kind is replaced in one transaction")
	run(t, n, "nft", "delete", "table", "ip", NFTTable)
	run(t, n, "nft", "add", "table", "ip", NFTTable)
	run(t, n, "nft", "add", "chain", "ip", NFTTable, "postrouting", "{ type nat hook postrouting priority 0; }")
	run(t, n, "nft", "add", "rule", "ip", NFTTable, "postrouting", "ip saddr 10.32.0.0/16 ip daddr != 10.32.0.0/16 masquerade")
	checkOps(t, reconcile(t, n, r, d), rebuildTable)
	checkView(t, n, d, expectedView(d))
	checkOps(t, reconcile(t, n, r, d))

	t.Log("raw chains: each kind of drift is repaired by one rebuild of the table")
	for _, drift := range []struct {
		what string
		nft  []string // nft commands, one each
	}{
		{"a foreign rule", []string{"add rule ip weft output udp dport 4789 notrack"}},
		{"a missing chain", []string{"delete chain ip weft prerouting"}},
		{"the notrack rule of another port", []string{
			"flush chain ip weft output",
			`add rule ip weft output udp dport 4789 notrack comment "weft: notrack vxlan 4789"`}},
		{"a chain at filter priority (after conntrack: too late)", []string{
			"delete chain ip weft output",
			"add chain ip weft output { type filter hook output priority filter; }",
			`add rule ip weft output udp dport 6784 notrack comment "weft: notrack vxlan 6784"`}},
	} {
		t.Log(drift.what)
		for _, cmd := range drift.nft {
			run(t, n, "nft", cmd)
		}
		checkOps(t, reconcile(t, n, r, d), rebuildTable)
		checkView(t, n, d, expectedView(d))
	}
	checkOps(t, reconcile(t, n, r, d))

	t.Log("another VXLAN port: the notrack rules follow it")
	other := d
	other.VXLAN.Port = 4789
	ops = reconcile(t, n, r, other)
	if last := ops[len(ops)-1]; last != strings.Replace(rebuildTable, "dport 6784", "dport 4789", 1) {
		t.Fatalf("last op %q, want the table rebuilt for port 4789", last)
	}
	checkView(t, n, other, expectedView(other))
	checkOps(t, reconcile(t, n, r, other))
}

// rebuildTable is the op that rebuilds table ip weft for kernelDesired.
const rebuildTable = "nft rebuild table ip weft { postrouting: ip saddr 10.32.0.0/16 ip daddr != 10.32.0.0/16 masquerade, iifname weft oifname weft ct status dnat masquerade; prerouting, output: udp dport 6784 notrack; hostports: none }"

// weft's rules are written the way the kernel hands them back, so a converged table plans
// nothing; the notrack rule also the way nft writes it. Only a rule with weft's comment and
// exactly weft's expressions counts as weft's.
func TestKernelNFTRuleForm(t *testing.T) {
	n := testutil.NewNS(t)
	cluster := cidr("10.32.0.0/16")
	d := desiredHP(true)
	d.HostPorts = append(d.HostPorts, HostPort{Protocol: "sctp", HostPort: 9, PodIP: ip("10.32.0.7"), PodPort: 65535})
	op := wantTable(d)
	inNS(t, n, func() error {
		if err := NewKernel().Apply(op); err != nil {
			return err
		}
		c, err := nftables.New()
		if err != nil {
			return err
		}
		table, chains, err := findTable(c)
		if err != nil {
			return err
		}
		var hostPorts [][]expr.Any
		for _, h := range op.HostPorts {
			hostPorts = append(hostPorts, hostPortExprs(h))
		}
		for _, x := range []struct {
			chain string
			want  [][]expr.Any
		}{
			{"prerouting", [][]expr.Any{notrackExprs(VXLANPort)}},
			{"output", [][]expr.Any{notrackExprs(VXLANPort)}},
			{"hostports-prerouting", hostPorts},
			{"hostports-output", hostPorts},
			{"postrouting", [][]expr.Any{masqExprs(cluster), hairpinExprs(BridgeName),
				hairpinPodExprs(ip("10.32.0.5")), hairpinPodExprs(ip("10.32.0.6")), hairpinPodExprs(ip("10.32.0.7")), hairpinPodExprs(ip("10.32.1.130"))}},
		} {
			if chains[x.chain] == nil {
				return fmt.Errorf("chain %s missing after the rebuild", x.chain)
			}
			rules, err := c.GetRules(table, chains[x.chain])
			if err != nil {
				return err
			}
			if len(rules) != len(x.want) {
				return fmt.Errorf("chain %s has %d rules, want %d", x.chain, len(rules), len(x.want))
			}
			for i, r := range rules {
				if !reflect.DeepEqual(r.Exprs, x.want[i]) {
					return fmt.Errorf("chain %s rule %d: the kernel hands back\n%s\nweft writes\n%s", x.chain, i, exprs(r.Exprs), exprs(x.want[i]))
				}
			}
		}
		got, err := observeNAT()
		if err != nil {
			return err
		}
		if !natConverged(got, op) {
			return fmt.Errorf("the table just written does not read back as converged: %s", natJSON(got))
		}
		var model Observed // the fake kernel's, and Reconciler.Update's
		if err := model.apply(op); err != nil {
			return err
		}
		if !reflect.DeepEqual(got, model.NAT) {
			return fmt.Errorf("the kernel reads back\n%s\nthe model has\n%s", natJSON(got), natJSON(model.NAT))
		}
		return nil
	})
	t.Log("an op that cannot be written changes nothing")
	before := run(t, n, "nft", "list", "table", "ip", NFTTable)
	bad := op
	bad.HostPorts = append(slices.Clone(op.HostPorts), HostPort{Protocol: "tcp", HostPort: 1, PodIP: ip("10.32.0.9")})
	inNS(t, n, func() error {
		if err := NewKernel().Apply(bad); !errors.Is(err, ErrInvalidDesired) || !strings.Contains(err.Error(), "pod port 0") {
			return fmt.Errorf("applying a host port without pod port: err = %v, want ErrInvalidDesired about it", err)
		}
		return nil
	})
	if after := run(t, n, "nft", "list", "table", "ip", NFTTable); after != before {
		t.Fatalf("a refused rebuild changed the table:\n%s\nwas\n%s", after, before)
	}

	t.Log("weft's host port and hairpin rules as nft writes them are weft's; near misses are not")
	run(t, n, "nft", "flush table ip weft")
	for _, rule := range []string{
		`hostports-prerouting fib daddr type local ip daddr != 127.0.0.0/8 tcp dport 18080 dnat to 10.32.0.5:8080 comment "weft: hostport tcp 18080 10.32.0.5:8080"`,
		`hostports-prerouting ip daddr 198.18.0.1 tcp dport 8443 dnat to 10.32.1.130:443 comment "weft: hostport tcp 198.18.0.1:8443 10.32.1.130:443"`,
		`hostports-prerouting fib daddr type local tcp dport 18080 dnat to 10.32.0.5:8080 comment "weft: hostport tcp 18080 10.32.0.5:8080"`,                         // localhost too
		`hostports-prerouting fib daddr type local ip daddr != 127.0.0.0/8 tcp dport 18080 dnat to 10.32.0.5:8081 comment "weft: hostport tcp 18080 10.32.0.5:8080"`, // pod port differs
		`hostports-prerouting fib daddr type local ip daddr != 127.0.0.0/8 udp dport 18080 dnat to 10.32.0.5:8080 comment "weft: hostport tcp 18080 10.32.0.5:8080"`, // protocol differs
		`hostports-prerouting ip daddr 198.18.0.1 tcp dport 8443 dnat to 10.32.1.130:443 comment "weft: hostport tcp 8443 10.32.1.130:443"`,                          // address not in the comment
		`hostports-prerouting fib daddr type local ip daddr != 127.0.0.0/8 tcp dport 18080 counter dnat to 10.32.0.5:8080 comment "weft: hostport tcp 18080 10.32.0.5:8080"`,
		`hostports-prerouting fib daddr type local ip daddr != 127.0.0.0/8 tcp dport 18080 dnat to 10.32.0.5:8080 comment "weft: hostport tcp 018080 10.32.0.5:8080"`,
		`hostports-prerouting fib daddr type local ip daddr != 127.0.0.0/8 tcp dport 18080 dnat to 10.32.0.5:8080`,
		`postrouting iifname "weft" oifname "weft" ct status dnat masquerade comment "weft: hairpin masquerade bridge weft"`,
		`postrouting ip saddr 10.32.0.5 ip daddr 10.32.0.5 ct status dnat masquerade comment "weft: hairpin masquerade pod 10.32.0.5"`,
		`postrouting iifname "weft" oifname "weft" ct status dnat masquerade comment "weft: hairpin masquerade bridge cni0"`,
		`postrouting oifname "weft" ct status dnat masquerade comment "weft: hairpin masquerade bridge weft"`,
		`postrouting iifname "weft" oifname "weft" ct status snat masquerade comment "weft: hairpin masquerade bridge weft"`,
		`postrouting iifname "weft*" oifname "weft" ct status dnat masquerade comment "weft: hairpin masquerade bridge weft"`,
		`postrouting ip saddr 10.32.0.5 ip daddr 10.32.0.6 ct status dnat masquerade comment "weft: hairpin masquerade pod 10.32.0.5"`,
		`postrouting ip saddr 10.32.0.5 ip daddr 10.32.0.5 masquerade comment "weft: hairpin masquerade pod 10.32.0.5"`,
		`postrouting ip saddr 10.32.0.5 ip daddr 10.32.0.5 ct status dnat masquerade comment "weft: hairpin masquerade pod 10.32.0.005"`,
	} {
		run(t, n, "nft", "add rule ip weft "+rule)
	}
	var got NAT
	inNS(t, n, func() (err error) { got, err = observeNAT(); return err })
	wantHP := []HostPort{d.HostPorts[0], d.HostPorts[2], {}, {}, {}, {}, {}, {}, {}}
	if got.HostPortsPrerouting == nil || !slices.Equal(got.HostPortsPrerouting.Rules, wantHP) {
		t.Errorf("hostports-prerouting rules read as %s, want %v", natJSON(got), wantHP)
	}
	wantPost := []NATRule{{Hairpin: "weft"}, {HairpinPod: ip("10.32.0.5")}, {}, {}, {}, {}, {}, {}, {}}
	if got.Chain == nil || !slices.Equal(got.Chain.Rules, wantPost) {
		t.Errorf("postrouting rules read as %s, want %v", natJSON(got), wantPost)
	}

	t.Log("the raw chains as nft writes them are weft's")
	run(t, n, "nft", "delete table ip weft")
	run(t, n, "nft", `add table ip weft; `+
		`add chain ip weft prerouting { type filter hook prerouting priority raw; policy accept; }; `+
		`add chain ip weft output { type filter hook output priority raw; policy accept; }; `+
		`add rule ip weft prerouting udp dport 6784 notrack comment "weft: notrack vxlan 6784"; `+
		`add rule ip weft output udp dport 6784 notrack comment "weft: notrack vxlan 6784"`)
	inNS(t, n, func() (err error) { got, err = observeNAT(); return err })
	if !rawConverged(got.Prerouting, "prerouting", VXLANPort) || !rawConverged(got.Output, "output", VXLANPort) {
		t.Fatalf("nft's own form of the notrack rules is not recognised: %s", natJSON(got))
	}

	t.Log("near misses are not weft's rules")
	for _, rule := range []string{
		`udp dport 6784 counter notrack comment "weft: notrack vxlan 6784"`, // another expression
		`tcp dport 6784 notrack comment "weft: notrack vxlan 6784"`,         // another protocol
		`udp dport 6785 notrack comment "weft: notrack vxlan 6784"`,         // port differs from the comment
		`udp sport 6784 notrack comment "weft: notrack vxlan 6784"`,         // source port
		`udp dport 6784 notrack comment "weft: notrack vxlan"`,              // comment without a port
		`udp dport 6784 notrack`,                                            // no comment
	} {
		run(t, n, "nft", "add rule ip weft prerouting "+rule)
	}
	inNS(t, n, func() (err error) { got, err = observeNAT(); return err })
	if want := []int{6784, 0, 0, 0, 0, 0, 0}; got.Prerouting == nil || !slices.Equal(got.Prerouting.Rules, want) {
		t.Fatalf("prerouting rules read as %s, want ports %v", natJSON(got), want)
	}
}

func exprs(es []expr.Any) string {
	var b strings.Builder
	for _, e := range es {
		fmt.Fprintf(&b, "  %#v\n", e)
	}
	return b.String()
}

func natJSON(n NAT) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// Apply is idempotent on its own: adding what exists as asked and deleting what is gone
// are not errors, but a foreign route in the way is, with advice.
func TestKernelApplyIdempotent(t *testing.T) {
	n := testutil.NewNS(t)
	addVeth(t, n, "eth0", "198.18.0.1/15")
	d := kernelDesired(true)
	k := NewKernel()
	reconcile(t, n, NewReconciler(k), d)

	peerRoute := Route{Dst: cidr("10.32.1.0/26"), Gw: ip("10.32.0.64"), Dev: VXLANName, OnLink: true}
	gone := Route{Dst: cidr("10.99.0.0/26"), Gw: ip("10.32.0.64"), Dev: VXLANName, OnLink: true}
	inNS(t, n, func() error {
		for _, op := range []Op{
			LinkAdd{Link: wantVXLAN(d)},
			LinkAdd{Link: wantBridge(d)},
			AddrAdd{Addr: Addr{Dev: BridgeName, Prefix: netip.PrefixFrom(d.Bridge.Gateway, 32)}},
			RouteAdd{Route: peerRoute},
			NeighSet{Neigh: Neigh{Dev: VXLANName, IP: ip("10.32.0.64"), MAC: macB}},
			FDBSet{FDB: FDB{Dev: VXLANName, MAC: macB, Dst: ip("198.18.0.2")}},
			SysctlSet{Key: ipForward, Value: "1"},
			wantTable(d),
			RouteDel{Route: gone},
			NeighDel{Neigh: Neigh{Dev: VXLANName, IP: ip("10.32.9.9")}},
			FDBDel{FDB: FDB{Dev: VXLANName, MAC: mustMAC("02:00:00:00:00:77"), Dst: ip("198.18.0.77")}},
			AddrDel{Addr: Addr{Dev: BridgeName, Prefix: cidr("10.32.9.1/32")}},
			LinkDel{Name: "no-such-link"},
			RouteDel{Route: Route{Dst: cidr("10.99.0.0/26"), Dev: "no-such-link"}},
		} {
			if err := k.Apply(op); err != nil {
				return fmt.Errorf("repeating %q: %w", op, err)
			}
		}
		return nil
	})
	checkView(t, n, d, expectedView(d))

	run(t, n, "ip", "route", "add", "10.77.0.0/26", "dev", BridgeName, "proto", "static")
	inNS(t, n, func() error {
		err := k.Apply(RouteAdd{Route: Route{Dst: cidr("10.77.0.0/26"), Gw: ip("10.32.0.64"), Dev: VXLANName, OnLink: true}})
		if err == nil || !strings.Contains(err.Error(), "did not install") {
			return fmt.Errorf("adding over a foreign route: err = %v, want one saying it is not weft's", err)
		}
		err = k.Apply(LinkAdd{Link: Link{Name: VXLANName, Kind: "vxlan", VNI: 9, Port: VXLANPort, Local: d.VXLAN.UnderlayIP, Underlay: "eth0", MTU: 1450}})
		if err == nil {
			return errors.New("adding a VXLAN device over one with another VNI succeeded")
		}
		err = k.Apply(LinkAdd{Link: Link{Name: "weft-x", Kind: "vxlan", VNI: 9, Port: VXLANPort, Local: d.VXLAN.UnderlayIP, Underlay: "eth9", MTU: 1450}})
		if err == nil || !strings.Contains(err.Error(), "VXLAN.Underlay") {
			return fmt.Errorf("missing underlay: err = %v, want advice about VXLAN.Underlay", err)
		}
		return nil
	})
}

func TestUnderlayDiscovery(t *testing.T) {
	n := testutil.NewNS(t)
	inNS(t, n, func() error {
		if _, err := DefaultUnderlayIP(); !errors.Is(err, ErrNoUnderlay) {
			return fmt.Errorf("empty namespace: DefaultUnderlayIP err = %v, want ErrNoUnderlay", err)
		}
		return nil
	})

	addVeth(t, n, "eth0", "198.18.0.1/15")
	addVeth(t, n, "eth1", "192.0.2.10/24")
	inNS(t, n, func() error {
		if got, err := DefaultUnderlayIP(); err != nil || got != ip("198.18.0.1") {
			return fmt.Errorf("no default route: DefaultUnderlayIP = %v, %v; want the first global address 198.18.0.1", got, err)
		}
		return nil
	})
	run(t, n, "ip", "route", "add", "default", "via", "192.0.2.1", "dev", "eth1")
	inNS(t, n, func() error {
		if got, err := DefaultUnderlayIP(); err != nil || got != ip("192.0.2.10") {
			return fmt.Errorf("default route on eth1: DefaultUnderlayIP = %v, %v; want 192.0.2.10", got, err)
		}
		return nil
	})
	run(t, n, "ip", "addr", "add", "192.0.2.20/32", "dev", "eth1")
	run(t, n, "ip", "route", "replace", "default", "via", "192.0.2.1", "dev", "eth1", "src", "192.0.2.20")
	inNS(t, n, func() error {
		if got, err := DefaultUnderlayIP(); err != nil || got != ip("192.0.2.20") {
			return fmt.Errorf("default route with src: DefaultUnderlayIP = %v, %v; want 192.0.2.20", got, err)
		}
		if name, mtu, err := UnderlayLink(ip("192.0.2.20")); err != nil || name != "eth1" || mtu != 1500 {
			return fmt.Errorf("UnderlayLink(192.0.2.20) = %q, %d, %v; want eth1, 1500", name, mtu, err)
		}
		if name, _, err := UnderlayLink(ip("198.18.0.1")); err != nil || name != "eth0" {
			return fmt.Errorf("UnderlayLink(198.18.0.1) = %q, %v; want eth0", name, err)
		}
		if _, _, err := UnderlayLink(ip("203.0.113.1")); !errors.Is(err, ErrNoUnderlay) || !strings.Contains(err.Error(), "203.0.113.1") {
			return fmt.Errorf("UnderlayLink of an absent address: err = %v, want ErrNoUnderlay naming it", err)
		}
		return nil
	})
}

// Two nodes joined by a veth underlay, each with a pod on its bridge: pods reach each other
// and node A reaches pod B through the overlay.
func TestTwoNodeTraffic(t *testing.T) {
	nodeA, nodeB := testutil.NewNS(t), testutil.NewNS(t)
	podA, podB := testutil.NewNS(t), testutil.NewNS(t)

	inNS(t, nodeA, func() error {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: 1500}, PeerName: "eth0b",
			PeerNamespace: netlink.NsFd(int(nodeB.Fd()))}
		return netlink.LinkAdd(v)
	})
	run(t, nodeB, "ip", "link", "set", "eth0b", "name", "eth0")
	for _, x := range []struct {
		node ns.NetNS
		addr string
	}{{nodeA, "198.18.0.1/15"}, {nodeB, "198.18.0.2/15"}} {
		run(t, x.node, "ip", "addr", "add", x.addr, "dev", "eth0")
		run(t, x.node, "ip", "link", "set", "eth0", "up")
	}

	cluster := cidr("10.32.0.0/16")
	a := Peer{Name: "node-a", UnderlayIP: ip("198.18.0.1"), MAC: VTEPMAC("node-a"), TunnelIP: ip("10.32.0.0"),
		Blocks: []netip.Prefix{cidr("10.32.0.0/26")}}
	b := Peer{Name: "node-b", UnderlayIP: ip("198.18.0.2"), MAC: VTEPMAC("node-b"), TunnelIP: ip("10.32.0.64"),
		Blocks: []netip.Prefix{cidr("10.32.0.64/26")}}
	desired := func(self, peer Peer, gateway netip.Addr) Desired {
		return Desired{
			Bridge: Bridge{Name: BridgeName, Gateway: gateway, Blocks: self.Blocks, MAC: BridgeMAC(self.Name)},
			VXLAN: VXLAN{Name: VXLANName, VNI: VNI, Port: VXLANPort, UnderlayIP: self.UnderlayIP, Underlay: "eth0",
				MAC: self.MAC, TunnelIP: self.TunnelIP},
			Peers:       []Peer{peer},
			ClusterCIDR: cluster,
			MTU:         MTUFor(1500),
			Prune:       true,
		}
	}
	dA, dB := desired(a, b, ip("10.32.0.1")), desired(b, a, ip("10.32.0.65"))
	reconcile(t, nodeA, NewReconciler(NewKernel()), dA)
	reconcile(t, nodeB, NewReconciler(NewKernel()), dB)
	checkView(t, nodeA, dA, expectedView(dA))
	checkView(t, nodeB, dB, expectedView(dB))

	attachPod(t, nodeA, podA, "10.32.0.5/26", dA)
	attachPod(t, nodeB, podB, "10.32.0.69/26", dB)

	ping(t, podA, "10.32.0.69")  // pod A -> pod B
	ping(t, nodeA, "10.32.0.69") // node A -> pod B
	ping(t, podB, "10.32.0.5")   // pod B -> pod A

	// Pod to pod is not translated; node-originated traffic leaves with the tunnel address.
	if got := sourceSeen(t, podA, podB, "10.32.0.69"); got != "10.32.0.5" {
		t.Errorf("pod B saw pod A's ping come from %s, want 10.32.0.5 (pod traffic must not be translated)", got)
	}
	if got := sourceSeen(t, nodeA, podB, "10.32.0.69"); got != "10.32.0.0" {
		t.Errorf("pod B saw node A's ping come from %s, want node A's tunnel address 10.32.0.0", got)
	}
	ping(t, podB, "10.32.0.5")

	var links []struct {
		Stats64 struct {
			Rx struct{ Packets int } `json:"rx"`
		} `json:"stats64"`
	}
	decode(t, run(t, nodeB, "ip", "-s", "-j", "link", "show", "dev", VXLANName), &links)
	if got := links[0].Stats64.Rx.Packets; got < 3 {
		t.Errorf("node B's VXLAN device received %d packets; the pings did not cross the overlay", got)
	}

	// Each node sent (output) and received (prerouting) VXLAN packets: none of them is
	// tracked, while the pods' own packets inside the tunnel are.
	const inner = "src=10.32.0.5 dst=10.32.0.69"
	for name, node := range map[string]ns.NetNS{"node A": nodeA, "node B": nodeB} {
		entries := conntrackEntries(t, node)
		if e := vxlanEntry(entries, dA.VXLAN.Port); e != "" {
			t.Errorf("%s tracks a VXLAN packet: %s", name, e)
		}
		if !slices.ContainsFunc(entries, func(e string) bool { return strings.Contains(e, inner) }) {
			t.Errorf("%s does not track the pods' traffic (%s); conntrack has:\n%s", name, inner, strings.Join(entries, "\n"))
		}
	}

	t.Log("without the prerouting chain node B tracks the VXLAN packets it receives: the check above can fail")
	run(t, nodeB, "nft", "delete chain ip weft prerouting")
	run(t, nodeB, "conntrack", "-F")
	ping(t, podA, "10.32.0.69")
	if vxlanEntry(conntrackEntries(t, nodeB), dB.VXLAN.Port) == "" {
		t.Fatalf("node B tracks no VXLAN packet even without its prerouting chain; conntrack has:\n%s",
			strings.Join(conntrackEntries(t, nodeB), "\n"))
	}
	r := NewReconciler(NewKernel())
	checkOps(t, reconcile(t, nodeB, r, dB), rebuildTable)
	checkOps(t, reconcile(t, nodeB, r, dB))
	run(t, nodeB, "conntrack", "-F")
	ping(t, podA, "10.32.0.69")
	if e := vxlanEntry(conntrackEntries(t, nodeB), dB.VXLAN.Port); e != "" {
		t.Errorf("node B still tracks VXLAN packets after the rebuild: %s", e)
	}
}

// conntrackEntries lists the connection tracking table of n's namespace, one entry a line.
func conntrackEntries(t *testing.T, n ns.NetNS) []string {
	t.Helper()
	var entries []string
	for _, line := range strings.Split(run(t, n, "conntrack", "-L"), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "conntrack v") { // the summary
			entries = append(entries, line)
		}
	}
	return entries
}

// vxlanEntry returns the first entry for UDP to port, "" if there is none.
func vxlanEntry(entries []string, port int) string {
	for _, e := range entries {
		f := strings.Fields(e)
		if len(f) > 0 && f[0] == "udp" && slices.Contains(f, fmt.Sprintf("dport=%d", port)) {
			return e
		}
	}
	return ""
}

// sourceSeen pings dst from inside from and returns the source address of the first echo
// request that arrives inside to.
func sourceSeen(t *testing.T, from, to ns.NetNS, dst string) string {
	t.Helper()
	var conn net.PacketConn
	inNS(t, to, func() (err error) {
		conn, err = net.ListenPacket("ip4:icmp", "0.0.0.0") // a raw socket of to's namespace
		return err
	})
	defer conn.Close()
	ping(t, from, dst)
	if err := conn.SetReadDeadline(time.Now().Add(2 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	for {
		n, addr, err := conn.ReadFrom(buf)
		if err != nil {
			t.Fatalf("waiting for the echo request to %s: %v", dst, err)
		}
		if n > 0 && buf[0] == 8 { // ICMP echo request
			return addr.String()
		}
	}
}

// attachPod does what weft-cni does: a veth from the pod to the bridge, the pod address, a
// default route via the gateway.
func attachPod(t *testing.T, node, pod ns.NetNS, addr string, d Desired) {
	t.Helper()
	attachPodVeth(t, node, pod, "vethpod", addr, d)
}

// attachPodVeth is attachPod with host as the name of the veth's end on the node.
func attachPodVeth(t *testing.T, node, pod ns.NetNS, host, addr string, d Desired) {
	t.Helper()
	inNS(t, node, func() error {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host, MTU: d.MTU}, PeerName: "eth0",
			PeerNamespace: netlink.NsFd(int(pod.Fd()))}
		if err := netlink.LinkAdd(v); err != nil {
			return err
		}
		br, err := netlink.LinkByName(d.Bridge.Name)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetMaster(v, br); err != nil {
			return err
		}
		return netlink.LinkSetUp(v)
	})
	run(t, pod, "ip", "addr", "add", addr, "dev", "eth0")
	run(t, pod, "ip", "link", "set", "eth0", "up")
	run(t, pod, "ip", "route", "add", "default", "via", d.Bridge.Gateway.String(), "dev", "eth0")
}

// ping sends ICMP echo requests from inside n until one is answered (at most 5 tries, so a
// broken overlay fails in a few seconds).
func ping(t *testing.T, n ns.NetNS, dst string) {
	t.Helper()
	var out []byte
	var err error
	for range 5 {
		inNS(t, n, func() error {
			out, err = exec.Command("ping", "-n", "-c1", "-W1", dst).CombinedOutput()
			return nil
		})
		if err == nil {
			return
		}
	}
	t.Fatalf("ping %s: %v\n%s", dst, err, out)
}

// TestKernelHostPortTraffic: host ports are translated to the pod for every way in — from
// another host, from the node itself (chain hostports-output), from another pod on the
// bridge and from the pod itself (the hairpin masquerade rule) — keep the client's address
// where they can, follow HostIP, leave localhost alone, and stop when the mapping goes. With
// br_netfilter passing bridged IPv4 to nftables (what Kubernetes nodes usually have) and
// without it.
func TestKernelHostPortTraffic(t *testing.T) {
	testutil.RequireRoot(t)
	for _, brnf := range []string{"1", "0"} {
		t.Run("bridge-nf-call-iptables="+brnf, func(t *testing.T) { testHostPortTraffic(t, brnf) })
	}
}

func testHostPortTraffic(t *testing.T, brnf string) {
	node, client := testutil.NewNS(t), testutil.NewNS(t)
	pod1, pod2 := testutil.NewNS(t), testutil.NewNS(t)

	// The underlay: node 198.18.0.1 and a client host 198.18.0.100 on one link.
	inNS(t, node, func() error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: 1500}, PeerName: "eth0c",
			PeerNamespace: netlink.NsFd(int(client.Fd()))})
	})
	run(t, client, "ip", "link", "set", "eth0c", "name", "eth0")
	for _, x := range []struct {
		n    ns.NetNS
		addr string
	}{{node, "198.18.0.1/15"}, {client, "198.18.0.100/15"}} {
		run(t, x.n, "ip", "addr", "add", x.addr, "dev", "eth0")
		run(t, x.n, "ip", "link", "set", "eth0", "up")
	}

	d := kernelDesired(true)
	d.Peers = nil
	d.HostPorts = []HostPort{
		{Protocol: "tcp", HostPort: 18080, PodIP: ip("10.32.0.5"), PodPort: 8080},
		{Protocol: "udp", HostPort: 15353, PodIP: ip("10.32.0.5"), PodPort: 5353},
		{Protocol: "tcp", HostIP: ip("198.18.0.1"), HostPort: 18081, PodIP: ip("10.32.0.5"), PodPort: 8080},
	}
	r := NewReconciler(NewKernel())
	reconcile(t, node, r, d)
	checkView(t, node, d, expectedView(d))
	checkOps(t, reconcile(t, node, r, d))
	if brnf == "1" {
		t.Logf("nft list table ip weft:\n%s", run(t, node, "nft", "list", "table", "ip", NFTTable))
	}
	const brnfPath = "/proc/sys/net/bridge/bridge-nf-call-iptables"
	inNS(t, node, func() error {
		if _, err := os.Stat(brnfPath); err != nil {
			if brnf == "1" {
				return fmt.Errorf("%s: %w (this case needs br_netfilter)", brnfPath, err)
			}
			return nil // without br_netfilter bridged packets never reach nftables
		}
		return os.WriteFile(brnfPath, []byte(brnf), 0o644)
	})

	attachPodVeth(t, node, pod1, "vethpod1", "10.32.0.5/26", d)
	attachPodVeth(t, node, pod2, "vethpod2", "10.32.0.6/26", d)
	// A pod reaching itself through a host port is sent back out of the port it came in by.
	run(t, node, "bridge", "link", "set", "dev", "vethpod1", "hairpin", "on")
	servePod(t, pod1, "pod1")

	// Another pod on the bridge is masqueraded by the hairpin rule where the node routes
	// its packets; where br_netfilter bridges them, conntrack un-translates the answer on
	// the bridge, and the pod's address is kept (see hairpinExprs).
	sameBridge := "10.32.0.1"
	if brnf == "1" {
		sameBridge = "10.32.0.6"
	}
	// Each answer names the source address the pod saw.
	for _, x := range []struct {
		what   string
		from   ns.NetNS
		proto  string
		dst    string
		source string
	}{
		{"another host", client, "tcp", "198.18.0.1:18080", "198.18.0.100"},
		{"another host, to the HostIP of a mapping", client, "tcp", "198.18.0.1:18081", "198.18.0.100"},
		{"another host, UDP", client, "udp", "198.18.0.1:15353", "198.18.0.100"},
		{"the node, to its underlay address", node, "tcp", "198.18.0.1:18080", "198.18.0.1"},
		{"the node, to its gateway address", node, "tcp", "10.32.0.1:18080", "10.32.0.1"},
		{"the node, UDP", node, "udp", "198.18.0.1:15353", "198.18.0.1"},
		{"another pod on the bridge", pod2, "tcp", "198.18.0.1:18080", sameBridge},
		{"another pod on the bridge, UDP", pod2, "udp", "10.32.0.1:15353", sameBridge},
		{"the pod itself (hairpin, masqueraded)", pod1, "tcp", "198.18.0.1:18080", "10.32.0.1"},
	} {
		got, err := ask(t, x.from, x.proto, x.dst, 2*time.Second, 3)
		if want := fmt.Sprintf("pod1 %s from %s", x.proto, x.source); err != nil || got != want {
			t.Errorf("%s -> %s %s: got %q, %v; want %q", x.what, x.proto, x.dst, got, err, want)
		}
	}

	// Not translated, so refused by the node itself at once.
	for _, x := range []struct {
		what string
		from ns.NetNS
		dst  string
	}{
		{"a HostIP mapping, on another address of the node", pod2, "10.32.0.1:18081"},
		{"localhost (not supported: it would need route_localnet)", node, "127.0.0.1:18080"},
	} {
		if got, err := ask(t, x.from, "tcp", x.dst, 2*time.Second, 1); !errors.Is(err, unix.ECONNREFUSED) {
			t.Errorf("%s: tcp %s answered %q, %v; want connection refused", x.what, x.dst, got, err)
		}
	}

	t.Log("without weft's hairpin rules a pod cannot reach itself through its host port; rules changed by hand make a reconcile rebuild the table")
	run(t, node, "nft", "flush chain ip weft postrouting")
	run(t, node, "nft", `add rule ip weft postrouting ip saddr 10.32.0.0/16 ip daddr != 10.32.0.0/16 masquerade comment "weft: masquerade 10.32.0.0/16"`)
	run(t, node, "nft", "add rule ip weft hostports-output tcp dport 9999 dnat to 10.32.0.6:80")
	if got, err := ask(t, pod1, "tcp", "198.18.0.1:18080", time.Second, 1); err == nil {
		t.Errorf("the pod reached itself without the hairpin rules (%q): the check above proves nothing", got)
	}
	checkOps(t, reconcile(t, node, r, d), wantTable(d).String())
	checkView(t, node, d, expectedView(d))
	if got, err := ask(t, pod1, "tcp", "198.18.0.1:18080", 2*time.Second, 3); err != nil || got != "pod1 tcp from 10.32.0.1" {
		t.Errorf("the pod itself after the rebuild: got %q, %v", got, err)
	}

	t.Log("the mappings go: the ports are closed again")
	gone := d
	gone.HostPorts = nil
	checkOps(t, reconcile(t, node, r, gone), rebuildTable)
	checkView(t, node, gone, expectedView(gone))
	for _, x := range []struct {
		from  ns.NetNS
		proto string
		dst   string
	}{{client, "tcp", "198.18.0.1:18080"}, {pod2, "tcp", "198.18.0.1:18080"}, {client, "udp", "198.18.0.1:15353"}} {
		start := time.Now()
		if got, err := ask(t, x.from, x.proto, x.dst, time.Second, 1); err == nil {
			t.Errorf("%s %s still answered after the mapping was removed: %q", x.proto, x.dst, got)
		} else if took := time.Since(start); took > 1500*time.Millisecond {
			t.Errorf("%s %s: the failure took %v", x.proto, x.dst, took)
		}
	}
}
