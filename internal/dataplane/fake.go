package dataplane

import (
	"bytes"
	"fmt"
	"slices"
	"sync"
)

// FakeKernel is an in-memory Kernel for tests: Observe returns State, Apply changes State
// the way the kernel would, as far as Plan relies on it (deleting a link takes what is on
// it along; an FDB replace rewrites the MAC's first remote). Fail, when set, is asked
// before each op and can make it fail.
type FakeKernel struct {
	mu      sync.Mutex
	State   Observed
	Applied []Op
	Fail    func(Op) error
}

// Observe implements Kernel. Links other than the named ones are not modelled.
func (f *FakeKernel) Observe(bridge, vxlan string) (Observed, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return clone(f.State), nil
}

// Apply implements Kernel.
func (f *FakeKernel) Apply(op Op) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Fail != nil {
		if err := f.Fail(op); err != nil {
			return err
		}
	}
	if err := f.State.apply(op); err != nil {
		return err
	}
	f.Applied = append(f.Applied, op)
	return nil
}

// apply changes s the way the kernel changes when op is applied, as far as Plan relies on
// it. It is the fake kernel's model, and the reconciler's between two kernel reads.
func (s *Observed) apply(op Op) error {
	switch op := op.(type) {
	case LinkAdd:
		l := op.Link
		l.Up = false
		switch l.Kind {
		case "bridge":
			s.Bridge = &l
		case "vxlan":
			s.VXLAN = &l
		default:
			return fmt.Errorf("fake: link kind %q", l.Kind)
		}
	case LinkDel:
		if s.Bridge != nil && s.Bridge.Name == op.Name {
			s.Bridge = nil
		}
		if s.VXLAN != nil && s.VXLAN.Name == op.Name {
			s.VXLAN = nil
		}
		s.Addrs = slices.DeleteFunc(s.Addrs, func(a Addr) bool { return a.Dev == op.Name })
		s.Routes = slices.DeleteFunc(s.Routes, func(r Route) bool { return r.Dev == op.Name })
		s.Neighs = slices.DeleteFunc(s.Neighs, func(n Neigh) bool { return n.Dev == op.Name })
		s.FDB = slices.DeleteFunc(s.FDB, func(e FDB) bool { return e.Dev == op.Name })
	case LinkSetMTU:
		return s.setLink(op.Name, func(l *Link) { l.MTU = op.MTU })
	case LinkSetMAC:
		return s.setLink(op.Name, func(l *Link) { l.MAC = op.MAC })
	case LinkSetUp:
		return s.setLink(op.Name, func(l *Link) { l.Up = true })
	case AddrAdd:
		if s.link(op.Addr.Dev) == nil {
			return fmt.Errorf("fake: no link %q", op.Addr.Dev)
		}
		if !slices.Contains(s.Addrs, op.Addr) {
			s.Addrs = append(s.Addrs, op.Addr)
		}
	case AddrDel:
		s.Addrs = slices.DeleteFunc(s.Addrs, func(a Addr) bool { return a == op.Addr })
	case RouteAdd:
		if slices.ContainsFunc(s.Routes, func(r Route) bool { return r.Dst == op.Route.Dst && r.Metric == op.Route.Metric }) {
			return fmt.Errorf("fake: route to %s exists", op.Route.Dst)
		}
		s.Routes = append(s.Routes, op.Route)
	case RouteReplace:
		s.Routes = slices.DeleteFunc(s.Routes, func(r Route) bool { return r.Dst == op.Route.Dst && r.Metric == op.Route.Metric })
		s.Routes = append(s.Routes, op.Route)
	case RouteDel:
		s.Routes = slices.DeleteFunc(s.Routes, func(r Route) bool { return r == op.Route })
	case NeighSet:
		s.Neighs = slices.DeleteFunc(s.Neighs, func(n Neigh) bool { return n.Dev == op.Neigh.Dev && n.IP == op.Neigh.IP })
		s.Neighs = append(s.Neighs, op.Neigh)
	case NeighDel:
		s.Neighs = slices.DeleteFunc(s.Neighs, func(n Neigh) bool { return n.Dev == op.Neigh.Dev && n.IP == op.Neigh.IP })
	case FDBSet:
		i := slices.IndexFunc(s.FDB, func(e FDB) bool {
			return e.Dev == op.FDB.Dev && e.Dst.IsValid() && bytes.Equal(e.MAC, op.FDB.MAC)
		})
		if i >= 0 {
			s.FDB[i] = op.FDB
		} else {
			s.FDB = append(s.FDB, op.FDB)
		}
	case FDBDel:
		s.FDB = slices.DeleteFunc(s.FDB, func(e FDB) bool {
			return e.Dev == op.FDB.Dev && e.Dst == op.FDB.Dst && bytes.Equal(e.MAC, op.FDB.MAC)
		})
	case SysctlSet:
		if op.Key != ipForward {
			return fmt.Errorf("fake: sysctl %q", op.Key)
		}
		s.IPForward = op.Value == "1"
	case NFTTableSet:
		// What observeNAT reads after setTable(op), which refuses the same ops.
		if err := op.check(); err != nil {
			return fmt.Errorf("fake: %w", err)
		}
		raw := func(hook string) *RawChain {
			return &RawChain{ChainHeader: ChainHeader{Type: rawChainType, Hook: hook, Priority: rawChainPriority, Policy: rawChainPolicy},
				Rules: []int{op.VXLANPort}}
		}
		hostPorts := func(hook string) *HostPortChain {
			return &HostPortChain{ChainHeader: ChainHeader{Type: hostPortsChainType, Hook: hook, Priority: hostPortsChainPriority,
				Policy: hostPortsChainPolicy}, Rules: slices.Clone(op.HostPorts)}
		}
		s.NAT = NAT{Table: true, Chain: &NATChain{
			ChainHeader: ChainHeader{Type: natChainType, Hook: natChainHook, Priority: natChainPriority, Policy: natChainPolicy},
			Rules:       op.postrouting(),
		}, Prerouting: raw(rawPreroutingName), Output: raw(rawOutputName),
			HostPortsPrerouting: hostPorts("prerouting"), HostPortsOutput: hostPorts("output")}
	default:
		return fmt.Errorf("fake: unknown op %T", op)
	}
	return nil
}

