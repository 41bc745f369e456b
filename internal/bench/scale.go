package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"

	"github.com/weftnet/weft/internal/cluster"
	"github.com/weftnet/weft/internal/dataplane"
	"github.com/weftnet/weft/internal/lab"
)

// labScale runs items 3 (convergence), 4 (control plane in the lab) and 5 (kernel
// state) on labs of growing size, sharing each lab between them.
func labScale(ctx context.Context, o Options, r *Report) error {
	sizes, cycles := []int{10, 50, 100}, 5
	podSizes, podNodes := []int{10, 50, 100}, 10
	if o.Quick {
		sizes, cycles = []int{10}, 2
		podSizes, podNodes = []int{10, 40}, 5
	}
	if len(o.LabSizes) > 0 {
		sizes = o.LabSizes
	}
	var errs []error
	type kpoint struct{ x, entries, all int }
	var byNodes []kpoint
	for _, n := range sizes {
		err := withLab(ctx, o, n, 2, func(l *lab.Lab) error {
			if o.want(5) {
				k, err := countKernel(l.Nodes()[0].Namespace)
				if err != nil {
					return err
				}
				byNodes = append(byNodes, kpoint{n, k.weft(), k.allRoutes})
				r.add(Figure{Item: "5 kernel state", Name: fmt.Sprintf("%d nodes x 2 pods: weft entries on node1 (routes+FDB+neigh)", n), Unit: "",
					Value: one(float64(k.weft())), Note: fmt.Sprintf("%d routes, %d FDB, %d neigh on weft-vxlan; node total: %d IPv4 routes, %d neigh", k.weftRoutes, k.fdb, k.neigh, k.allRoutes, k.allNeigh)})
			}
			if o.want(4) && len(o.SimSizes) == 0 && n == sizes[len(sizes)-1] {
				if err := labControlPlane(ctx, o, r, l); err != nil {
					return err
				}
			}
			if o.want(3) {
				if err := converge(ctx, o, r, l, cycles); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			errs = append(errs, err)
			if ctx.Err() != nil {
				return errors.Join(errs...)
			}
		}
	}
	if o.want(5) {
		var byPods []kpoint
		for _, p := range podSizes {
			err := withLab(ctx, o, podNodes, p, func(l *lab.Lab) error {
				k, err := countKernel(l.Nodes()[0].Namespace)
				if err != nil {
					return err
				}
				byPods = append(byPods, kpoint{p, k.weft(), k.allRoutes})
				r.add(Figure{Item: "5 kernel state", Name: fmt.Sprintf("%d nodes x %d pods: weft entries on node1", podNodes, p), Unit: "",
					Value: one(float64(k.weft())), Note: fmt.Sprintf("%d routes, %d FDB, %d neigh on weft-vxlan; node total: %d IPv4 routes, %d neigh", k.weftRoutes, k.fdb, k.neigh, k.allRoutes, k.allNeigh)})
				return nil
			})
			if err != nil {
				errs = append(errs, err)
				if ctx.Err() != nil {
					return errors.Join(errs...)
				}
			}
		}
		// Per remote node: the slope between the smallest and largest lab.
		if len(byNodes) >= 2 {
			a, b := byNodes[0], byNodes[len(byNodes)-1]
			slope := float64(b.entries-a.entries) / float64(b.x-a.x)
			c := float64(a.entries) - slope*float64(a.x-1)
			r.add(goalMax(Figure{Item: "5 kernel state", Name: "weft entries per remote node (slope, 2 pods/node)", Unit: "", Value: one(slope),
				Note: fmt.Sprintf("entries ≈ %.2f x remote nodes + %.0f", slope, c)}, 3))
		} else if len(byNodes) == 1 {
			a := byNodes[0]
			r.add(goalMax(Figure{Item: "5 kernel state", Name: "weft entries per remote node (2 pods/node)", Unit: "", Value: one(float64(a.entries) / float64(a.x-1)),
				Note: "one lab size only (quick): entries / remote nodes"}, 3))
		}
		if len(byPods) >= 2 {
			a, b := byPods[0], byPods[len(byPods)-1]
			per := float64(b.entries-a.entries) / float64(podNodes-1)
			r.add(goalMax(Figure{Item: "5 kernel state", Name: fmt.Sprintf("weft entries per remote node, %d -> %d pods/node", a.x, b.x), Unit: "",
				Value: one(float64(b.entries) / float64(podNodes-1)), Note: fmt.Sprintf("growth with pods: %+d entries (%+.2f per remote node); with 100 pods a node needs 2 /26 blocks", b.entries-a.entries, per)}, 3))
		}
	}
	return errors.Join(errs...)
}

func one(v float64) Sample { return Sample{N: 1, Median: v, Min: v, Max: v} }

// labControlPlane is item 4 in the lab: every agent's RSS and CPU and every node's
// underlay traffic (which, with no pod traffic, is all gossip) over a window.
func labControlPlane(ctx context.Context, o Options, r *Report, l *lab.Lab) error {
	window := 30 * time.Second
	if o.Quick {
		window = 10 * time.Second
	}
	nodes := l.Nodes()
	ul := l.Name() + "-underlay"
	type snap struct {
		cpu   float64 // seconds
		bytes uint64
	}
	take := func() ([]snap, error) {
		out := make([]snap, len(nodes))
		err := inHandle(ul, func(h *netlink.Handle) error {
			for i, n := range nodes {
				link, err := h.LinkByName(n.Name)
				if err != nil {
					return err
				}
				s := link.Attrs().Statistics
				out[i].bytes = s.RxBytes + s.TxBytes
				out[i].cpu = procCPU(n.PID)
			}
			return nil
		})
		return out, err
	}
	progress(o, "control plane: measuring %d agents for %s", len(nodes), window)
	a, err := take()
	if err != nil {
		return err
	}
	t := time.Now()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(window):
	}
	b, err := take()
	if err != nil {
		return err
	}
	secs := time.Since(t).Seconds()
	var rss, cpu, bps []float64
	for i, n := range nodes {
		rss = append(rss, float64(procRSS(n.PID))/(1<<20))
		cpu = append(cpu, 100*(b[i].cpu-a[i].cpu)/secs)
		bps = append(bps, float64(b[i].bytes-a[i].bytes)/secs/1024)
	}
	it, note := "4 control plane", fmt.Sprintf("lab, %d real agents, idle, %s window; spread over nodes", len(nodes), window)
	r.add(Figure{Item: it, Name: fmt.Sprintf("agent RSS at %d lab nodes", len(nodes)), Unit: "MB", Value: summarize(rss), Note: note + "; node1: " + rssSplit(nodes[0].PID)})
	r.add(Figure{Item: it, Name: fmt.Sprintf("agent CPU at %d lab nodes", len(nodes)), Unit: "% of a core", Value: summarize(cpu), Note: note})
	r.add(Figure{Item: it, Name: fmt.Sprintf("underlay traffic in+out per node at %d lab nodes", len(nodes)), Unit: "KB/s", Value: summarize(bps),
		Note: note + "; underlay veth counters: gossip plus the agents' health probes"})
	return nil
}

// procRSS returns a process's resident set in bytes.
func procRSS(pid int) uint64 { return procStatus(pid, "VmRSS:") }

// rssSplit describes a process's RSS as anonymous (heap, stacks) and file-backed
// (the mapped binary) memory.
func rssSplit(pid int) string {
	return fmt.Sprintf("RSS %.1f MB = anon %.1f + file %.1f", float64(procStatus(pid, "VmRSS:"))/(1<<20),
		float64(procStatus(pid, "RssAnon:"))/(1<<20), float64(procStatus(pid, "RssFile:"))/(1<<20))
}

// procStatus returns a "kB" field of /proc/<pid>/status in bytes.
func procStatus(pid int, field string) uint64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				kb, _ := strconv.ParseUint(f[0], 10, 64)
				return kb * 1024
			}
		}
	}
	return 0
}

