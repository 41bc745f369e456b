package dataplane

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// Table "ip weft" and what each of its chains is for are described once, in the package
// doc ("The nftables table"). This file writes the table and reads it back.
//
// Every rule weft writes carries a comment naming what it is for (`nft list table ip weft`
// shows it), and its expressions are written exactly the way the kernel hands them back
// (the way nft writes them, too, where they could be compared: same registers, same
// payload lengths, host-endian constants where the kernel compares host-endian values), so
// that a rule read back compares equal with reflect.DeepEqual. A rule counts as weft's only
// if its comment parses AND its expressions are exactly what weft writes for that comment;
// anything else in a chain, a rule added or edited by hand, makes the table differ and be
// rebuilt.
const (
	masqComment       = "weft: masquerade "
	hairpinComment    = "weft: hairpin masquerade bridge "
	hairpinPodComment = "weft: hairpin masquerade pod "
	notrackComment    = "weft: notrack vxlan "
	hostPortComment   = "weft: hostport "
)

// hostPortProtocols are the protocols of HostPort.Protocol and their IP protocol numbers.
// `th dport` (offset 2 of the transport header) is the destination port for all three.
var hostPortProtocols = map[string]byte{
	"tcp":  unix.IPPROTO_TCP,
	"udp":  unix.IPPROTO_UDP,
	"sctp": unix.IPPROTO_SCTP,
}

// ctStatusDNAT is IPS_DST_NAT, the bit of `ct status` set on a connection whose destination
// was translated (`ct status dnat`).
const ctStatusDNAT = 1 << 5

func nftTable() *nftables.Table {
	return &nftables.Table{Name: NFTTable, Family: nftables.TableFamilyIPv4}
}

func natChain(t *nftables.Table) *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return &nftables.Chain{
		Name: natChainName, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept,
	}
}

// rawChain is `chain <name> { type filter hook <hook> priority raw; policy accept; }`.
func rawChain(t *nftables.Table, name string, hook *nftables.ChainHook) *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return &nftables.Chain{
		Name: name, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: hook, Priority: nftables.ChainPriorityRaw, Policy: &accept,
	}
}

// hostPortsChain is `chain <name> { type nat hook <hook> priority dstnat; policy accept; }`.
func hostPortsChain(t *nftables.Table, name string, hook *nftables.ChainHook) *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return &nftables.Chain{
		Name: name, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: hook, Priority: nftables.ChainPriorityNATDest, Policy: &accept,
	}
}

// masqExprs is `ip saddr <cidr> ip daddr != <cidr> masquerade`, written the way the kernel
// hands it back, so that a rule read from the kernel can be compared with it.
func masqExprs(cidr netip.Prefix) []expr.Any {
	network := cidr.Masked().Addr().As4()
	mask := []byte(net.CIDRMask(cidr.Bits(), 32))
	match := func(offset uint32, op expr.CmpOp) []expr.Any {
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: op, Register: 1, Data: network[:]},
		}
	}
	// IPv4 header: source address at offset 12, destination at 16.
	return append(append(match(12, expr.CmpOpEq), match(16, expr.CmpOpNeq)...), &expr.Masq{})
}

// hairpinExprs is `iifname <bridge> oifname <bridge> ct status dnat masquerade`, written the
// way the kernel hands it back (and nft writes it): interface names as 16 bytes, NUL-padded;
// the status bit tested host-endian.
//
// It is for a connection a pod on the bridge makes to a host port whose pod is on the same
// bridge: DNAT sends it back out of the bridge, and without the masquerade that pod would
// answer the client pod directly, at L2, so the answer would never be un-translated.
// Masqueraded, the answer goes to the gateway and through conntrack. This holds where the
// node routes such packets. Where br_netfilter hands bridged packets to nftables
// (bridge-nf-call-iptables=1, as Kubernetes nodes usually have), the DNAT happens on the
// bridge, the packet is bridged rather than routed, and the postrouting hook sees no input
// interface, so this rule does not match; it need not, since conntrack then sees the answer
// on the bridge and un-translates it there, keeping the client pod's address. Except for a
// pod reaching itself: see hairpinPodExprs.
func hairpinExprs(bridge string) []expr.Any {
	return append([]expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(bridge)},
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(bridge)},
	}, ctDNATMasqExprs()...)
}

