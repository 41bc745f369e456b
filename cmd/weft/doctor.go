package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"time"

	"github.com/spf13/cobra"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/weftnet/weft/internal/api"
	"github.com/weftnet/weft/internal/dataplane"
)

// finding is one doctor check's result.
type finding struct {
	Check   string `json:"check"`
	OK      bool   `json:"ok"`
	Detail  string `json:"detail,omitempty"`
	Problem string `json:"problem,omitempty"`
	Fix     string `json:"fix,omitempty"`
}

type doctorReport struct {
	Node     string    `json:"node,omitempty"`
	Problems int       `json:"problems"`
	Checks   []finding `json:"checks"`
}

func doctorCmd() *cobra.Command {
	var (
		socket string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check this node: kernel features, MTU, CIDR overlap, peers' VXLAN reachability, stale kernel entries; exit 1 on a problem",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r := diagnose(cmd.Context(), socket)
			if asJSON {
				if err := printJSON(cmd.OutOrStdout(), r); err != nil {
					return err
				}
			} else {
				printDoctor(cmd.OutOrStdout(), r)
			}
			if r.Problems > 0 {
				return fmt.Errorf("%d problem(s) found; each comes with its fix above", r.Problems)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&socket, "socket", api.DefaultSocket, "the agent's local API socket")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON (the stable machine format)")
	return cmd
}

func printDoctor(w io.Writer, r doctorReport) {
	for _, f := range r.Checks {
		if f.OK {
			fmt.Fprintf(w, "ok       %s", f.Check)
			if f.Detail != "" {
				fmt.Fprintf(w, ": %s", f.Detail)
			}
			fmt.Fprintln(w)
			continue
		}
		fmt.Fprintf(w, "PROBLEM  %s: %s\n         fix: %s\n", f.Check, f.Problem, f.Fix)
	}
	if r.Problems == 0 {
		fmt.Fprintln(w, "no problems found")
	}
}

func diagnose(ctx context.Context, socket string) doctorReport {
	var r doctorReport
	add := func(f finding) {
		if !f.OK {
			r.Problems++
		}
		r.Checks = append(r.Checks, f)
	}
	for _, f := range kernelFeatures() {
		add(f)
	}
	st, err := api.NewClient(socket, 5*time.Second).Status(ctx)
	if err != nil {
		add(finding{Check: "agent", Problem: err.Error(),
			Fix: "start the weft agent on this node (Kubernetes: kubectl -n kube-system get pods -l app=weft -o wide; lab: weft lab status), or pass --socket"})
		return r
	}
	r.Node = st.Node
	if st.Ready {
		add(finding{Check: "agent", OK: true, Detail: fmt.Sprintf("%s ready, version %s", st.Node, st.Version)})
	} else {
		add(finding{Check: "agent", Problem: "not ready: " + st.Reason, Fix: "read the agent's log; it says what keeps the dataplane from being set up"})
	}
	add(checkMTU(st))
	add(checkOverlap(st))
	for _, f := range checkPeers(st) {
		add(f)
	}
	add(checkKernelEntries(st))
	if st.FastPath != "" {
		// Not a problem either way: without the fast path pod traffic takes the normal path.
		add(finding{Check: "fast path", OK: true, Detail: st.FastPath})
	}
	return r
}

// kernelFeatures creates a bridge, a VXLAN device and weft's nftables table in a throwaway
// network namespace, so nothing on the node is touched.
func kernelFeatures() []finding {
	names := []string{"kernel: bridge", "kernel: vxlan", "kernel: nf_tables"}
	errs := make([]error, 3)
	err := inThrowawayNS(func() error {
		errs[0] = tryLink(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "weft-doc-br"}})
		errs[1] = tryLink(&netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "weft-doc-vx"}, VxlanId: dataplane.VNI, Port: dataplane.VXLANPort})
		errs[2] = tryNFT()
		return nil
	})
	var out []finding
	for i, name := range names {
		e := errs[i]
		if err != nil {
			e = err
		}
		if e == nil {
			out = append(out, finding{Check: name, OK: true})
			continue
		}
		fix := map[int]string{
			0: "load the bridge module (modprobe bridge) or use a kernel with CONFIG_BRIDGE",
			1: "load the vxlan module (modprobe vxlan) or use a kernel with CONFIG_VXLAN",
			2: "load nf_tables (modprobe nf_tables nft_chain_nat nft_nat nft_masq nft_ct nft_fib_ipv4) or use a kernel with CONFIG_NF_TABLES, CONFIG_NFT_NAT, CONFIG_NFT_MASQ, CONFIG_NFT_CT and CONFIG_NFT_FIB_IPV4",
		}[i]
		if err != nil {
			fix = "run weft doctor as root (it needs CAP_SYS_ADMIN and CAP_NET_ADMIN to test the kernel in a throwaway namespace)"
		}
		out = append(out, finding{Check: name, Problem: e.Error(), Fix: fix})
	}
	return out
}

