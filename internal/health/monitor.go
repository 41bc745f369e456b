package health

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/weftnet/weft/internal/api"
)

// Target is a peer to probe.
type Target struct {
	Name     string
	Underlay netip.Addr
	Tunnel   netip.Addr
	Gossip   string // alive, suspect, dead, left, unknown
}

// Config configures a Monitor.
type Config struct {
	// Port is the peers' responder port (DefaultPort).
	Port int
	// Interval is how often each peer is probed (default 2s). Peers are probed one per
	// tick, spread over the interval; with more peers than Interval/MinTick the round
	// gets longer instead of the rate higher.
	Interval time.Duration
	// MinTick (default 1s) caps the rate at 1 peer (4 probes) a second, whatever the
	// cluster size: each peer every 100 s at 100 nodes, every 1,000 s at 1,000
	// (cilium-health probes every node once a minute). In a 100-node lab sharing 2 CPUs,
	// 250ms made the probes a third of the agents' CPU, and 500ms a fifth.
	MinTick time.Duration
	Timeout time.Duration // per probe, default 1s
	// Targets lists the peers (every member gossip knows; dead ones are not probed).
	Targets func() []Target
	// UnderlayMTU and OverlayMTU size the large probes (MTU minus IPv4 and UDP headers).
	UnderlayMTU func() int
	OverlayMTU  func() int
}

// Monitor probes peers and keeps the latest results.
type Monitor struct {
	cfg Config
	seq atomic.Uint64

	mu     sync.Mutex // guards the fields below
	peers  map[string]*peerState
	kernel *KernelReport
}

type peerState struct {
	paths     [4]api.PathHealth
	fails     [4]int // probes lost in a row per path
	lastHeard time.Time
	info      Info
}

var pathNames = [4]string{PathUnderlay, PathUnderlayLarge, PathOverlay, PathOverlayLarge}

// NewMonitor returns a Monitor; Run starts it.
func NewMonitor(cfg Config) *Monitor {
	cfg.Port = cmp.Or(cfg.Port, DefaultPort)
	cfg.Interval = cmp.Or(cfg.Interval, 2*time.Second)
	cfg.MinTick = cmp.Or(cfg.MinTick, time.Second)
	cfg.Timeout = cmp.Or(cfg.Timeout, time.Second)
	return &Monitor{cfg: cfg, peers: map[string]*peerState{}}
}

// Run probes until ctx ends.
func (m *Monitor) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	var (
		next      int
		live      []Target
		refreshed time.Time
	)
	for {
		// The member list is read once per Interval, not for every probe: at hundreds of
		// peers, copying and sorting it four times a second was a good part of an idle
		// agent's work. A peer that joins is probed from the next refresh on.
		if time.Since(refreshed) >= m.cfg.Interval || len(live) == 0 {
			live = live[:0]
			for _, t := range m.cfg.Targets() {
				if t.Gossip != "dead" && t.Gossip != "left" && t.Underlay.IsValid() {
					live = append(live, t)
				}
			}
			slices.SortFunc(live, func(a, b Target) int { return cmp.Compare(a.Name, b.Name) })
			refreshed = time.Now()
		}
		tick := m.cfg.Interval
		if len(live) > 0 {
			tick = max(m.cfg.Interval/time.Duration(len(live)), m.cfg.MinTick)
			t := live[next%len(live)]
			next++
			wg.Go(func() { m.probePeer(ctx, t) })
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(tick):
		}
	}
}

// SetKernel records the latest comparison of wanted and present kernel entries. The agent
// makes it from what each reconcile read before repairing anything, so an entry that
// went missing shows until the reconcile after the one that put it back (one resync
// period, 5 s by default).
func (m *Monitor) SetKernel(r KernelReport) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.kernel = &r
}

// probePeer sends the four probes of one round to t at once and records the results.
func (m *Monitor) probePeer(ctx context.Context, t Target) {
	sizes := [4]int{MinProbeSize, mtuPayload(m.cfg.UnderlayMTU), MinProbeSize, mtuPayload(m.cfg.OverlayMTU)}
	dsts := [4]netip.Addr{t.Underlay, t.Underlay, t.Tunnel, t.Tunnel}
	var res [4]probeResult
	var wg sync.WaitGroup
	for i := range 4 {
		if !dsts[i].IsValid() {
			res[i] = probeResult{err: errors.New("no address known"), local: true}
			continue
		}
		wg.Go(func() { res[i] = m.probe(ctx, netip.AddrPortFrom(dsts[i], uint16(m.cfg.Port)), sizes[i], byte(i)) })
	}
	wg.Wait()
	if ctx.Err() != nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	ps := m.peers[t.Name]
	if ps == nil {
		ps = &peerState{}
		m.peers[t.Name] = ps
	}
	for i, r := range res {
		p := &ps.paths[i]
		p.Path, p.Size = pathNames[i], sizes[i]
		p.Sent++
		if r.err == nil {
			p.OK, p.Failing, p.Error = true, false, ""
			p.RTTMs = float64(r.rtt.Microseconds()) / 1000
			ps.fails[i] = 0
			ps.lastHeard = time.Now()
			ps.info = r.info
			continue
		}
		p.Lost++
		p.OK, p.RTTMs, p.Error = false, 0, r.err.Error()
		ps.fails[i]++
		p.Failing = r.local || r.refused || ps.fails[i] >= 2
	}
}