// hairpinPodExprs is `ip saddr <pod> ip daddr <pod> ct status dnat masquerade`, written the
// way the kernel hands it back (and nft writes it). There is one for each pod with a host
// port: a pod that reaches itself through its host port gets its own packet back (the
// bridge port needs hairpin mode where br_netfilter bridges it), and would answer itself
// inside its namespace, never un-translated, whether the node routed the packet or bridged
// it. Masqueraded, it comes from the gateway. It matches on addresses alone, so it works on
// both paths (see hairpinExprs), as the portmap plugin's hairpin masquerade does.
func hairpinPodExprs(pod netip.Addr) []expr.Any {
	a := pod.As4()
	return append([]expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a[:]},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a[:]},
	}, ctDNATMasqExprs()...)
}

// ctDNATMasqExprs is `ct status dnat masquerade`.
func ctDNATMasqExprs() []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATUS, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binary.NativeEndian.AppendUint32(nil, ctStatusDNAT), Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
		&expr.Masq{},
	}
}

// ifname is an interface name as nftables compares it: IFNAMSIZ (16) bytes, NUL-padded.
func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

// dportExprs is `<proto> dport <port>` the way nft writes it and the kernel hands it back:
// the protocol from meta l4proto, then the destination port at offset 2 of the transport
// header, big-endian.
func dportExprs(proto byte, port uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, port)},
	}
}

// notrackExprs is `udp dport <port> notrack`, written the way the kernel hands it back (and
// the way nft itself writes it).
func notrackExprs(port int) []expr.Any {
	return append(dportExprs(unix.IPPROTO_UDP, uint16(port)), &expr.Notrack{})
}

// hostPortExprs is weft's DNAT rule for h, written the way the kernel hands it back (nft
// writes the same): with a HostIP,
//
//	ip daddr <HostIP> <proto> dport <HostPort> dnat to <PodIP>:<PodPort>
//
// and without one, for every local address of the node but the loopback ones,
//
//	fib daddr type local ip daddr != 127.0.0.0/8 <proto> dport <HostPort> dnat to <PodIP>:<PodPort>
//
// (nft loads the one byte a /8 needs, so does weft). Host ports on 127.0.0.1 are
// deliberately not supported: DNAT of a connection from 127.0.0.1 to a pod needs
// net.ipv4.conf.*.route_localnet=1, which lets other hosts on the link reach services bound
// to localhost (CVE-2020-8558); kube-proxy's nftables mode refuses localhost NodePorts for
// the same reason. So a node's connection to 127.0.0.1:<HostPort> is left alone (refused,
// or answered by whatever listens there) instead of being translated into a dead end.
//
// h must be valid (see checkHostPort): the addresses IPv4, the protocol known.
func hostPortExprs(h HostPort) []expr.Any {
	var match []expr.Any
	if h.HostIP.IsValid() {
		host := h.HostIP.As4()
		match = []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: host[:]},
		}
	} else {
		match = []expr.Any{
			&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, unix.RTN_LOCAL)},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{127}},
		}
	}
	pod := h.PodIP.As4()
	return slices.Concat(match, dportExprs(hostPortProtocols[h.Protocol], h.HostPort), []expr.Any{
		&expr.Immediate{Register: 1, Data: pod[:]},
		&expr.Immediate{Register: 2, Data: binary.BigEndian.AppendUint16(nil, h.PodPort)},
		// The kernel hands back both ends of each range, and the flag that a port is given.
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegAddrMax: 1,
			RegProtoMin: 2, RegProtoMax: 2, Specified: true},
	})
}

// hostPortText is a mapping as comments and NFTTableSet.String give it: "tcp 18080
// 10.32.0.5:8080", or with a HostIP "udp 198.18.0.1:53 10.32.0.6:5353".
func hostPortText(h HostPort, arrow string) string {
	host := strconv.Itoa(int(h.HostPort))
	if h.HostIP.IsValid() {
		host = netip.AddrPortFrom(h.HostIP, h.HostPort).String()
	}
	return h.Protocol + " " + host + arrow + netip.AddrPortFrom(h.PodIP, h.PodPort).String()
}

