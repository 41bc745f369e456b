package dataplane

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// netlinkKernel is the real Kernel: netlink for links, addresses, routes, neighbour and FDB
// entries, nftables for table ip weft, /proc/sys for the sysctl. It holds no sockets:
// every call opens its own, in the network namespace of the calling OS thread.
type netlinkKernel struct{}

// NewKernel returns the Kernel of the current network namespace. Each call acts on the
// namespace of the OS thread it runs on: in the agent that is the host namespace; a caller
// that switches namespaces must lock its thread (as ns.Do does).
func NewKernel() Kernel { return netlinkKernel{} }

// dumpAttempts bounds the retries of a netlink dump that the kernel interrupted because
// the table changed while it was being read.
const dumpAttempts = 10

// dump runs a netlink dump, retrying while it fails with netlink.ErrDumpInterrupted (whose
// partial result is not to be trusted). Every dump in this package goes through it.
func dump[T any](what string, list func() ([]T, error)) ([]T, error) {
	var err error
	for range dumpAttempts {
		var v []T
		if v, err = list(); err == nil {
			return v, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return nil, fmt.Errorf("listing %s: %w", what, err)
		}
	}
	return nil, fmt.Errorf("listing %s: interrupted %d times in a row because it keeps changing; retry later: %w",
		what, dumpAttempts, err)
}

// Observe implements Kernel.
func (netlinkKernel) Observe(bridge, vxlan string) (Observed, error) {
	o, err := observe(bridge, vxlan)
	if h := hint(err); h != "" {
		err = fmt.Errorf("%w%s", err, h)
	}
	return o, err
}