// procCPU returns a process's user+system CPU time in seconds.
func procCPU(pid int) float64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+2:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

// joinSettle is how long converge waits between a node's routes being gone everywhere
// and its agent's restart. The peers are still busy with the death then: each passes the
// news on for up to 12 gossip rounds (2.4 s at 100 nodes), and the lab's agents, which
// share two CPUs, used 1.5 - 1.75 of them in the second before the restart (perf, idle:
// about 1). Restarting at once timed a join into that, not a new node joining a steady
// cluster.
const joinSettle = 3 * time.Second

// converge is item 3 on lab l: kill the last node's agent and time until its routes
// are gone from every other node; start it again and time until its pods answer from
// every other node.
func converge(ctx context.Context, o Options, r *Report, l *lab.Lab, cycles int) error {
	nodes := l.Nodes()
	victim := nodes[len(nodes)-1]
	var blocks []netip.Prefix
	var targets []netip.Addr
	for _, p := range l.Pods() {
		if p.Node == victim.Name && p.Address.IsValid() {
			targets = append(targets, p.Address.Addr())
			if b := p.Address.Masked(); !slices.Contains(blocks, b) {
				blocks = append(blocks, b)
			}
		}
	}
	if len(targets) == 0 {
		return fmt.Errorf("%s has no pods to probe", victim.Name)
	}
	others := nodes[:len(nodes)-1]
	// One netlink handle per node for the whole run: opening one for every poll (enter the
	// namespace, open a socket) took 0.8 of the machine's 2 CPUs while the harness
	// waited for a death, CPU the agents it was timing needed.
	handles, err := openHandles(others)
	if err != nil {
		return err
	}
	defer closeHandles(handles)
	var gone, joined, busyAll []float64
	for c := range cycles {
		t0 := time.Now()
		if err := l.StopAgent(victim.Name, syscall.SIGKILL); err != nil {
			return err
		}
		d, err := waitAll(ctx, others, 60*time.Second, func(n lab.Node) (bool, error) {
			rs, err := weftRoutes(handles[n.Name])
			if err != nil {
				return false, err
			}
			for _, b := range blocks {
				if rs[b] {
					return false, nil
				}
			}
			return true, nil
		}, t0)
		if err != nil {
			return fmt.Errorf("%d nodes, cycle %d: routes of the dead %s: %w", len(nodes), c+1, victim.Name, err)
		}
		gone = append(gone, d.Seconds())
		// A new node joins a steady cluster: let the peers finish with the death first.
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(joinSettle):
		}

		// The ICMP sockets are opened before the start, outside the time measured.
		conns, err := openPingers(others)
		if err != nil {
			return err
		}
		cpu0 := agentsCPU(l.Nodes())
		t1 := time.Now()
		startErr := make(chan error, 1)
		// LaunchAgent, not StartAgent: waiting for the lab to settle polls every agent's
		// status, which would load the agents whose convergence this times.
		go func() { startErr <- l.LaunchAgent(ctx, victim.Name) }()
		d, err = reachableFromAll(ctx, others, conns, targets[0], 60*time.Second, t1)
		closePingers(conns)
		// How busy the machine's CPUs were with the lab's agents while the node joined:
		// near the machine's CPU count, the figure measures the machine, not weft.
		busy := (agentsCPU(l.Nodes()) - cpu0) / time.Since(t1).Seconds()
		busyAll = append(busyAll, busy)
		serr := <-startErr
		if err != nil {
			return fmt.Errorf("%d nodes, cycle %d: %s reachable again: %w", len(nodes), c+1, victim.Name, errors.Join(err, serr))
		}
		if serr != nil {
			return serr
		}
		joined = append(joined, d.Seconds())
		progress(o, "convergence %d nodes, cycle %d: routes gone everywhere %.2fs after kill; reachable from all %.2fs after start (agents used %.2f CPUs meanwhile)",
			len(nodes), c+1, gone[len(gone)-1], joined[len(joined)-1], busy)
		// The next cycle starts from a cluster where every agent agrees again.
		if err := l.WaitSettled(ctx); err != nil {
			return fmt.Errorf("%d nodes, cycle %d: after %s rejoined: %w", len(nodes), c+1, victim.Name, err)
		}
	}
	it := "3 convergence"
	js := summarize(joined)
	f := Figure{Item: it, Name: fmt.Sprintf("%d nodes: agent start -> its pod reachable from all nodes, p99", len(nodes)), Unit: "s",
		Value: Sample{N: js.N, Median: js.P99, Min: js.Min, Max: js.Max}, Note: fmt.Sprintf("p50 %.2fs; a node declared dead re-joining (the lab has no add-node)", js.Median)}
	if len(nodes) >= 100 {
		f = goalMax(f, 1)
	}
	r.add(f)
	r.add(Figure{Item: it, Name: fmt.Sprintf("%d nodes: CPUs the lab's agents used while the node joined", len(nodes)), Unit: "CPUs",
		Value: summarize(busyAll), Note: fmt.Sprintf("of %d on this machine: near it, the join waits for CPU, not for the network", runtime.NumCPU())})
	gs := summarize(gone)
	r.add(goalMax(Figure{Item: it, Name: fmt.Sprintf("%d nodes: agent killed -> its routes gone everywhere, p99", len(nodes)), Unit: "s",
		Value: Sample{N: gs.N, Median: gs.P99, Min: gs.Min, Max: gs.Max}, Note: fmt.Sprintf("p50 %.2fs; documented: within %.1fs = 7 + 4 x max(1, log10 N) (cluster.DeadWithin)", gs.Median, cluster.DeadWithin(len(nodes)).Seconds())},
		cluster.DeadWithin(len(nodes)).Seconds()))
	return nil
}