func hostPortRuleComment(h HostPort) string { return hostPortComment + hostPortText(h, " ") }

// parseHostPort reads a mapping back from the text of hostPortText(h, " ").
func parseHostPort(s string) (HostPort, bool) {
	f := strings.Fields(s)
	if len(f) != 3 {
		return HostPort{}, false
	}
	h := HostPort{Protocol: f[0]}
	if ap, err := netip.ParseAddrPort(f[1]); err == nil {
		h.HostIP, h.HostPort = ap.Addr(), ap.Port()
	} else if p, err := strconv.ParseUint(f[1], 10, 16); err == nil {
		h.HostPort = uint16(p)
	} else {
		return HostPort{}, false
	}
	pod, err := netip.ParseAddrPort(f[2])
	if err != nil {
		return HostPort{}, false
	}
	h.PodIP, h.PodPort = pod.Addr(), pod.Port()
	return h, true
}

// natRuleOf reads a rule of the postrouting chain: weft's masquerade rule for a cluster
// CIDR, weft's hairpin rule for a bridge, or (the zero NATRule) any other rule.
func natRuleOf(r *nftables.Rule) NATRule {
	comment, _ := userdata.GetString(r.UserData, userdata.TypeComment)
	switch {
	case strings.HasPrefix(comment, masqComment):
		cidr, err := netip.ParsePrefix(strings.TrimPrefix(comment, masqComment))
		if err == nil && cidr.Addr().Is4() && reflect.DeepEqual(r.Exprs, masqExprs(cidr)) {
			return NATRule{Masquerade: cidr}
		}
	case strings.HasPrefix(comment, hairpinComment):
		bridge := strings.TrimPrefix(comment, hairpinComment)
		if bridge != "" && len(bridge) < unix.IFNAMSIZ && reflect.DeepEqual(r.Exprs, hairpinExprs(bridge)) {
			return NATRule{Hairpin: bridge}
		}
	case strings.HasPrefix(comment, hairpinPodComment):
		pod, err := netip.ParseAddr(strings.TrimPrefix(comment, hairpinPodComment))
		if err == nil && pod.Is4() && hairpinPodComment+pod.String() == comment && reflect.DeepEqual(r.Exprs, hairpinPodExprs(pod)) {
			return NATRule{HairpinPod: pod}
		}
	}
	return NATRule{}
}

// notrackPortOf returns the UDP port of r if r is exactly weft's notrack rule for it, 0
// otherwise.
func notrackPortOf(r *nftables.Rule) int {
	comment, ok := userdata.GetString(r.UserData, userdata.TypeComment)
	if !ok || !strings.HasPrefix(comment, notrackComment) {
		return 0
	}
	port, err := strconv.Atoi(strings.TrimPrefix(comment, notrackComment))
	if err != nil || port < 1 || port > 65535 || !reflect.DeepEqual(r.Exprs, notrackExprs(port)) {
		return 0
	}
	return port
}

// hostPortOf returns the mapping of r if r is exactly weft's DNAT rule for it (comment
// included, to the character), the zero HostPort otherwise.
func hostPortOf(r *nftables.Rule) HostPort {
	comment, ok := userdata.GetString(r.UserData, userdata.TypeComment)
	if !ok || !strings.HasPrefix(comment, hostPortComment) {
		return HostPort{}
	}
	h, ok := parseHostPort(strings.TrimPrefix(comment, hostPortComment))
	if !ok || checkHostPort(h) != nil || hostPortRuleComment(h) != comment ||
		!reflect.DeepEqual(r.Exprs, hostPortExprs(h)) {
		return HostPort{}
	}
	return h
}

var hookNames = map[nftables.ChainHook]string{
	unix.NF_INET_PRE_ROUTING:  "prerouting",
	unix.NF_INET_LOCAL_IN:     "input",
	unix.NF_INET_FORWARD:      "forward",
	unix.NF_INET_LOCAL_OUT:    "output",
	unix.NF_INET_POST_ROUTING: "postrouting",
}