func observe(bridge, vxlan string) (Observed, error) {
	var o Observed
	links, err := dump("links", netlink.LinkList)
	if err != nil {
		return o, err
	}
	names := make(map[int]string, len(links))
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	var vxIndex int
	for _, l := range links {
		switch l.Attrs().Name {
		case bridge:
			o.Bridge = ptr(linkFrom(l, names))
		case vxlan:
			o.VXLAN = ptr(linkFrom(l, names))
			vxIndex = l.Attrs().Index
		default:
			continue
		}
		addrs, err := dump("addresses of "+l.Attrs().Name, func() ([]netlink.Addr, error) {
			return netlink.AddrList(l, netlink.FAMILY_V4)
		})
		if err != nil {
			return o, err
		}
		for _, a := range addrs {
			if p, ok := prefixFrom(a.IPNet, false); ok {
				o.Addrs = append(o.Addrs, Addr{Dev: l.Attrs().Name, Prefix: p})
			}
		}
	}

	routes, err := dump("routes", func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(netlink.FAMILY_V4,
			&netlink.Route{Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return o, err
	}
	for _, r := range routes {
		o.Routes = append(o.Routes, routeFrom(r, names))
	}

	if vxIndex != 0 {
		neighs, err := dump("neighbours of "+vxlan, func() ([]netlink.Neigh, error) {
			return netlink.NeighList(vxIndex, unix.AF_INET)
		})
		if err != nil {
			return o, err
		}
		for _, n := range neighs {
			o.Neighs = append(o.Neighs, Neigh{
				Dev: vxlan, IP: addrFrom(n.IP), MAC: n.HardwareAddr,
				Permanent: n.State&unix.NUD_PERMANENT != 0,
			})
		}
		fdb, err := dump("FDB of "+vxlan, func() ([]netlink.Neigh, error) {
			return netlink.NeighList(vxIndex, unix.AF_BRIDGE)
		})
		if err != nil {
			return o, err
		}
		for _, f := range fdb {
			o.FDB = append(o.FDB, FDB{
				Dev: vxlan, MAC: f.HardwareAddr, Dst: addrFrom(f.IP),
				Permanent: f.State&unix.NUD_PERMANENT != 0,
			})
		}
	}

	v, err := os.ReadFile(sysctlPath(ipForward))
	if err != nil {
		return o, fmt.Errorf("reading %s: %w", ipForward, err)
	}
	o.IPForward = strings.TrimSpace(string(v)) == "1"

	if o.NAT, err = observeNAT(); err != nil {
		return o, err
	}
	return o, nil
}

// Apply implements Kernel. Errors do not repeat the op: the caller has it.
func (netlinkKernel) Apply(op Op) error {
	var err error
	switch op := op.(type) {
	case LinkAdd:
		err = addLink(op.Link)
	case LinkDel:
		err = withLink(op.Name, true, netlink.LinkDel)
	case LinkSetMTU:
		err = withLink(op.Name, false, func(l netlink.Link) error { return mtuHint(netlink.LinkSetMTU(l, op.MTU)) })
	case LinkSetMAC:
		err = withLink(op.Name, false, func(l netlink.Link) error { return setMAC(l, op.MAC) })
	case LinkSetUp:
		err = withLink(op.Name, false, netlink.LinkSetUp)
	case AddrAdd:
		err = withLink(op.Addr.Dev, false, func(l netlink.Link) error {
			return ignore(netlink.AddrAdd(l, &netlink.Addr{IPNet: ipNet(op.Addr.Prefix)}), unix.EEXIST)
		})
	case AddrDel:
		err = withLink(op.Addr.Dev, true, func(l netlink.Link) error {
			return ignore(netlink.AddrDel(l, &netlink.Addr{IPNet: ipNet(op.Addr.Prefix)}), unix.EADDRNOTAVAIL, unix.ENOENT)
		})
	case RouteAdd:
		err = addRoute(op.Route)
	case RouteReplace:
		err = withLink(op.Route.Dev, false, func(l netlink.Link) error {
			return netlink.RouteReplace(toNetlinkRoute(op.Route, l.Attrs().Index))
		})
	case RouteDel:
		err = delRoute(op.Route)
	case NeighSet:
		err = withLink(op.Neigh.Dev, false, func(l netlink.Link) error {
			return netlink.NeighSet(&netlink.Neigh{
				LinkIndex: l.Attrs().Index, Family: unix.AF_INET, State: unix.NUD_PERMANENT,
				IP: ipSlice(op.Neigh.IP), HardwareAddr: op.Neigh.MAC,
			})
		})
	case NeighDel:
		err = withLink(op.Neigh.Dev, true, func(l netlink.Link) error {
			return ignore(netlink.NeighDel(&netlink.Neigh{
				LinkIndex: l.Attrs().Index, Family: unix.AF_INET, IP: ipSlice(op.Neigh.IP),
			}), unix.ENOENT)
		})
	case FDBSet:
		err = withLink(op.FDB.Dev, false, func(l netlink.Link) error {
			return netlink.NeighSet(fdbEntry(l, op.FDB))
		})
	case FDBDel:
		err = withLink(op.FDB.Dev, true, func(l netlink.Link) error {
			return ignore(netlink.NeighDel(fdbEntry(l, op.FDB)), unix.ENOENT)
		})
	case SysctlSet:
		err = setSysctl(op.Key, op.Value)
	case NFTTableSet:
		err = setTable(op)
	default:
		err = fmt.Errorf("unknown op type %T", op)
	}
	if h := hint(err); h != "" {
		return fmt.Errorf("%w%s", err, h)
	}
	return err
}

// hint names the usual fix for errors that have one.
func hint(err error) string {
	switch {
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return " (changing the network needs CAP_NET_ADMIN: run the agent as root or grant it)"
	case errors.Is(err, unix.EROFS):
		return " (/proc/sys is read-only here: run the agent privileged, with a writable /proc/sys)"
	case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.EAFNOSUPPORT):
		return " (the kernel lacks a feature: load the vxlan, bridge and nf_tables modules)"
	}
	return ""
}

// mtuHint explains the usual EINVAL of setting an MTU: a VXLAN device cannot exceed its
// underlay's MTU minus the encapsulation.
func mtuHint(err error) error {
	if errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("%w (if the MTU is the cause: it must be at most the underlay MTU minus %d, see MTUFor)", err, VXLANOverhead)
	}
	return err
}

