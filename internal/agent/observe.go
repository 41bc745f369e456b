package agent

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/api"
	"github.com/weftnet/weft/internal/dataplane"
	"github.com/weftnet/weft/internal/health"
	"github.com/weftnet/weft/internal/metrics"
	"github.com/weftnet/weft/internal/statuspage"
)

// observe is what the agent adds to see the network: peer health probes and the kernel
// comparison (health), Prometheus metrics, and the status page.
type observe struct {
	health  *health.Monitor // nil when probing is off (ProbePort 0)
	metrics *metrics.Metrics

	ulMTU struct { // the underlay MTU as last read, for underlayMTU
		sync.Mutex
		at  time.Time
		mtu int
	}
}

func (a *Agent) initObserve() {
	a.metrics = metrics.New(a.metricsSnapshot)
	if a.cfg.ProbePort <= 0 {
		return
	}
	a.health = health.NewMonitor(health.Config{
		Port:        a.cfg.ProbePort,
		Targets:     a.probeTargets,
		UnderlayMTU: a.underlayMTU,
		OverlayMTU:  func() int { return a.mtu },
	})
}

// startObserve starts the echo responder and the prober.
func (a *Agent) startObserve(ctx context.Context, wg *sync.WaitGroup, fail func(error)) {
	if a.health == nil {
		return
	}
	r, err := health.Listen(a.cfg.ProbePort, a.probeInfo)
	if err != nil {
		fail(err)
		return
	}
	wg.Go(func() { _ = r.Serve(ctx) })
	wg.Go(func() { a.health.Run(ctx) })
}

func (a *Agent) probeTargets() []health.Target {
	var out []health.Target
	for _, m := range a.cluster.Members() {
		out = append(out, health.Target{Name: m.Name, Underlay: m.Underlay, Tunnel: m.Tunnel, Gossip: m.State})
	}
	return out
}

func (a *Agent) probeInfo() health.Info {
	info := health.Info{Name: a.cfg.NodeName, MTU: a.mtu}
	for _, u := range a.ipam.Usage() {
		info.AddrsUsed += u.Used
		info.AddrsCapacity += u.Capacity
	}
	return info
}

// underlayMTU is the underlay interface's MTU (it may change under the agent), read at
// most once per resync period, the pace at which the agent notices other kernel changes:
// the prober sizes its large packets by it every second, and reading it that often was
// 5 % of an idle agent's CPU in a 100-node lab (a netlink socket per read).
func (a *Agent) underlayMTU() int {
	a.ulMTU.Lock()
	defer a.ulMTU.Unlock()
	if time.Since(a.ulMTU.at) < a.cfg.Resync {
		return a.ulMTU.mtu
	}
	a.ulMTU.at, a.ulMTU.mtu = time.Now(), 0
	if l, err := netlink.LinkByName(a.underlay); err == nil {
		a.ulMTU.mtu = l.Attrs().MTU
	}
	return a.ulMTU.mtu
}

// recordKernel hands the health monitor the entries the kernel lacked when the reconcile
// res read it although they were due: wanted already by the reconcile before, due (err:
// the reconcile failed, perhaps before reading).
func (a *Agent) recordKernel(d dataplane.Desired, due *dataplane.Desired, res dataplane.Result, err error) {
	if a.health == nil {
		return
	}
	now := time.Now().UTC()
	if err != nil && res.Observed.Bridge == nil && res.Observed.VXLAN == nil {
		a.health.SetKernel(health.KernelReport{Status: api.KernelStatus{CheckedAt: now, Error: err.Error()}})
		return
	}
	r := health.KernelDrift(d, due, res.Observed)
	r.Status.CheckedAt = now
	a.health.SetKernel(r)
}

// observeStatus adds the health view to the status.
func (a *Agent) observeStatus(s *api.Status) {
	s.Tunnel = a.ipam.Tunnel()
	s.UnderlayMTU = a.underlayMTU()
	if a.health == nil {
		return
	}
	for i := range s.Peers {
		a.health.Peer(&s.Peers[i])
	}
	s.Health = health.Summary(s.Peers)
	s.Kernel = a.health.Kernel()
}

func (a *Agent) metricsSnapshot() metrics.Snapshot {
	st, _ := a.Status(context.Background())
	gs := a.cluster.Stats()
	return metrics.Snapshot{Status: st, Gossip: metrics.Gossip{
		MsgsIn: gs.MsgsIn.Load(), MsgsOut: gs.MsgsOut.Load(), BytesIn: gs.BytesIn.Load(), BytesOut: gs.BytesOut.Load(),
	}}
}

// observeRoutes adds /metrics and the status page (/, /api/status, /api/cluster).
func (a *Agent) observeRoutes(mux *http.ServeMux) {
	mux.Handle("GET /metrics", a.metrics.Handler())
	port := 0
	if _, p, err := net.SplitHostPort(a.cfg.HTTPAddr); err == nil {
		port, _ = strconv.Atoi(p)
	}
	statuspage.Register(mux, statuspage.Config{Self: a.Status, Port: port})
}