// findTable returns weft's table as the kernel has it (nil when absent) and its chains by
// name.
func findTable(c *nftables.Conn) (*nftables.Table, map[string]*nftables.Chain, error) {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, nil, fmt.Errorf("listing nftables tables: %w (is the nf_tables module available?)", err)
	}
	var table *nftables.Table
	for _, t := range tables {
		if t.Name == NFTTable {
			table = t
		}
	}
	if table == nil {
		return nil, nil, nil
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, nil, fmt.Errorf("listing nftables chains: %w", err)
	}
	byName := map[string]*nftables.Chain{}
	for _, ch := range chains {
		if ch.Table != nil && ch.Table.Name == NFTTable {
			ch.Table = table
			byName[ch.Name] = ch
		}
	}
	return table, byName, nil
}

// chainHeader reads a chain's type, hook, priority and policy.
func chainHeader(ch *nftables.Chain) ChainHeader {
	h := ChainHeader{Type: string(ch.Type), Policy: "accept"}
	if ch.Hooknum != nil {
		h.Hook = hookNames[*ch.Hooknum]
		if h.Hook == "" {
			h.Hook = strconv.Itoa(int(*ch.Hooknum))
		}
	}
	if ch.Priority != nil {
		h.Priority = int(*ch.Priority)
	}
	if ch.Policy != nil && *ch.Policy == nftables.ChainPolicyDrop {
		h.Policy = "drop"
	}
	return h
}

func observeNAT() (NAT, error) {
	c, err := nftables.New()
	if err != nil {
		return NAT{}, fmt.Errorf("opening nftables: %w", err)
	}
	table, chains, err := findTable(c)
	if err != nil || table == nil {
		return NAT{}, err
	}
	// header reads chain name's header and rules, each rule parsed by rule; ok is false when
	// the chain is absent.
	read := func(name string, rule func(*nftables.Rule)) (h ChainHeader, ok bool, err error) {
		ch := chains[name]
		if ch == nil {
			return h, false, nil
		}
		h = chainHeader(ch)
		rs, err := c.GetRules(table, ch)
		if err != nil {
			return h, false, fmt.Errorf("listing rules of chain ip %s %s: %w", NFTTable, ch.Name, err)
		}
		for _, r := range rs {
			rule(r)
		}
		return h, true, nil
	}

	n := NAT{Table: true}
	nc := &NATChain{}
	h, ok, err := read(natChainName, func(r *nftables.Rule) { nc.Rules = append(nc.Rules, natRuleOf(r)) })
	if err != nil {
		return NAT{}, err
	}
	if ok {
		nc.ChainHeader = h
		n.Chain = nc
	}
	for _, raw := range []struct {
		name string
		into **RawChain
	}{{rawPreroutingName, &n.Prerouting}, {rawOutputName, &n.Output}} {
		rc := &RawChain{}
		h, ok, err := read(raw.name, func(r *nftables.Rule) { rc.Rules = append(rc.Rules, notrackPortOf(r)) })
		if err != nil {
			return NAT{}, err
		}
		if ok {
			rc.ChainHeader = h
			*raw.into = rc
		}
	}
	for _, hp := range []struct {
		name string
		into **HostPortChain
	}{{hostPortsPreroutingName, &n.HostPortsPrerouting}, {hostPortsOutputName, &n.HostPortsOutput}} {
		hc := &HostPortChain{}
		h, ok, err := read(hp.name, func(r *nftables.Rule) { hc.Rules = append(hc.Rules, hostPortOf(r)) })
		if err != nil {
			return NAT{}, err
		}
		if ok {
			hc.ChainHeader = h
			*hp.into = hc
		}
	}
	return n, nil
}

