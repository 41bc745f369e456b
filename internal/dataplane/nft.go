package dataplane

import (
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

// masqComment tags weft's masquerade rule; `nft list table ip weft` shows it as the rule's
// comment. A rule counts as weft's only if the comment and the expressions both match.
const masqComment = "weft: masquerade "

func natTable() *nftables.Table {
	return &nftables.Table{Name: NFTTable, Family: nftables.TableFamilyIPv4}
}

func natChain(t *nftables.Table) *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return &nftables.Chain{
		Name: natChainName, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept,
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

var hookNames = map[nftables.ChainHook]string{
	unix.NF_INET_PRE_ROUTING:  "prerouting",
	unix.NF_INET_LOCAL_IN:     "input",
	unix.NF_INET_FORWARD:      "forward",
	unix.NF_INET_LOCAL_OUT:    "output",
	unix.NF_INET_POST_ROUTING: "postrouting",
}

// findNATChain returns weft's table and postrouting chain as the kernel has them (nil
// when absent).
func findNATChain(c *nftables.Conn) (table *nftables.Table, chain *nftables.Chain, err error) {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, nil, fmt.Errorf("listing nftables tables: %w (is the nf_tables module available?)", err)
	}
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
	for _, ch := range chains {
		if ch.Table != nil && ch.Table.Name == NFTTable && ch.Name == natChainName {
			ch.Table = table
			return table, ch, nil
		}
	}
	return table, nil, nil
}

func observeNAT() (NAT, error) {
	c, err := nftables.New()
	if err != nil {
		return NAT{}, fmt.Errorf("opening nftables: %w", err)
	}
	table, chain, err := findNATChain(c)
	if err != nil || table == nil {
		return NAT{}, err
	}
	n := NAT{Table: true}
	if chain == nil {
		return n, nil
	}
	nc := &NATChain{Type: string(chain.Type), Policy: "accept"}
	if chain.Hooknum != nil {
		nc.Hook = hookNames[*chain.Hooknum]
		if nc.Hook == "" {
			nc.Hook = strconv.Itoa(int(*chain.Hooknum))
		}
	}
	if chain.Priority != nil {
		nc.Priority = int(*chain.Priority)
	}
	if chain.Policy != nil && *chain.Policy == nftables.ChainPolicyDrop {
		nc.Policy = "drop"
	}
	rules, err := c.GetRules(table, chain)
	if err != nil {
		return NAT{}, fmt.Errorf("listing rules of chain ip %s %s: %w", NFTTable, natChainName, err)
	}
	for _, r := range rules {
		nc.Rules = append(nc.Rules, masqCIDROf(r))
	}
	n.Chain = nc
	return n, nil
}

// setMasquerade makes the chain hold exactly the masquerade rule for cidr, in a single
// nftables transaction: the old rules go and the new one comes at once, so there is never a
// moment without masquerading. A chain of the wrong type, hook or priority cannot be
// changed in place; then the whole table (weft's alone) is recreated, in the same
// transaction.
func setMasquerade(cidr netip.Prefix) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("opening nftables: %w", err)
	}
	_, existing, err := findNATChain(c)
	if err != nil {
		return err
	}
	table := natTable()
	chain := natChain(table)
	switch {
	case existing == nil:
		c.AddTable(table)
		c.AddChain(chain)
	case sameBaseChain(existing, chain):
		c.FlushChain(chain)
	default:
		c.DelTable(table)
		c.AddTable(table)
		c.AddChain(chain)
	}
	c.AddRule(&nftables.Rule{
		Table: table, Chain: chain, Exprs: masqExprs(cidr),
		UserData: userdata.AppendString(nil, userdata.TypeComment, masqComment+cidr.String()),
	})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables transaction: %w", err)
	}
	return nil
}

func sameBaseChain(have, want *nftables.Chain) bool {
	eq := func(a, b *nftables.ChainHook) bool { return a != nil && b != nil && *a == *b }
	return have.Type == want.Type && eq(have.Hooknum, want.Hooknum) &&
		have.Priority != nil && *have.Priority == *want.Priority &&
		(have.Policy == nil || *have.Policy == *want.Policy)
}
