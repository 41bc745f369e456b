package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/api"
	"github.com/weftnet/weft/internal/dataplane"
)

// NodeStatus is one node as Status sees it.
type NodeStatus struct {
	Node     string      `json:"node"`
	Underlay netip.Addr  `json:"underlay"`
	PID      int         `json:"pid"`
	Alive    bool        `json:"alive"`           // the recorded pid still is this node's agent
	Agent    *api.Status `json:"agent,omitempty"` // nil if the socket did not answer
	Err      string      `json:"error,omitempty"` // why Agent is nil
}

// String is a one-line summary.
func (s NodeStatus) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-7s %-15s", s.Node, s.Underlay)
	if s.Alive {
		fmt.Fprintf(&b, " pid %-7d", s.PID)
	} else {
		fmt.Fprintf(&b, " %-11s", "no agent")
	}
	if s.Agent == nil {
		fmt.Fprintf(&b, " unreachable: %s", s.Err)
		return b.String()
	}
	a := s.Agent
	if a.Ready {
		b.WriteString(" ready")
	} else {
		fmt.Fprintf(&b, " not ready (%s)", a.Reason)
	}
	var blocks []string
	for _, bl := range a.Blocks {
		blocks = append(blocks, fmt.Sprintf("%s %d/%d", bl.Block, bl.Used, bl.Capacity))
	}
	fmt.Fprintf(&b, "  blocks [%s]", strings.Join(blocks, ", "))
	var peers []string
	for _, p := range a.Peers {
		peers = append(peers, p.Name+"="+p.State)
	}
	fmt.Fprintf(&b, "  peers [%s]", strings.Join(peers, " "))
	if a.Health != "" {
		fmt.Fprintf(&b, "  health %s", a.Health)
	}
	return b.String()
}

// Status reports every node's agent: whether its recorded pid is alive, and the agent's
// own status from its socket when it answers.
func (l *Lab) Status(ctx context.Context) ([]NodeStatus, error) {
	nodes := l.Nodes()
	if len(nodes) == 0 {
		return nil, fmt.Errorf("lab %s has no nodes: is it up? (%s)", l.Name(), l.cli("up"))
	}
	out := make([]NodeStatus, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		out[i] = NodeStatus{Node: n.Name, Underlay: n.Underlay, PID: n.PID, Alive: l.agentAlive(n)}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := api.NewClient(n.Socket, 3*time.Second).Status(ctx)
			if err != nil {
				out[i].Err = err.Error()
				return
			}
			out[i].Agent = &s
		}()
	}
	wg.Wait()
	return out, nil
}

// settleTimeout bounds WaitSettled.
const settleTimeout = 30 * time.Second

// WaitSettled waits until the cluster has converged: every agent sees every other node
// alive with the blocks that node reports owning, and every node's kernel has weft's
// route for each of those blocks on the VXLAN device. Agents being Ready only means each
// node's own dataplane is up; this is what makes a Check right after Up meaningful. It
// returns what is still missing if the bound passes.
func (l *Lab) WaitSettled(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, settleTimeout)
	defer cancel()
	start := time.Now()
	for {
		missing := l.unsettled(ctx)
		if missing == "" {
			l.logf("cluster converged in %s", time.Since(start).Round(time.Millisecond))
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster not converged after %s: %s", time.Since(start).Round(time.Second), missing)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// unsettled returns what is missing for convergence, "" if nothing.
func (l *Lab) unsettled(ctx context.Context) string {
	st, err := l.Status(ctx)
	if err != nil {
		return err.Error()
	}
	own := map[string][]netip.Prefix{}
	for _, s := range st {
		if s.Agent == nil {
			return fmt.Sprintf("agent of %s unreachable: %s", s.Node, s.Err)
		}
		for _, b := range s.Agent.Blocks {
			own[s.Node] = append(own[s.Node], b.Block)
		}
	}
	nodes := l.Nodes()
	for i, s := range st {
		seen := map[string]api.Peer{}
		for _, p := range s.Agent.Peers {
			seen[p.Name] = p
		}
		var routes map[netip.Prefix]bool // read on first need
		for _, o := range st {
			if o.Node == s.Node {
				continue
			}
			p, ok := seen[o.Node]
			if !ok || p.State != "alive" {
				return fmt.Sprintf("%s does not see %s alive (state %q)", s.Node, o.Node, p.State)
			}
			for _, b := range own[o.Node] {
				if !slices.Contains(p.Blocks, b) {
					return fmt.Sprintf("%s does not know block %s of %s yet", s.Node, b, o.Node)
				}
				if routes == nil {
					if routes, err = vxlanRoutes(nodes[i].Namespace); err != nil {
						return fmt.Sprintf("%s: %v", s.Node, err)
					}
				}
				if !covered(routes, b) {
					return fmt.Sprintf("%s has no route for block %s of %s on %s yet", s.Node, b, o.Node, dataplane.VXLANName)
				}
			}
		}
	}
	return ""
}

// covered reports whether one of the routes covers block b (adjacent blocks of a node are
// routed as one prefix).
func covered(routes map[netip.Prefix]bool, b netip.Prefix) bool {
	for r := range routes {
		if r.Bits() <= b.Bits() && r.Contains(b.Addr()) {
			return true
		}
	}
	return false
}

// vxlanRoutes returns the destinations of weft's routes on the VXLAN device in a node.
func vxlanRoutes(nsName string) (map[netip.Prefix]bool, error) {
	out := map[netip.Prefix]bool{}
	err := withHandle(nsName, func(h *netlink.Handle) error {
		link, err := h.LinkByName(dataplane.VXLANName)
		if err != nil {
			return fmt.Errorf("no %s device yet: %w", dataplane.VXLANName, err)
		}
		filter := &netlink.Route{Protocol: dataplane.RouteProtocol, LinkIndex: link.Attrs().Index}
		var routes []netlink.Route
		for range 10 { // a dump the kernel interrupted because the table changed is retried
			routes, err = h.RouteListFiltered(netlink.FAMILY_V4, filter, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_OIF)
			if !errors.Is(err, netlink.ErrDumpInterrupted) {
				break
			}
		}
		if err != nil {
			return fmt.Errorf("listing routes: %w", err)
		}
		for _, r := range routes {
			if r.Dst == nil {
				continue
			}
			a, ok := netip.AddrFromSlice(r.Dst.IP.To4())
			ones, _ := r.Dst.Mask.Size()
			if ok {
				out[netip.PrefixFrom(a, ones)] = true
			}
		}
		return nil
	})
	return out, err
}
