package bench

import (
	"bufio"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/api"
	"github.com/weftnet/weft/internal/cluster"
	"github.com/weftnet/weft/internal/timerslack"
)

// SimFlag is the hidden command-line flag of weft-bench that runs SimMembers; the
// harness starts its own binary with it inside a namespace.
const SimFlag = "-sim-members"

var (
	simAgentIP = netip.MustParseAddr("198.18.0.1")
	simNet     = "198.18.0.0/15"
)

// simJoinPace is the pause after each simulated member's join.
const simJoinPace = 40 * time.Millisecond

// simTimeScale is how much the gossip timers of a simulation of n members are stretched
// (cluster.Config.TimeScale): 1 up to 300 members, n/250 above. One process on two CPUs
// keeps up with 300 members at full speed, not with 1,000: memberlist's per-message work
// (a msgpack decoder, an AES-GCM open, a merge) for every member's every packet makes the
// acks late, late acks make suspicions, and suspicions make more messages. Stretched, the
// members send the same messages per protocol round, only fewer rounds a second; the
// figures are multiplied back.
func simTimeScale(n int) float64 { return max(1, float64(n)/250) }

// simTarget is the cluster size the control-plane goals are set for.
const simTarget = 1000

// simSettle is the wait after the agent has converged before the bootstrap's gossip is
// checked every simDrainPeriod (see simRun); both are stretched like the gossip timers.
const (
	simSettle      = 10 * time.Second
	simDrainPeriod = 5 * time.Second
)

// simDrainLimit bounds the wait for the bootstrap's gossip to drain (see simRun). A
// healthy simulated cluster has drained at the first check (20 s at 1,000 members), and
// `make bench` takes about 28 minutes; one that waits the whole limit is in a suspicion
// storm (the figure's note says so), and that run goes past 30.
const simDrainLimit = 9 * time.Minute

// loCounters returns the bytes and packets sent on lo in namespace nsName.
func loCounters(nsName string) (bytes, packets uint64, err error) {
	err = inHandle(nsName, func(h *netlink.Handle) error {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		bytes, packets = lo.Attrs().Statistics.TxBytes, lo.Attrs().Statistics.TxPackets
		return nil
	})
	return bytes, packets, err
}

// simProbeTimeout is how long a simulated member waits for a probe's ack before asking
// others to probe (memberlist's default is 500 ms). Hundreds of members share this
// process's two CPUs, so an ack can be late by the process's scheduling delay alone; with
// 500 ms that set off waves of false suspicion and refutation at 300 members on a slow
// day, traffic a cluster of separate machines never sends. In a healthy cluster every ack
// comes back in time either way, so the figures are those of such a cluster.
const simProbeTimeout = 900 * time.Millisecond

// simRetransmitMult is the simulated members' retransmit multiplier (memberlist's, and the
// agent's, is 4). The bootstrap of n members queues every member's "alive" and record on
// every member, each to be sent 4 x ceil(log10(n+1)) times: at 1,000 members about 32
// million sends, each decoded by its receiver, more than one process on two CPUs gets through
// before its late acks set off suspicions, whose broadcasts lengthen the backlog further.
// With 1, a quarter of that. Idle members broadcast nothing, so the steady state measured
// after the drain is the same; the measured agent keeps the real setting.
const simRetransmitMult = 1

// simAddr is the gossip address of simulated member i: 198.18.1.0 + i.
func simAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 18, byte(1 + i/256), byte(i % 256)})
}

// simRecord is member i's node record: one /26 block from 10.33.0.0/16.
func simRecord(i int) cluster.Node {
	t := netip.AddrFrom4([4]byte{10, 33, byte(i * 64 / 256), byte(i * 64 % 256)})
	return cluster.Node{
		Name: fmt.Sprintf("sim%04d", i), Underlay: simAddr(i),
		VTEPMAC: fmt.Sprintf("02:5e:00:00:%02x:%02x", i/256, i%256),
		Tunnel:  t, Blocks: []netip.Prefix{netip.PrefixFrom(t, 26)}, Version: "sim",
	}
}