// withLink looks name up and runs f on it. A missing link is an error, unless gone says
// that is fine (deleting something on, or of, a link that no longer exists).
func withLink(name string, gone bool, f func(netlink.Link) error) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		if _, notFound := errors.AsType[netlink.LinkNotFoundError](err); notFound && gone {
			return nil
		}
		return fmt.Errorf("looking up link %q: %w", name, err)
	}
	return f(l)
}

func ignore(err error, errnos ...unix.Errno) error {
	for _, e := range errnos {
		if errors.Is(err, e) {
			return nil
		}
	}
	return err
}

// addLink creates want (down). If a link of that name appeared meanwhile and can become
// want in place, it is adopted: EEXIST is not an error when the link matches.
func addLink(want Link) error {
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU, attrs.HardwareAddr = want.Name, want.MTU, want.MAC
	var l netlink.Link
	switch want.Kind {
	case "bridge":
		l = &netlink.Bridge{LinkAttrs: attrs}
	case "vxlan":
		under, err := netlink.LinkByName(want.Underlay)
		if err != nil {
			return fmt.Errorf("underlay interface %q: %w; set VXLAN.Underlay to the interface that holds %s (UnderlayLink finds it)",
				want.Underlay, err, want.Local)
		}
		l = &netlink.Vxlan{
			LinkAttrs: attrs, VxlanId: want.VNI, Port: want.Port, SrcAddr: ipSlice(want.Local),
			VtepDevIndex: under.Attrs().Index, Learning: want.Learning,
		}
	default:
		return fmt.Errorf("cannot create a link of kind %q", want.Kind)
	}
	err := netlink.LinkAdd(l)
	if !errors.Is(err, unix.EEXIST) {
		return mtuHint(err)
	}
	existing, lerr := netlink.LinkByName(want.Name)
	if lerr != nil {
		return fmt.Errorf("%w, and then looking it up: %w", err, lerr)
	}
	names := map[int]string{}
	if v, ok := existing.(*netlink.Vxlan); ok && v.VtepDevIndex != 0 {
		if u, uerr := netlink.LinkByIndex(v.VtepDevIndex); uerr == nil {
			names[v.VtepDevIndex] = u.Attrs().Name
		}
	}
	have := linkFrom(existing, names)
	if !sameIdentity(want, have) {
		return fmt.Errorf("%w: a different link %q is in the way (%s); the next reconcile replaces it", err, want.Name, have)
	}
	if have.MTU != want.MTU {
		if err := netlink.LinkSetMTU(existing, want.MTU); err != nil {
			return err
		}
	}
	if len(want.MAC) > 0 && have.MAC.String() != want.MAC.String() {
		return setMAC(existing, want.MAC)
	}
	return nil
}

// setMAC changes a link's address, taking the link down for it if the driver insists.
func setMAC(l netlink.Link, mac net.HardwareAddr) error {
	err := netlink.LinkSetHardwareAddr(l, mac)
	if !errors.Is(err, unix.EBUSY) || l.Attrs().Flags&net.FlagUp == 0 {
		return err
	}
	if err := netlink.LinkSetDown(l); err != nil {
		return err
	}
	if err := netlink.LinkSetHardwareAddr(l, mac); err != nil {
		return errors.Join(err, netlink.LinkSetUp(l))
	}
	return netlink.LinkSetUp(l)
}

// addRoute adds r without overwriting another route to the same destination. EEXIST is
// fine when the route in the way is r itself.
func addRoute(r Route) error {
	return withLink(r.Dev, false, func(l netlink.Link) error {
		nr := toNetlinkRoute(r, l.Attrs().Index)
		err := netlink.RouteAdd(nr)
		if !errors.Is(err, unix.EEXIST) {
			return err
		}
		existing, lerr := dump("routes to "+r.Dst.String(), func() ([]netlink.Route, error) {
			return netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: nr.Dst, Table: unix.RT_TABLE_MAIN},
				netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
		})
		if lerr != nil {
			return fmt.Errorf("%w, and then %w", err, lerr)
		}
		names := map[int]string{l.Attrs().Index: l.Attrs().Name}
		for _, e := range existing {
			if e.Protocol == RouteProtocol && routeFrom(e, names) == r {
				return nil
			}
		}
		return fmt.Errorf("%w: a route to %s that weft did not install (its protocol is not %#x) is in the way; weft does not overwrite routes it does not own: remove that route",
			err, r.Dst, RouteProtocol)
	})
}