// agentsCPU is the CPU time, in seconds, the nodes' agents have used so far.
func agentsCPU(nodes []lab.Node) float64 {
	var s float64
	for _, n := range nodes {
		s += procCPU(n.PID)
	}
	return s
}

// waitAll polls cond on every node (in parallel, every 100 ms) until it holds on all,
// and returns the time from t0 until the last one held.
func waitAll(ctx context.Context, nodes []lab.Node, limit time.Duration, cond func(lab.Node) (bool, error), t0 time.Time) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var mu sync.Mutex
	var last time.Duration
	var firstErr error
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for _, n := range nodes {
		wg.Go(func() {
			for {
				sem <- struct{}{}
				ok, err := cond(n)
				<-sem
				now := time.Since(t0)
				if err == nil && ok {
					mu.Lock()
					last = max(last, now)
					mu.Unlock()
					return
				}
				select {
				case <-ctx.Done():
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("%s: not after %s (%v)", n.Name, limit, err)
					}
					mu.Unlock()
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
		})
	}
	wg.Wait()
	return last, firstErr
}

// openHandles returns a netlink handle in each node's namespace, by node name.
func openHandles(nodes []lab.Node) (map[string]*netlink.Handle, error) {
	hs := make(map[string]*netlink.Handle, len(nodes))
	for _, n := range nodes {
		h, err := openHandle(n.Namespace)
		if err != nil {
			closeHandles(hs)
			return nil, err
		}
		hs[n.Name] = h
	}
	return hs, nil
}