func (s *Observed) link(name string) *Link {
	for _, l := range []*Link{s.Bridge, s.VXLAN} {
		if l != nil && l.Name == name {
			return l
		}
	}
	return nil
}

func (s *Observed) setLink(name string, set func(*Link)) error {
	l := s.link(name)
	if l == nil {
		return fmt.Errorf("fake: no link %q", name)
	}
	set(l)
	return nil
}

func clone(o Observed) Observed {
	c := o
	if o.Bridge != nil {
		c.Bridge = ptr(*o.Bridge)
	}
	if o.VXLAN != nil {
		c.VXLAN = ptr(*o.VXLAN)
	}
	c.Addrs = slices.Clone(o.Addrs)
	c.Routes = slices.Clone(o.Routes)
	c.Neighs = slices.Clone(o.Neighs)
	c.FDB = slices.Clone(o.FDB)
	if o.NAT.Chain != nil {
		ch := *o.NAT.Chain
		ch.Rules = slices.Clone(ch.Rules)
		c.NAT.Chain = &ch
	}
	for _, raw := range []**RawChain{&c.NAT.Prerouting, &c.NAT.Output} {
		if *raw != nil {
			ch := **raw
			ch.Rules = slices.Clone(ch.Rules)
			*raw = &ch
		}
	}
	for _, hp := range []**HostPortChain{&c.NAT.HostPortsPrerouting, &c.NAT.HostPortsOutput} {
		if *hp != nil {
			ch := **hp
			ch.Rules = slices.Clone(ch.Rules)
			*hp = &ch
		}
	}
	return c
}