// delRoute deletes r; a route already gone (or gone with its device) is fine.
func delRoute(r Route) error {
	index := 0
	if r.Dev != "" {
		l, err := netlink.LinkByName(r.Dev)
		if err != nil {
			if _, ok := errors.AsType[netlink.LinkNotFoundError](err); ok {
				return nil
			}
			return fmt.Errorf("looking up link %q: %w", r.Dev, err)
		}
		index = l.Attrs().Index
	}
	return ignore(netlink.RouteDel(toNetlinkRoute(r, index)), unix.ESRCH)
}

func toNetlinkRoute(r Route, linkIndex int) *netlink.Route {
	nr := &netlink.Route{
		Dst: ipNet(r.Dst), Gw: ipSlice(r.Gw), Src: ipSlice(r.Src), LinkIndex: linkIndex,
		Scope: netlink.Scope(r.Scope), Priority: r.Metric,
		Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN, Type: unix.RTN_UNICAST,
	}
	if r.OnLink {
		nr.Flags = int(netlink.FLAG_ONLINK)
	}
	return nr
}

func fdbEntry(l netlink.Link, f FDB) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex: l.Attrs().Index, Family: unix.AF_BRIDGE, State: unix.NUD_PERMANENT,
		Flags: netlink.NTF_SELF, IP: ipSlice(f.Dst), HardwareAddr: f.MAC,
	}
}

const ipForward = "net.ipv4.ip_forward"

func sysctlPath(key string) string {
	return "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
}

// setSysctl writes value unless the sysctl already has it. /proc/sys/net belongs to the
// network namespace of the calling thread.
func setSysctl(key, value string) error {
	p := sysctlPath(key)
	cur, err := os.ReadFile(p)
	if err != nil {
		return fmt.Errorf("reading %s: %w", key, err)
	}
	if strings.TrimSpace(string(cur)) == value {
		return nil
	}
	if err := os.WriteFile(p, []byte(value+"\n"), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", key, err)
	}
	return nil
}

func linkFrom(l netlink.Link, names map[int]string) Link {
	a := l.Attrs()
	out := Link{Name: a.Name, Kind: l.Type(), MTU: a.MTU, MAC: a.HardwareAddr, Up: a.Flags&net.FlagUp != 0}
	if v, ok := l.(*netlink.Vxlan); ok {
		out.VNI, out.Port, out.Local, out.Learning = v.VxlanId, v.Port, addrFrom(v.SrcAddr), v.Learning
		if v.VtepDevIndex != 0 {
			out.Underlay = names[v.VtepDevIndex]
			if out.Underlay == "" {
				out.Underlay = fmt.Sprintf("if%d", v.VtepDevIndex)
			}
		}
	}
	return out
}

func routeFrom(r netlink.Route, names map[int]string) Route {
	out := Route{
		Dst: netip.PrefixFrom(netip.IPv4Unspecified(), 0), Gw: addrFrom(r.Gw), Src: addrFrom(r.Src),
		Scope: uint8(r.Scope), OnLink: r.Flags&int(netlink.FLAG_ONLINK) != 0, Metric: r.Priority,
	}
	if p, ok := prefixFrom(r.Dst, true); ok {
		out.Dst = p
	}
	if len(r.MultiPath) == 0 {
		out.Dev = names[r.LinkIndex]
	}
	return out
}

// prefixFrom converts an IPv4 *net.IPNet; masked keeps only the network part.
func prefixFrom(n *net.IPNet, masked bool) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a := addrFrom(n.IP)
	ones, bits := n.Mask.Size()
	if !a.Is4() || bits != 32 {
		return netip.Prefix{}, false
	}
	p := netip.PrefixFrom(a, ones)
	if masked {
		p = p.Masked()
	}
	return p, true
}

func addrFrom(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

func ipSlice(a netip.Addr) net.IP {
	if !a.IsValid() {
		return nil
	}
	return net.IP(a.AsSlice())
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: ipSlice(p.Addr()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func ptr[T any](v T) *T { return &v }
