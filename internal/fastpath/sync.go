package fastpath

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// Want is the fast path a node should have.
type Want struct {
	Bridge, VXLAN string
	// Pods maps each local pod's address to the name of its veth's host end.
	Pods map[netip.Addr]string
}

// Syncer reconciles a node's fast path: the program on the VXLAN device and on every veth
// of the bridge, and the pods and device maps. It is not safe for concurrent use.
type Syncer struct {
	p      *Program
	progID map[bool]int // program ID by tunnel-ness
	// attached remembers the devices found or made right, by ifindex, so a Sync that does
	// not read (full false) checks only new devices.
	attached map[int]bool
	devices  config
}

// NewSyncer returns a Syncer for the loaded program p.
func NewSyncer(p *Program) (*Syncer, error) {
	s := &Syncer{p: p, progID: map[bool]int{}, attached: map[int]bool{}}
	for _, tunnel := range []bool{false, true} {
		info, err := p.program(tunnel).Info()
		if err != nil {
			return nil, fmt.Errorf("reading the fast-path program's ID: %w", err)
		}
		id, ok := info.ID()
		if !ok {
			return nil, fmt.Errorf("%w: the kernel does not report BPF program IDs", ErrUnsupported)
		}
		s.progID[tunnel] = int(id)
	}
	return s, nil
}

// Sync makes the kernel's fast path match w and returns how many changes that took. With
// full, it checks every device's filter (the periodic repair); without, only devices it
// has not seen yet. Devices that do not exist yet are skipped: the next Sync picks them up.
func (s *Syncer) Sync(w Want, full bool) (int, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return 0, fmt.Errorf("listing links for the fast path: %w", err)
	}
	byName := make(map[string]netlink.Link, len(links))
	for _, l := range links {
		byName[l.Attrs().Name] = l
	}
	bridge, vxlan := byName[w.Bridge], byName[w.VXLAN]
	if bridge == nil || vxlan == nil {
		return 0, nil // the dataplane reconcile makes them first
	}
	changes := 0
	dev := config{BridgeIfindex: uint32(bridge.Attrs().Index), VXLANIfindex: uint32(vxlan.Attrs().Index)}
	copy(dev.BridgeMAC[:], bridge.Attrs().HardwareAddr)
	if full || dev != s.devices {
		var have config
		if err := s.p.config.Lookup(uint32(0), &have); err != nil || have != dev {
			if err := s.p.config.Put(uint32(0), dev); err != nil {
				return changes, fmt.Errorf("writing the fast path's device map: %w", err)
			}
			changes++
		}
		s.devices = dev
	}

	// The maps first: a program attached below (a new agent's, replacing the last one's)
	// must find every pod from its first packet on.
	var errs []error
	pods := make(map[netip.Addr]int, len(w.Pods))
	for ip, name := range w.Pods {
		if l := byName[name]; l != nil && l.Attrs().MasterIndex == bridge.Attrs().Index {
			pods[ip] = l.Attrs().Index
		}
	}
	n, err := s.p.syncPods(pods)
	changes += n
	if err != nil {
		errs = append(errs, err)
	}

	seen := map[int]bool{}
	for _, l := range links {
		tunnel := l == vxlan
		if !tunnel && (l.Type() != "veth" || l.Attrs().MasterIndex != bridge.Attrs().Index) {
			continue
		}
		idx := l.Attrs().Index
		seen[idx] = true
		if s.attached[idx] && !full {
			continue
		}
		id, err := Attached(l)
		if err == nil && id != s.progID[tunnel] {
			if err = s.p.Attach(l, tunnel); err == nil {
				changes++
			}
		}
		if err != nil {
			errs = append(errs, err) // a veth going away meanwhile: the next Sync drops it
			continue
		}
		s.attached[idx] = true
	}
	for idx := range s.attached {
		if !seen[idx] {
			delete(s.attached, idx)
		}
	}
	return changes, errors.Join(errs...)
}

// Counts returns the program's packet counts by verdict (Program.Counts).
func (s *Syncer) Counts() (map[string]uint64, error) { return s.p.Counts() }