// check reports what makes op impossible to write; setTable and the fake kernel refuse such
// an op before changing anything. Plan only makes valid ones (from a validated Desired).
func (op NFTTableSet) check() error {
	var errs []error
	if op.VXLANPort < 1 || op.VXLANPort > 65535 {
		errs = append(errs, fmt.Errorf("VXLAN port %d: must be 1 to 65535 (fix the agent's VXLAN port setting)", op.VXLANPort))
	}
	if c := op.ClusterCIDR; !c.Addr().Is4() || c != c.Masked() {
		errs = append(errs, fmt.Errorf("cluster CIDR %v: must be an IPv4 network like 10.32.0.0/12", c))
	}
	if len(op.Bridge) >= unix.IFNAMSIZ {
		errs = append(errs, fmt.Errorf("bridge name %q: must be at most 15 characters", op.Bridge))
	}
	for _, h := range op.HostPorts {
		if err := checkHostPort(h); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// setTable makes table "ip weft" hold exactly weft's chains and rules for op, in a single
// nftables transaction: the old table goes and the new one comes at once, so there is never
// a moment without masquerading, with the VXLAN packets tracked again, or without a host
// port that stays. The table is weft's alone, so it is rebuilt whole rather than patched.
// An op that cannot be written (see check) changes nothing.
func setTable(op NFTTableSet) error {
	if err := op.check(); err != nil {
		return fmt.Errorf("not rebuilding table ip %s: %w", NFTTable, err)
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("opening nftables: %w", err)
	}
	table := nftTable()
	// Add (a no-op if the table exists), delete, add: the transaction deletes the table
	// whether or not it is there, without a listing that could be stale by the time it runs.
	c.AddTable(table)
	c.DelTable(table)
	c.AddTable(table)
	comment := func(s string) []byte { return userdata.AppendString(nil, userdata.TypeComment, s) }
	// Chains in this order: `nft list` shows them so.
	pre := c.AddChain(rawChain(table, rawPreroutingName, nftables.ChainHookPrerouting))
	out := c.AddChain(rawChain(table, rawOutputName, nftables.ChainHookOutput))
	hpPre := c.AddChain(hostPortsChain(table, hostPortsPreroutingName, nftables.ChainHookPrerouting))
	hpOut := c.AddChain(hostPortsChain(table, hostPortsOutputName, nftables.ChainHookOutput))
	post := c.AddChain(natChain(table))
	for _, ch := range []*nftables.Chain{pre, out} {
		c.AddRule(&nftables.Rule{
			Table: table, Chain: ch, Exprs: notrackExprs(op.VXLANPort),
			UserData: comment(notrackComment + strconv.Itoa(op.VXLANPort)),
		})
	}
	for _, ch := range []*nftables.Chain{hpPre, hpOut} {
		for _, h := range op.HostPorts {
			c.AddRule(&nftables.Rule{Table: table, Chain: ch, Exprs: hostPortExprs(h), UserData: comment(hostPortRuleComment(h))})
		}
	}
	for _, r := range op.postrouting() {
		switch {
		case r.Masquerade.IsValid():
			c.AddRule(&nftables.Rule{Table: table, Chain: post, Exprs: masqExprs(r.Masquerade),
				UserData: comment(masqComment + r.Masquerade.String())})
		case r.Hairpin != "":
			c.AddRule(&nftables.Rule{Table: table, Chain: post, Exprs: hairpinExprs(r.Hairpin),
				UserData: comment(hairpinComment + r.Hairpin)})
		default:
			c.AddRule(&nftables.Rule{Table: table, Chain: post, Exprs: hairpinPodExprs(r.HairpinPod),
				UserData: comment(hairpinPodComment + r.HairpinPod.String())})
		}
	}
	if err := c.Flush(); err != nil {
		hint := ""
		if errors.Is(err, unix.ENOENT) { // an expression or chain type the kernel does not know
			hint = " (load nft_ct, nft_masq, nft_nat, nft_chain_nat and nft_fib_ipv4, or use a kernel with " +
				"CONFIG_NFT_CT, CONFIG_NFT_MASQ, CONFIG_NFT_NAT and CONFIG_NFT_FIB_IPV4)"
		}
		return fmt.Errorf("nftables transaction rebuilding table ip %s: %w%s", NFTTable, err, hint)
	}
	return nil
}