func closeHandles(hs map[string]*netlink.Handle) {
	for _, h := range hs {
		h.Close()
	}
}

// weftRoutes returns the destinations of weft's routes in a namespace, through its handle.
func weftRoutes(h *netlink.Handle) (map[netip.Prefix]bool, error) {
	out := map[netip.Prefix]bool{}
	routes, err := retryDump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: dataplane.RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
	})
	for _, rt := range routes {
		if rt.Dst != nil {
			a, _ := netip.AddrFromSlice(rt.Dst.IP.To4())
			ones, _ := rt.Dst.Mask.Size()
			out[netip.PrefixFrom(a, ones)] = true
		}
	}
	return out, err
}

// openPingers opens an ICMP socket in each node's namespace, in the order of nodes.
func openPingers(nodes []lab.Node) ([]*net.IPConn, error) {
	conns := make([]*net.IPConn, len(nodes))
	for i, n := range nodes {
		err := inNS(n.Namespace, func() error {
			c, err := net.ListenPacket("ip4:icmp", "0.0.0.0")
			if err != nil {
				return err
			}
			conns[i] = c.(*net.IPConn)
			return nil
		})
		if err != nil {
			closePingers(conns)
			return nil, fmt.Errorf("ICMP socket in %s: %w", n.Name, err)
		}
	}
	return conns, nil
}

func closePingers(conns []*net.IPConn) {
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}

// reachableFromAll pings target from every node (through its socket of openPingers, every
// 50 ms) and returns the time from t0 until the last node got a reply.
func reachableFromAll(ctx context.Context, nodes []lab.Node, conns []*net.IPConn, target netip.Addr, limit time.Duration, t0 time.Time) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var mu sync.Mutex
	var last time.Duration
	var missing []string
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Go(func() {
			c := conns[i]
			id := int(rand.UintN(1 << 16))
			buf := make([]byte, 1500)
			for seq := 0; ; seq++ {
				if ctx.Err() != nil {
					mu.Lock()
					missing = append(missing, n.Name)
					mu.Unlock()
					return
				}
				m := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: seq & 0xffff, Data: []byte("weft-bench")}}
				b, _ := m.Marshal(nil)
				_, _ = c.WriteTo(b, &net.IPAddr{IP: target.AsSlice()})
				deadline := time.Now().Add(50 * time.Millisecond)
				_ = c.SetReadDeadline(deadline)
				for {
					k, from, err := c.ReadFrom(buf)
					if err != nil {
						break
					}
					rm, err := icmp.ParseMessage(1, buf[:k])
					if err != nil || rm.Type != ipv4.ICMPTypeEchoReply {
						continue
					}
					e, ok := rm.Body.(*icmp.Echo)
					a, _ := netip.AddrFromSlice(from.(*net.IPAddr).IP)
					if ok && e.ID == id && a.Unmap() == target {
						mu.Lock()
						last = max(last, time.Since(t0))
						mu.Unlock()
						return
					}
				}
			}
		})
	}
	wg.Wait()
	if len(missing) > 0 {
		return 0, fmt.Errorf("no reply within %s from %d nodes (%s...)", limit, len(missing), missing[0])
	}
	return last, nil
}
