package soak

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/lab"
)

// Kernel names and numbers of weft's dataplane (internal/dataplane/doc.go).
const (
	vxlanDev      = "weft-vxlan"
	bridgeDev     = "weft"
	routeProtocol = 0x77
)

// kernelSnap is weft's kernel state on one node, as text lines, for comparing before and
// after an agent restart: the devices with their interface index (a recreated device gets
// a new one), and the routes, FDB and neighbour entries on weft-vxlan.
type kernelSnap struct {
	links  []string
	routes []string
	fdb    []string
	neigh  []string
}

func (k kernelSnap) String() string {
	return fmt.Sprintf("links %v\nroutes %v\nfdb %v\nneigh %v", k.links, k.routes, k.fdb, k.neigh)
}

func (k kernelSnap) equal(o kernelSnap) bool {
	return slices.Equal(k.links, o.links) && slices.Equal(k.routes, o.routes) &&
		slices.Equal(k.fdb, o.fdb) && slices.Equal(k.neigh, o.neigh)
}

func snapshot(l *lab.Lab, node string) (kernelSnap, error) {
	var k kernelSnap
	err := inNode(l, node, func() error {
		for _, name := range []string{bridgeDev, vxlanDev} {
			link, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			k.links = append(k.links, fmt.Sprintf("%s#%d", name, link.Attrs().Index))
		}
		links, err := retryDump(netlink.LinkList)
		if err != nil {
			return err
		}
		br, _ := netlink.LinkByName(bridgeDev)
		for _, x := range links {
			if x.Attrs().MasterIndex == br.Attrs().Index {
				k.links = append(k.links, fmt.Sprintf("port %s#%d", x.Attrs().Name, x.Attrs().Index))
			}
		}
		vx, _ := netlink.LinkByName(vxlanDev)
		idx := vx.Attrs().Index
		routes, err := retryDump(func() ([]netlink.Route, error) {
			return netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: routeProtocol}, netlink.RT_FILTER_PROTOCOL)
		})
		if err != nil {
			return err
		}
		for _, r := range routes {
			k.routes = append(k.routes, fmt.Sprintf("%v via %v dev %d", r.Dst, r.Gw, r.LinkIndex))
		}
		fdb, err := retryDump(func() ([]netlink.Neigh, error) { return netlink.NeighList(idx, unix.AF_BRIDGE) })
		if err != nil {
			return err
		}
		for _, e := range fdb {
			if e.IP != nil {
				k.fdb = append(k.fdb, fmt.Sprintf("%s dst %s", e.HardwareAddr, e.IP))
			}
		}
		neigh, err := retryDump(func() ([]netlink.Neigh, error) { return netlink.NeighList(idx, netlink.FAMILY_V4) })
		if err != nil {
			return err
		}
		for _, e := range neigh {
			k.neigh = append(k.neigh, fmt.Sprintf("%s lladdr %s", e.IP, e.HardwareAddr))
		}
		return nil
	})
	for _, s := range [][]string{k.links, k.routes, k.fdb, k.neigh} {
		slices.Sort(s)
	}
	return k, err
}

// countFor counts the routes, FDB and neighbour entries in snap that point at the node
// with tunnel address tunnel and underlay address underlay.
func (k kernelSnap) countFor(tunnel, underlay string) (routes, fdb, neigh int) {
	for _, r := range k.routes {
		if strings.Contains(r, "via "+tunnel+" ") {
			routes++
		}
	}
	for _, e := range k.fdb {
		if strings.HasSuffix(e, " dst "+underlay) {
			fdb++
		}
	}
	for _, e := range k.neigh {
		if strings.HasPrefix(e, tunnel+" ") {
			neigh++
		}
	}
	return routes, fdb, neigh
}

// tunnelOf reads node's tunnel address (on weft-vxlan).
func tunnelOf(l *lab.Lab, node string) (string, error) {
	var s string
	err := inNode(l, node, func() error {
		link, err := netlink.LinkByName(vxlanDev)
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
		if err != nil || len(addrs) == 0 {
			return fmt.Errorf("no address on %s: %v", vxlanDev, err)
		}
		s = addrs[0].IP.String()
		return nil
	})
	return s, err
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

func netlinkByName(name string) (netlink.Link, error) { return netlink.LinkByName(name) }