// SimMembers runs n gossip members in this process, each a real cluster.Cluster (weft's
// delegate, memberlist's UDP/TCP transport, the cluster key in keyFile) on its own
// address 198.18.1.0+i, all joined through member 0. It writes "ready" to ready once all
// have joined and runs until ctx ends. It must run inside a namespace where those
// addresses are local (the harness routes 198.18.0.0/15 to lo). scale stretches the
// members' gossip timers (cluster.Config.TimeScale).
func SimMembers(ctx context.Context, n int, keyFile string, scale float64, ready io.Writer) error {
	key, err := cluster.LoadKey(keyFile)
	if err != nil {
		return err
	}
	// The members' timers wake this one process as often as the agents' wake theirs:
	// relax them the same way (package timerslack), or the CPU the wake-ups take delays
	// the members' acks into waves of suspicion.
	if _, err := timerslack.Set(timerslack.Default); err != nil {
		fmt.Fprintf(os.Stderr, "simulated members: %v\n", err)
	}
	var members []*cluster.Cluster
	defer func() {
		for _, m := range members {
			_ = m.Shutdown()
		}
	}()
	for i := range n {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c, err := cluster.Start(cluster.Config{Self: simRecord(i), BindAddr: simAddr(i), Key: key, LogOutput: io.Discard,
			ProbeTimeout: simProbeTimeout, TimeScale: scale, RetransmitMult: simRetransmitMult})
		if err != nil {
			return fmt.Errorf("member %d: %w", i, err)
		}
		members = append(members, c)
		// Join through a few earlier members, so no single one serves every join.
		var err2 error
		for try := 0; i > 0 && try < 5; try++ {
			peers := []string{simAddr(0).String(), simAddr(rand.IntN(i)).String()}
			if _, err2 = c.Join(peers); err2 == nil {
				break
			}
			time.Sleep(time.Second)
		}
		if err2 != nil {
			return fmt.Errorf("member %d joining: %w", i, err2)
		}
		// Pace the joins: each one is an epidemic broadcast to every member, and joining
		// hundreds back to back overloads this process, whose late acks then set off
		// waves of suspicion that a real cluster of separate machines never sees.
		time.Sleep(simJoinPace)
		if (i+1)%50 == 0 {
			fmt.Fprintf(os.Stderr, "%s simulated members: %d joined\n", time.Now().Format("15:04:05"), i+1)
		}
	}
	fmt.Fprintln(ready, "ready")
	<-ctx.Done()
	return nil
}

// simControlPlane is item 4 at scale: one real `weft agent` (its real dataplane in a
// namespace of its own) in a cluster of simulated members, at 100 and 1,000 members.
func simControlPlane(ctx context.Context, o Options, r *Report) error {
	// 1,000 members run with their gossip timers stretched (simTimeScale).
	sizes := []int{100, 1000}
	const target = simTarget
	if o.Quick {
		sizes = []int{100}
	}
	if len(o.SimSizes) > 0 {
		sizes = o.SimSizes
	}
	var pts []point
	for _, n := range sizes {
		waitQuiet(ctx, o)
		p, err := simRun(ctx, o, r, n)
		if err != nil {
			return fmt.Errorf("%d members: %w", n, err)
		}
		pts = append(pts, p)
	}
	it := "4 control plane"
	if len(pts) < 2 {
		return nil
	}
	a, b := pts[0], pts[len(pts)-1]
	na, nb := float64(sizes[0]), float64(sizes[len(sizes)-1])
	if nb >= target {
		g := fmt.Sprintf("%d -> %d members (x%d)", sizes[0], sizes[len(sizes)-1], sizes[len(sizes)-1]/sizes[0])
		// simRun reported the figures themselves, with their goals.
		r.add(Figure{Item: it, Name: "growth of agent RSS, " + g, Unit: "x", Value: one(b.rss / a.rss)})
		r.add(Figure{Item: it, Name: "growth of agent CPU, " + g, Unit: "x", Value: one(b.cpu / a.cpu)})
		r.add(Figure{Item: it, Name: "growth of gossip per node, " + g, Unit: "x", Value: one(b.kbps / a.kbps)})
		return nil
	}
	proj := func(ya, yb float64) float64 { return ya + (yb-ya)/(nb-na)*(target-na) }
	note := fmt.Sprintf("PROJECTED: the line through %d and %d members, extended to %d", sizes[0], sizes[len(sizes)-1], target)
	p := point{rss: proj(a.rss, b.rss), cpu: proj(a.cpu, b.cpu), kbps: proj(a.kbps, b.kbps)}
	r.add(goalMax(Figure{Item: it, Name: fmt.Sprintf("agent RSS at %d members (projected)", target), Unit: "MB", Value: one(p.rss), Note: note}, 40))
	r.add(Figure{Item: it, Name: fmt.Sprintf("agent CPU at %d members (projected)", target), Unit: "% of a core", Value: one(p.cpu), Note: note})
	r.add(goalMax(Figure{Item: it, Name: fmt.Sprintf("gossip in+out per node at %d members (projected)", target), Unit: "KB/s", Value: one(p.kbps), Note: note}, 20))
	g := fmt.Sprintf("%d -> %d members (x%d)", sizes[0], target, target/sizes[0])
	r.add(Figure{Item: it, Name: "growth of agent RSS, " + g, Unit: "x", Value: one(p.rss / a.rss), Note: "projected"})
	r.add(Figure{Item: it, Name: "growth of agent CPU, " + g, Unit: "x", Value: one(p.cpu / a.cpu), Note: "projected"})
	r.add(Figure{Item: it, Name: "growth of gossip per node, " + g, Unit: "x", Value: one(p.kbps / a.kbps), Note: "projected"})
	return nil
}

