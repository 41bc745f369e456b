package lab

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

const (
	// underlayBridge is the bridge in the underlay namespace every node's eth0 hangs on.
	underlayBridge = "ul0"
	// nodeUplink is the node end of the node's underlay veth.
	nodeUplink  = "eth0"
	underlayMTU = 1500
)

// underlayNet is 198.18.0.0/15 (RFC 2544): never routed on the Internet, so lab
// addresses cannot clash with anything real. Node i gets underlayNet.Addr()+i.
var underlayNet = netip.MustParsePrefix("198.18.0.0/15")

// maxNodes keeps node addresses well inside underlayNet and node names short.
const maxNodes = 1000

func underlayIP(i int) netip.Addr {
	b := underlayNet.Addr().As4()
	binary.BigEndian.PutUint32(b[:], binary.BigEndian.Uint32(b[:])+uint32(i))
	return netip.AddrFrom4(b)
}

// buildUnderlay creates the underlay namespace and its bridge.
func buildUnderlay(nsName string) error {
	if err := createNS(nsName); err != nil {
		return err
	}
	return withHandle(nsName, func(h *netlink.Handle) error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: underlayBridge, MTU: underlayMTU}}
		if err := h.LinkAdd(br); err != nil {
			return fmt.Errorf("creating bridge %s in %s: %w", underlayBridge, nsName, err)
		}
		if err := h.LinkSetUp(br); err != nil {
			return fmt.Errorf("bringing up bridge %s in %s: %w", underlayBridge, nsName, err)
		}
		return nil
	})
}

// buildNode creates the node namespace and joins it to the underlay bridge: a veth named
// after the node in the underlay namespace, "eth0" with the node's address in the node.
func buildNode(underlayNS string, n Node) error {
	if err := createNS(n.Namespace); err != nil {
		return err
	}
	nodeNS, err := netns.GetFromPath(nsPath(n.Namespace))
	if err != nil {
		return fmt.Errorf("opening %s: %w", n.Namespace, err)
	}
	defer nodeNS.Close()

	err = withHandle(underlayNS, func(h *netlink.Handle) error {
		br, err := h.LinkByName(underlayBridge)
		if err != nil {
			return fmt.Errorf("finding bridge %s in %s: %w", underlayBridge, underlayNS, err)
		}
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: n.Name, MTU: underlayMTU, MasterIndex: br.Attrs().Index},
			PeerName:      nodeUplink,
			PeerMTU:       underlayMTU,
			PeerNamespace: netlink.NsFd(int(nodeNS)),
		}
		if err := h.LinkAdd(veth); err != nil {
			return fmt.Errorf("creating veth %s/%s for %s: %w", n.Name, nodeUplink, n.Name, err)
		}
		l, err := h.LinkByName(n.Name)
		if err != nil {
			return fmt.Errorf("finding veth %s in %s: %w", n.Name, underlayNS, err)
		}
		if err := h.LinkSetMaster(l, br); err != nil {
			return fmt.Errorf("attaching %s to %s: %w", n.Name, underlayBridge, err)
		}
		if err := h.LinkSetUp(l); err != nil {
			return fmt.Errorf("bringing up %s in %s: %w", n.Name, underlayNS, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return withHandle(n.Namespace, func(h *netlink.Handle) error {
		l, err := h.LinkByName(nodeUplink)
		if err != nil {
			return fmt.Errorf("finding %s in %s: %w", nodeUplink, n.Namespace, err)
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{
			IP:   n.Underlay.AsSlice(),
			Mask: net.CIDRMask(underlayNet.Bits(), 32),
		}}
		if err := h.AddrAdd(l, addr); err != nil {
			return fmt.Errorf("adding %s to %s in %s: %w", addr, nodeUplink, n.Namespace, err)
		}
		if err := h.LinkSetUp(l); err != nil {
			return fmt.Errorf("bringing up %s in %s: %w", nodeUplink, n.Namespace, err)
		}
		return nil
	})
}

// linkUpTimeout bounds waitUnderlayUp.
const linkUpTimeout = 10 * time.Second

// waitUnderlayUp waits until every node's eth0 and its underlay-side peer are
// operationally up. A new veth drops what it is given until the kernel's link watcher
// has activated it, which it does in batches up to a second apart; without this wait the
// first packets between nodes (gossip, a Check) may vanish.
func waitUnderlayUp(underlayNS string, nodes []Node) error {
	deadline := time.Now().Add(linkUpTimeout)
	for _, n := range nodes {
		for _, c := range []struct{ ns, link string }{{n.Namespace, nodeUplink}, {underlayNS, n.Name}} {
			for {
				var state netlink.LinkOperState
				err := withHandle(c.ns, func(h *netlink.Handle) error {
					l, err := h.LinkByName(c.link)
					if err != nil {
						return err
					}
					state = l.Attrs().OperState
					return nil
				})
				if err != nil {
					return fmt.Errorf("checking %s in %s: %w", c.link, c.ns, err)
				}
				if state == netlink.OperUp {
					break
				}
				if time.Now().After(deadline) {
					return fmt.Errorf("%s in %s is still %s after %s; check `ip -n %s link show %s`", c.link, c.ns, state, linkUpTimeout, c.ns, c.link)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	return nil
}
