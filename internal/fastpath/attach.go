package fastpath

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// filterName names weft's tc filters (tc shows it).
const filterName = "weft-fastpath"

// filterPrio is the tc priority of weft's filter on a device's ingress hook.
const filterPrio = 1

// Attach puts the fast path on link's ingress: from_tunnel for the VXLAN device, from_pod
// for a pod's veth. It uses a classic clsact filter, which outlives the agent, so an agent
// restart does not take the fast path away; a filter of an earlier program is replaced in
// place.
func (p *Program) Attach(link netlink.Link, tunnel bool) error {
	attrs := link.Attrs()
	qd := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: attrs.Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscReplace(qd); err != nil {
		return fmt.Errorf("adding a clsact qdisc to %s: %w", attrs.Name, err)
	}
	f := &netlink.BpfFilter{
		FilterAttrs: filterAttrs(attrs.Index),
		Fd:          p.program(tunnel).FD(), Name: filterName, DirectAction: true,
	}
	if err := netlink.FilterReplace(f); err != nil {
		return fmt.Errorf("attaching the fast path to %s: %w", attrs.Name, err)
	}
	return nil
}

// filterAttrs are the attributes of weft's filter on the ingress of the device with index.
func filterAttrs(index int) netlink.FilterAttrs {
	return netlink.FilterAttrs{
		LinkIndex: index, Parent: netlink.HANDLE_MIN_INGRESS,
		Handle: 1, Priority: filterPrio, Protocol: unix.ETH_P_ALL,
	}
}

// Attached reports the ID of the fast-path program on link's ingress, 0 for none.
func Attached(link netlink.Link) (int, error) {
	filters, err := netlink.FilterList(link, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return 0, nil // no clsact qdisc
		}
		return 0, fmt.Errorf("listing %s's tc filters: %w", link.Attrs().Name, err)
	}
	for _, f := range filters {
		if bf, ok := f.(*netlink.BpfFilter); ok && bf.Priority == filterPrio {
			return bf.Id, nil
		}
	}
	return 0, nil
}

// Remove takes weft's fast-path filters off the VXLAN device and the bridge's veths, for
// an agent running without the fast path after one that ran with it. It returns how many
// it removed.
func Remove(bridge, vxlan string) (int, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return 0, fmt.Errorf("listing links: %w", err)
	}
	brIndex := -1
	for _, l := range links {
		if l.Attrs().Name == bridge {
			brIndex = l.Attrs().Index
		}
	}
	removed := 0
	var errs []error
	for _, l := range links {
		if l.Attrs().Name != vxlan && l.Attrs().MasterIndex != brIndex {
			continue
		}
		id, err := Attached(l)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if id == 0 {
			continue
		}
		if err := netlink.FilterDel(&netlink.BpfFilter{FilterAttrs: filterAttrs(l.Attrs().Index)}); err != nil {
			errs = append(errs, fmt.Errorf("removing the fast path from %s: %w", l.Attrs().Name, err))
			continue
		}
		removed++
	}
	return removed, errors.Join(errs...)
}
