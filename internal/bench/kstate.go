package bench

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/dataplane"
)

// kernelCount is what one node's kernel holds.
type kernelCount struct {
	weftRoutes, fdb, neigh int // on weft-vxlan: weft's routes, FDB and neighbour entries
	allRoutes, allNeigh    int // every IPv4 route (main table) and neighbour entry in the node
}

func (k kernelCount) weft() int { return k.weftRoutes + k.fdb + k.neigh }

func retryDump[T any](f func() ([]T, error)) ([]T, error) {
	var (
		out []T
		err error
	)
	for range 10 {
		if out, err = f(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return out, err
}

// countKernel counts the entries in namespace nsName.
func countKernel(nsName string) (kernelCount, error) {
	var k kernelCount
	err := inHandle(nsName, func(h *netlink.Handle) error {
		vx, err := h.LinkByName(dataplane.VXLANName)
		if err != nil {
			return fmt.Errorf("no %s: %w", dataplane.VXLANName, err)
		}
		idx := vx.Attrs().Index
		routes, err := retryDump(func() ([]netlink.Route, error) {
			return h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{LinkIndex: idx, Protocol: dataplane.RouteProtocol},
				netlink.RT_FILTER_OIF|netlink.RT_FILTER_PROTOCOL)
		})
		if err != nil {
			return err
		}
		k.weftRoutes = len(routes)
		fdb, err := retryDump(func() ([]netlink.Neigh, error) { return h.NeighList(idx, unix.AF_BRIDGE) })
		if err != nil {
			return err
		}
		for _, f := range fdb {
			if f.IP != nil { // only remote entries: "MAC dst IP"
				k.fdb++
			}
		}
		neigh, err := retryDump(func() ([]netlink.Neigh, error) { return h.NeighList(idx, unix.AF_INET) })
		if err != nil {
			return err
		}
		k.neigh = len(neigh)
		all, err := retryDump(func() ([]netlink.Route, error) { return h.RouteList(nil, netlink.FAMILY_V4) })
		if err != nil {
			return err
		}
		k.allRoutes = len(all)
		an, err := retryDump(func() ([]netlink.Neigh, error) { return h.NeighList(0, unix.AF_INET) })
		if err != nil {
			return err
		}
		k.allNeigh = len(an)
		return nil
	})
	return k, err
}
