package dataplane

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// masqComment and notrackComment tag weft's rules; `nft list table ip weft` shows them as
// the rules' comments. A rule counts as weft's only if the comment and the expressions both
// match.
const (
	masqComment    = "weft: masquerade "
	notrackComment = "weft: notrack vxlan "
)

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

// notrackExprs is `udp dport <port> notrack`, written the way the kernel hands it back (and
// the way nft itself writes it: the protocol from meta l4proto, then the destination port at
// offset 2 of the transport header, big-endian).
func notrackExprs(port int) []expr.Any {
	dport := binary.BigEndian.AppendUint16(nil, uint16(port))
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: dport},
		&expr.Notrack{},
	}
}

// masqCIDROf returns the cluster CIDR of r if r is exactly weft's masquerade rule for it,
// the zero Prefix otherwise.
func masqCIDROf(r *nftables.Rule) netip.Prefix {
	comment, ok := userdata.GetString(r.UserData, userdata.TypeComment)
	if !ok || !strings.HasPrefix(comment, masqComment) {
		return netip.Prefix{}
	}
	cidr, err := netip.ParsePrefix(strings.TrimPrefix(comment, masqComment))
	if err != nil || !reflect.DeepEqual(r.Exprs, masqExprs(cidr)) {
		return netip.Prefix{}
	}
	return cidr
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

// chainHeader describes a chain's type, hook, priority and policy the way NATChain and
// RawChain hold them.
func chainHeader(ch *nftables.Chain) (typ, hook string, priority int, policy string) {
	typ, policy = string(ch.Type), "accept"
	if ch.Hooknum != nil {
		hook = hookNames[*ch.Hooknum]
		if hook == "" {
			hook = strconv.Itoa(int(*ch.Hooknum))
		}
	}
	if ch.Priority != nil {
		priority = int(*ch.Priority)
	}
	if ch.Policy != nil && *ch.Policy == nftables.ChainPolicyDrop {
		policy = "drop"
	}
	return typ, hook, priority, policy
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
	rules := func(ch *nftables.Chain) ([]*nftables.Rule, error) {
		rs, err := c.GetRules(table, ch)
		if err != nil {
			return nil, fmt.Errorf("listing rules of chain ip %s %s: %w", NFTTable, ch.Name, err)
		}
		return rs, nil
	}
	n := NAT{Table: true}
	if ch := chains[natChainName]; ch != nil {
		nc := &NATChain{}
		nc.Type, nc.Hook, nc.Priority, nc.Policy = chainHeader(ch)
		rs, err := rules(ch)
		if err != nil {
			return NAT{}, err
		}
		for _, r := range rs {
			nc.Rules = append(nc.Rules, masqCIDROf(r))
		}
		n.Chain = nc
	}
	for _, raw := range []struct {
		name string
		into **RawChain
	}{{rawPreroutingName, &n.Prerouting}, {rawOutputName, &n.Output}} {
		ch := chains[raw.name]
		if ch == nil {
			continue
		}
		rc := &RawChain{}
		rc.Type, rc.Hook, rc.Priority, rc.Policy = chainHeader(ch)
		rs, err := rules(ch)
		if err != nil {
			return NAT{}, err
		}
		for _, r := range rs {
			rc.Rules = append(rc.Rules, notrackPortOf(r))
		}
		*raw.into = rc
	}
	return n, nil
}

// setTable makes table "ip weft" hold exactly weft's three chains and their rules, in a
// single nftables transaction: the old table goes and the new one comes at once, so there is
// never a moment without masquerading (or with the VXLAN packets tracked again). The table
// is weft's alone, so it is rebuilt whole rather than patched.
func setTable(cidr netip.Prefix, vxlanPort int) error {
	if vxlanPort < 1 || vxlanPort > 65535 {
		return fmt.Errorf("VXLAN port %d: must be 1 to 65535 (fix the agent's VXLAN port setting)", vxlanPort)
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
	// Chains in the order packets meet them: `nft list` shows them so.
	pre := c.AddChain(rawChain(table, rawPreroutingName, nftables.ChainHookPrerouting))
	out := c.AddChain(rawChain(table, rawOutputName, nftables.ChainHookOutput))
	post := c.AddChain(natChain(table))
	for _, ch := range []*nftables.Chain{pre, out} {
		c.AddRule(&nftables.Rule{
			Table: table, Chain: ch, Exprs: notrackExprs(vxlanPort),
			UserData: userdata.AppendString(nil, userdata.TypeComment, notrackComment+strconv.Itoa(vxlanPort)),
		})
	}
	c.AddRule(&nftables.Rule{
		Table: table, Chain: post, Exprs: masqExprs(cidr),
		UserData: userdata.AppendString(nil, userdata.TypeComment, masqComment+cidr.String()),
	})
	if err := c.Flush(); err != nil {
		hint := ""
		if errors.Is(err, unix.ENOENT) { // an expression or chain type the kernel does not know
			hint = " (load nft_ct, nft_masq and nft_chain_nat, or use a kernel with CONFIG_NFT_CT, CONFIG_NFT_MASQ and CONFIG_NFT_NAT)"
		}
		return fmt.Errorf("nftables transaction rebuilding table ip %s: %w%s", NFTTable, err, hint)
	}
	return nil
}