type point struct{ rss, cpu, kbps float64 }

func simRun(ctx context.Context, o Options, r *Report, n int) (p point, err error) {
	e := newEnv()
	defer func() {
		if cerr := e.close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	nsName, err := e.newNS(fmt.Sprintf("sim%d", n))
	if err != nil {
		return p, err
	}
	// The agent's "underlay": eth0 (one end of a veth pair that stays inside the
	// namespace) with the agent's address; every address of the
	// /15 is local (routed to lo), so the simulated members can bind theirs.
	err = inHandle(nsName, func(h *netlink.Handle) error {
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: 1500}, PeerName: "eth0-peer"}); err != nil {
			return err
		}
		for _, name := range []string{"eth0-peer", "eth0"} {
			l, err := h.LinkByName(name)
			if err != nil {
				return err
			}
			if err := h.LinkSetUp(l); err != nil {
				return err
			}
		}
		d, err := h.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := h.AddrAdd(d, &netlink.Addr{IPNet: ipnet(simAgentIP.String() + "/15")}); err != nil {
			return err
		}
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		_, dst, _ := net.ParseCIDR(simNet)
		return h.RouteAdd(&netlink.Route{LinkIndex: lo.Attrs().Index, Dst: dst, Type: 2 /* RTN_LOCAL */, Table: 255, Scope: netlink.SCOPE_HOST})
	})
	if err != nil {
		return p, fmt.Errorf("setting up %s: %w", nsName, err)
	}
	dir, err := os.MkdirTemp("", "wbench-sim-")
	if err != nil {
		return p, err
	}
	defer os.RemoveAll(dir)
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i*7 + n)
	}
	keyFile := filepath.Join(dir, "gossip.key")
	if err := os.WriteFile(keyFile, []byte(hex.EncodeToString(key)), 0o600); err != nil {
		return p, err
	}

	self, err := os.Executable()
	if err != nil {
		return p, err
	}
	scale := simTimeScale(n)
	// The window is one full-state exchange period, in which every member starts exactly
	// one exchange: they are most of the bytes at 1,000 members (about 110 KB each way),
	// and a shorter window would count none or some of them depending on its timing.
	stretch := func(d time.Duration) time.Duration { return time.Duration(float64(d) * scale) }
	settle, window := stretch(simSettle), stretch(cluster.PushPullPeriod(n))
	sim := exec.Command(self, SimFlag, strconv.Itoa(n-1), "-sim-key", keyFile, "-sim-time-scale", strconv.FormatFloat(scale, 'f', -1, 64))
	// Hundreds of members in one heap: collect less often, so that GC work does not
	// delay the members' acks into false suspicions (the agent measured keeps defaults).
	sim.Env = append(os.Environ(), "GOGC=400")
	out, err := sim.StdoutPipe()
	if err != nil {
		return p, err
	}
	sim.Stderr = os.Stderr
	t := time.Now()
	if err := e.start(nsName, sim); err != nil {
		return p, err
	}
	readyc := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(out).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("simulator said %q", line)
		}
		readyc <- err
		_, _ = io.Copy(io.Discard, out)
	}()
	select {
	case err := <-readyc:
		if err != nil {
			return p, fmt.Errorf("simulated members: %w", err)
		}
	case <-time.After(10 * time.Minute):
		return p, fmt.Errorf("%d simulated members not joined after 10 minutes", n-1)
	case <-ctx.Done():
		return p, ctx.Err()
	}
	progress(o, "control plane: %d simulated members joined in %s", n-1, time.Since(t).Round(time.Second))

	sock := filepath.Join(dir, "weft.sock")
	logf, err := os.Create(filepath.Join(dir, "agent.log"))
	if err != nil {
		return p, err
	}
	defer logf.Close()
	agent := exec.Command(o.WeftBin, "agent", "--node-name", "agent", "--underlay-ip", simAgentIP.String(),
		"--peers", simAddr(0).String(), "--socket", sock, "--state-dir", filepath.Join(dir, "state"),
		"--claims-dir", filepath.Join(dir, "claims"), "--gossip-key-file", keyFile, "--http-addr", "",
		"--gossip-time-scale", strconv.FormatFloat(scale, 'f', -1, 64))
	agent.Stdout, agent.Stderr = logf, logf
	t = time.Now()
	if err := e.start(nsName, agent); err != nil {
		return p, err
	}
	// Joined when the agent sees every member alive and its kernel has their routes.
	client := api.NewClient(sock, 5*time.Second)
	deadline := time.Now().Add(5 * time.Minute)
	for {
		s, err := client.Status(ctx)
		alive := 0
		if err == nil {
			for _, pe := range s.Peers {
				if pe.State == "alive" {
					alive++
				}
			}
		}
		if alive == n-1 {
			if k, err := countKernel(nsName); err == nil && k.weftRoutes >= n-1 {
				break
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return p, fmt.Errorf("the agent sees %d of %d members alive after 5 minutes (last error %v); see its log", alive, n-1, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	progress(o, "control plane: the agent converged with %d members in %s; settling at least %s, measuring %s", n-1, time.Since(t).Round(time.Second), settle, window)
	// Every gossip byte crosses lo once (counted as sent there): per node, in + out is
	// twice the total over the number of members. Stretched timers: the same bytes per
	// protocol round, scale times fewer rounds a second than at full speed.
	perNodeKBps := func(bytes uint64, secs float64) float64 {
		return 2 * float64(bytes) / float64(n) / secs / 1024 * scale
	}
	// Settled once the gossip of the bootstrap has drained. Every join queued an "alive"
	// and a record on every member, each to be sent simRetransmitMult x ceil(log10(n+1))
	// times: at 1,000 members thousands of messages per member, sent in full packets at
	// the gossip rate. Measuring before it has drained would count the bootstrap, not the
	// steady state. Drained: the traffic of a period is below half the highest seen, or
	// its packets average under 700 bytes (steady gossip is probes and acks of about 100
	// bytes, and now and then a full-state exchange).
	if err := sleep(ctx, settle); err != nil {
		return p, err
	}
	period := stretch(simDrainPeriod)
	peak := 0.0
	for deadline := time.Now().Add(simDrainLimit); ; {
		b0, k0, err := loCounters(nsName)
		if err != nil {
			return p, err
		}
		if err := sleep(ctx, period); err != nil {
			return p, err
		}
		b1, k1, err := loCounters(nsName)
		if err != nil {
			return p, err
		}
		rate := perNodeKBps(b1-b0, period.Seconds())
		size := float64(b1-b0) / float64(max(k1-k0, 1))
		peak = max(peak, rate)
		progress(o, "control plane: %d members: gossip %.1f KB/s per node, %.0f bytes a packet over the last %s", n, rate, size, period)
		if rate < peak/2 || size < 700 {
			break
		}
		if time.Now().After(deadline) {
			progress(o, "control plane: %d members: the bootstrap's gossip has not drained after %s; measuring anyway", n, simDrainLimit)
			break
		}
	}
	b0, _, err := loCounters(nsName)
	if err != nil {
		return p, err
	}
	logFrom := fileSize(logf.Name())
	a0, s0, t0 := procCPU(agent.Process.Pid), procCPU(sim.Process.Pid), time.Now()
	if err := sleep(ctx, window); err != nil {
		return p, err
	}
	b1, _, err := loCounters(nsName)
	if err != nil {
		return p, err
	}
	secs := time.Since(t0).Seconds()
	a1, s1 := procCPU(agent.Process.Pid), procCPU(sim.Process.Pid)
	p.rss = float64(procRSS(agent.Process.Pid)) / (1 << 20)
	p.cpu = 100 * (a1 - a0) / secs * scale // stretched: as for the bytes
	p.kbps = perNodeKBps(b1-b0, secs)
	simCPU := 100 * (s1 - s0) / secs / float64(n-1) * scale
	k, err := countKernel(nsName)
	if err != nil {
		return p, err
	}
	it := "4 control plane"
	note := fmt.Sprintf("1 real agent + %d simulated members (real delegate, encrypted UDP/TCP on local addresses), idle, %s window", n-1, window)
	stretched := ""
	if scale > 1 {
		stretched = fmt.Sprintf("; gossip timers stretched x%g, figure multiplied back (x%g)", scale, scale)
		note += fmt.Sprintf("; gossip timers stretched x%g", scale)
	}
	// The goals are for 1,000 members: judged here when measured, else on the projection.
	goal := func(f Figure, max float64) Figure {
		if n >= simTarget {
			return goalMax(f, max)
		}
		return f
	}
	r.add(goal(Figure{Item: it, Name: fmt.Sprintf("agent RSS at %d members", n), Unit: "MB", Value: one(p.rss), Note: note + "; " + rssSplit(agent.Process.Pid)}, 40))
	r.add(Figure{Item: it, Name: fmt.Sprintf("agent CPU at %d members", n), Unit: "% of a core", Value: one(p.cpu), Note: fmt.Sprintf("a simulated member: %.2f%%", simCPU) + stretched})
	health := "no member suspected during the window"
	if sus := suspicions(logf.Name(), logFrom); sus > 0 {
		// Members that share two CPUs answer late when those are short (a loaded or
		// CPU-starved machine): suspicions, refutations and their gossip then feed each
		// other, which a cluster with a CPU per node does not do.
		health = fmt.Sprintf("NOT a healthy cluster: the agent logged %d suspicions of members during the window, so this counts a suspicion storm of the simulator, not weft's steady state", sus)
		progress(o, "control plane: %d members: %s", n, health)
	}
	r.add(goal(Figure{Item: it, Name: fmt.Sprintf("gossip in+out per node at %d members", n), Unit: "KB/s", Value: one(p.kbps), Note: "average over members: 2 x lo bytes / members" + stretched + "; " + health}, 20))
	r.add(Figure{Item: "5 kernel state", Name: fmt.Sprintf("%d nodes (simulated peers): weft entries on the agent's node", n), Value: one(float64(k.weft())),
		Note: fmt.Sprintf("%d routes, %d FDB, %d neigh = %.2f per remote node", k.weftRoutes, k.fdb, k.neigh, float64(k.weft())/float64(n-1))})
	return p, nil
}

// fileSize is the size of the file at path, 0 if it cannot be read.
func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// suspicions counts memberlist's suspicion lines ("Suspect <node> has failed", "Marking
// <node> as failed") in the log at path after byte offset from.
func suspicions(path string, from int64) int {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return 0
	}
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := sc.Text()
		if strings.Contains(l, "memberlist: Suspect ") || strings.Contains(l, "memberlist: Marking ") {
			n++
		}
	}
	return n
}

// sleep waits for d, or until ctx ends (its error).
func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