// inThrowawayNS runs f in a new, unnamed network namespace on a locked thread; the
// namespace disappears when its last handle closes. If the thread cannot be moved back, it
// stays locked, so Go discards it rather than reuse it in the wrong namespace.
func inThrowawayNS(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("reading this thread's namespace: %w", err)
			return
		}
		defer orig.Close()
		tmp, err := netns.New()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("creating a throwaway network namespace: %w", err)
			return
		}
		defer tmp.Close()
		ferr := f()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("returning to the original namespace: %w", err))
			return // thread stays locked: Go drops it
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

func tryLink(l netlink.Link) error {
	if err := netlink.LinkAdd(l); err != nil {
		return fmt.Errorf("creating a %s device: %w", l.Type(), err)
	}
	return netlink.LinkDel(l)
}

// tryNFT builds weft's own nftables table (masquerade in a nat chain, notrack for VXLAN in
// raw chains, a hostPort's DNAT with fib and its hairpin masquerade with ct status), so
// that every nftables feature the agent needs is tried.
func tryNFT() error {
	return dataplane.NewKernel().Apply(dataplane.NFTTableSet{
		ClusterCIDR: netip.MustParsePrefix("10.32.0.0/12"), VXLANPort: dataplane.VXLANPort, Bridge: dataplane.BridgeName,
		HostPorts: []dataplane.HostPort{{Protocol: "tcp", HostPort: 18080, PodIP: netip.MustParseAddr("10.32.0.2"), PodPort: 80}},
	})
}

func checkMTU(st api.Status) finding {
	f := finding{Check: "mtu"}
	if st.UnderlayMTU > 0 && st.MTU+dataplane.VXLANOverhead > st.UnderlayMTU {
		f.Problem = fmt.Sprintf("the overlay MTU %d needs an underlay MTU of at least %d, but this node's underlay interface has %d",
			st.MTU, st.MTU+dataplane.VXLANOverhead, st.UnderlayMTU)
		f.Fix = fmt.Sprintf("restore the underlay interface's MTU to %d, or restart every agent with --mtu %d", st.MTU+dataplane.VXLANOverhead, st.UnderlayMTU-dataplane.VXLANOverhead)
		return f
	}
	var differ []string
	for _, p := range st.Peers {
		if p.MTU != 0 && p.MTU != st.MTU {
			differ = append(differ, fmt.Sprintf("%s has %d", p.Name, p.MTU))
		}
	}
	if len(differ) > 0 {
		f.Problem = fmt.Sprintf("this node's overlay MTU is %d but %v", st.MTU, differ)
		f.Fix = "give every node's underlay the same MTU, or run every agent with the same --mtu (the smallest underlay MTU minus 50)"
		return f
	}
	f.OK, f.Detail = true, fmt.Sprintf("overlay %d, underlay %d, same on every peer that answered", st.MTU, st.UnderlayMTU)
	return f
}