func mtuPayload(f func() int) int {
	mtu := 1500
	if f != nil {
		if v := f(); v > 0 {
			mtu = v
		}
	}
	return max(mtu-28, MinProbeSize) // IPv4 20 + UDP 8
}

type probeResult struct {
	rtt     time.Duration
	info    Info
	err     error
	refused bool // ICMP port unreachable: the host is there, no responder
	local   bool // this kernel rejected the probe (too big for the interface, no route)
}

// probe sends one probe from a fresh connected socket (so ICMP errors come back to it) and
// waits for its answer.
func (m *Monitor) probe(ctx context.Context, dst netip.AddrPort, size int, kind byte) probeResult {
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error { return setDF(c) }}
	conn, err := d.DialContext(ctx, "udp4", dst.String())
	if errors.Is(err, syscall.ENETUNREACH) {
		return probeResult{err: fmt.Errorf("no route to %s in this node's kernel", dst.Addr()), local: true}
	}
	if err != nil {
		return probeResult{err: fmt.Errorf("dial: %w", unwrapErrno(err)), local: true}
	}
	defer conn.Close()
	seq := m.seq.Add(1)
	start := time.Now()
	if _, err := conn.Write(encodeProbe(make([]byte, size), kind, seq)); err != nil {
		return probeResult{err: unwrapErrno(err), local: true}
	}
	_ = conn.SetReadDeadline(start.Add(m.cfg.Timeout))
	// An answer is as long as the probe, or the answer header and a name of up to 255 bytes.
	buf := make([]byte, max(size, minAnswer+255)+1)
	for {
		n, err := conn.Read(buf)
		if err != nil {
			var ne net.Error
			switch {
			case errors.As(err, &ne) && ne.Timeout():
				return probeResult{err: fmt.Errorf("no answer within %s", m.cfg.Timeout)}
			case errors.Is(err, syscall.ECONNREFUSED):
				return probeResult{err: errors.New("refused (ICMP port unreachable)"), refused: true}
			case errors.Is(err, syscall.EMSGSIZE):
				return probeResult{err: errors.New("fragmentation needed (ICMP)"), local: true}
			}
			return probeResult{err: unwrapErrno(err)}
		}
		k, s, info, err := parseAnswer(buf[:n])
		if err != nil || k != kind || s != seq {
			continue // a late answer to an earlier probe cannot reach a fresh socket, but be safe
		}
		return probeResult{rtt: time.Since(start), info: info}
	}
}

// unwrapErrno shortens "write udp4 1.2.3.4:5->6.7.8.9:6785: sendto: message too long" to
// the syscall's message.
func unwrapErrno(err error) error {
	var se *os.SyscallError
	if errors.As(err, &se) {
		return se
	}
	return err
}

// Peer fills p's health fields from the latest probes and kernel check. Gossip state
// comes from p.State.
func (m *Monitor) Peer(p *api.Peer) {
	m.mu.Lock()
	defer m.mu.Unlock()
	in := Input{Gossip: p.State}
	if ps := m.peers[p.Name]; ps != nil {
		for _, ph := range ps.paths {
			if ph.Sent > 0 {
				p.Paths = append(p.Paths, ph)
			}
		}
		in.Paths = p.Paths
		if ps.paths[0].OK {
			p.UnderlayRTTMs = ps.paths[0].RTTMs
		}
		if ps.paths[2].OK {
			p.OverlayRTTMs = ps.paths[2].RTTMs
		}
		p.LastHeard = ps.lastHeard
		p.MTU, p.AddrsUsed, p.AddrsCapacity = ps.info.MTU, ps.info.AddrsUsed, ps.info.AddrsCapacity
	}
	if m.kernel != nil {
		p.MissingKernelEntries = slices.Clone(m.kernel.PeerMissing[p.Name])
		in.Missing = p.MissingKernelEntries
	}
	p.Health, p.HealthDetail = Classify(in)
}

// Kernel returns the last kernel comparison, nil before the first.
func (m *Monitor) Kernel() *api.KernelStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.kernel == nil {
		return nil
	}
	s := m.kernel.Status
	return &s
}