// checkOverlap looks for routes that are not weft's but overlap the cluster CIDR.
func checkOverlap(st api.Status) finding {
	f := finding{Check: "cluster CIDR overlap"}
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		f.Problem, f.Fix = "listing routes: "+err.Error(), "run weft doctor as root on the node"
		return f
	}
	var clash []string
	for _, rt := range routes {
		if rt.Dst == nil || rt.Protocol == dataplane.RouteProtocol {
			continue
		}
		ones, _ := rt.Dst.Mask.Size()
		a, ok := netip.AddrFromSlice(rt.Dst.IP.To4())
		if !ok || ones == 0 {
			continue
		}
		p := netip.PrefixFrom(a, ones)
		if !p.Overlaps(st.ClusterCIDR) {
			continue
		}
		dev := ""
		if l, err := netlink.LinkByIndex(rt.LinkIndex); err == nil {
			dev = l.Attrs().Name
		}
		if dev == dataplane.BridgeName || dev == dataplane.VXLANName {
			continue // the kernel's own routes for weft's addresses
		}
		clash = append(clash, fmt.Sprintf("%s dev %s", p, dev))
	}
	if len(clash) > 0 {
		f.Problem = fmt.Sprintf("routes overlap the cluster CIDR %s: %v", st.ClusterCIDR, clash)
		f.Fix = "choose a --cluster-cidr that does not overlap the node's networks (on every agent), or remove the overlapping routes"
		return f
	}
	f.OK, f.Detail = true, fmt.Sprintf("no route overlaps %s", st.ClusterCIDR)
	return f
}

func checkPeers(st api.Status) []finding {
	var out []finding
	for _, p := range st.Peers {
		f := finding{Check: "peer " + p.Name}
		switch p.Health {
		case api.HealthOK:
			f.OK, f.Detail = true, fmt.Sprintf("VXLAN port reachable, overlay RTT %.2fms", p.OverlayRTTMs)
		case "":
			f.OK, f.Detail = true, "not probed (agent runs with --probe-port 0)"
		case api.HealthUnknown:
			f.OK, f.Detail = true, "not probed yet"
		default:
			f.Problem = p.Health + ": " + p.HealthDetail
			f.Fix = peerFix(p)
		}
		out = append(out, f)
	}
	return out
}

func peerFix(p api.Peer) string {
	ul := net.JoinHostPort(p.Underlay.String(), "")
	switch p.Health {
	case api.HealthPeerDown:
		return fmt.Sprintf("start the weft agent on %s (Kubernetes: check its weft pod; lab: weft lab status), or remove the node if it is gone for good", p.Name)
	case api.HealthUnderlayBroken:
		return fmt.Sprintf("check the node network between this node and %s (%s): UDP %d (probes) and TCP/UDP %d (gossip) must pass", p.Name, ul[:len(ul)-1], 6785, 6783)
	case api.HealthVXLANBlocked:
		return fmt.Sprintf("allow UDP %d (VXLAN) in both directions between this node and %s (firewall, nftables/iptables on either node, cloud security group)", dataplane.VXLANPort, p.Name)
	case api.HealthMTUBlackhole:
		return fmt.Sprintf("give every node's underlay the same MTU, at least the overlay MTU + %d (check %s's and this node's interfaces), or run every agent with --mtu set to the smallest underlay MTU minus %d", dataplane.VXLANOverhead, p.Name, dataplane.VXLANOverhead)
	case api.HealthMissingKernel:
		return "the agent puts missing entries back within one resync (5s); if they keep vanishing, find what deletes them (another network manager, a script flushing routes)"
	}
	return "see weft status peers"
}

func checkKernelEntries(st api.Status) finding {
	f := finding{Check: "kernel entries"}
	k := st.Kernel
	switch {
	case k == nil:
		f.OK, f.Detail = true, "not compared (agent runs with --probe-port 0)"
	case k.Error != "":
		f.Problem, f.Fix = "the agent cannot read the kernel: "+k.Error, "read the agent's log"
	case len(k.Stale) > 0:
		f.Problem = fmt.Sprintf("%d stale entries nothing wants: %v", len(k.Stale), k.Stale)
		f.Fix = "the agent removes them once it has heard the cluster (after --sync-grace); if they stay, delete them by hand or restart the agent"
	case len(k.Missing) > 0:
		f.Problem = fmt.Sprintf("%d wanted entries missing: %v", len(k.Missing), k.Missing)
		f.Fix = "the agent puts them back within one resync (5s); if they keep vanishing, find what deletes them"
	default:
		f.OK, f.Detail = true, fmt.Sprintf("%d/%d present, none stale", k.Present, k.Expected)
	}
	return f
}
