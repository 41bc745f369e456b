package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weftnet/weft/internal/api"
	"github.com/weftnet/weft/internal/api/apiserver"
	"github.com/weftnet/weft/internal/cluster"
	"github.com/weftnet/weft/internal/dataplane"
	"github.com/weftnet/weft/internal/fastpath"
	"github.com/weftnet/weft/internal/ipam"
	"github.com/weftnet/weft/internal/version"
)

// Agent is one node's weft agent.
type Agent struct {
	cfg       Config
	log       *slog.Logger
	underlay  string // underlay interface name
	mtu       int
	vtepMAC   net.HardwareAddr // derived from the node name: stable across restarts
	bridgeMAC net.HardwareAddr
	ipam      *ipam.Allocator
	cluster   *cluster.Cluster
	recon     *dataplane.Reconciler
	fast      atomic.Pointer[fastpath.Syncer] // nil: no BPF fast path (yet; fastpath.go)
	fastState atomic.Value                    // string for the status: loading, on, off, unavailable
	fastDirty atomic.Bool                     // pods or devices changed since the fast path's last sync

	kick    chan struct{} // asks the loop for a reconcile; buffered, coalescing
	started time.Time
	synced  atomic.Bool // heard the cluster's state: deletes allowed
	ready   atomic.Bool // dataplane reconciled at least once

	recMu       sync.Mutex         // one reconcile at a time
	lastDesired *dataplane.Desired // of the last reconcile (under recMu): its entries are due now

	// What the status and the health probe report of the reconciles, under a lock of its
	// own: they must answer while a reconcile runs, which on a busy node can take seconds.
	statMu        sync.Mutex
	lastReconcile time.Time // last successful reconcile
	lastAttempt   time.Time // last reconcile, successful or not (liveness)
	lastErr       error
	reconciles    uint64
	drift         uint64

	observe // health probes, metrics, status page (observe.go)
}

// Run runs the agent until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	a := &Agent{cfg: cfg, log: cfg.Logger, kick: make(chan struct{}, 1), started: time.Now()}

	name, ulMTU, err := dataplane.UnderlayLink(cfg.UnderlayIP)
	if err != nil {
		return err
	}
	a.underlay = name
	a.mtu = cfg.MTU
	if a.mtu == 0 {
		a.mtu = dataplane.MTUFor(ulMTU)
	}
	a.vtepMAC, a.bridgeMAC = dataplane.VTEPMAC(cfg.NodeName), dataplane.BridgeMAC(cfg.NodeName)

	a.ipam, err = ipam.New(ctx, ipam.Config{
		ClusterCIDR: cfg.ClusterCIDR, BlockBits: cfg.BlockBits, Node: cfg.NodeName,
		StatePath: cfg.StatePath, Store: cfg.Claims, OnBlocksChanged: a.blocksChanged,
		SpareBlocks: cfg.SpareBlocks, Logger: cfg.Logger,
	})
	if err != nil {
		return fmt.Errorf("starting IPAM: %w", err)
	}
	a.recon = dataplane.NewReconciler(cfg.Kernel)
	a.initObserve()

	a.cluster, err = cluster.Start(cluster.Config{
		Self: a.selfRecord(), BindAddr: cfg.UnderlayIP, Port: cfg.GossipPort, Key: cfg.GossipKey,
		OnChange: a.requestReconcile, LogOutput: os.Stderr, Verbose: cfg.Verbose, TimeScale: cfg.GossipTimeScale,
	})
	if err != nil {
		return err
	}
	defer a.cluster.Shutdown() // no leave: peers keep our routes across a restart

	l, err := apiserver.Listen(cfg.Socket)
	if err != nil {
		return err
	}
	// Both listeners are open before anything is served: once the local API answers,
	// the health endpoints do too.
	var hl net.Listener
	if cfg.HTTPAddr != "" {
		if hl, err = listenHTTP(cfg.HTTPAddr); err != nil {
			l.Close()
			return err
		}
	}
	a.log.Info("weft agent started", "node", cfg.NodeName, "underlay", cfg.UnderlayIP, "interface", name,
		"mtu", a.mtu, "home", a.ipam.Home(), "socket", cfg.Socket, "version", version.Version)

	// One shutdown path: the first failure of any part cancels all of them.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	fail := func(err error) {
		select {
		case errc <- err:
		default:
		}
		cancel()
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := apiserver.Serve(ctx, l, a.metrics.InstrumentAPI(apiserver.NewHandler(a))); err != nil {
			fail(fmt.Errorf("local API: %w", err))
		}
	})
	if hl != nil {
		wg.Go(func() {
			if err := apiserver.Serve(ctx, hl, a.httpMux()); err != nil {
				fail(fmt.Errorf("health and metrics: %w", err))
			}
		})
	}
	// Not waited for: memberlist's Join cannot be cancelled and dials each missing peer
	// with a 10 s timeout, so behind a partition it would hold up shutdown for 10 s per
	// unreachable peer (past a kubelet's grace period). It ends with ctx at its next turn;
	// a join in flight fails once the memberlist is shut down.
	go a.joinLoop(ctx)
	a.startObserve(ctx, &wg, fail)
	wg.Go(func() { a.watchDiscovery(ctx) })
	if cfg.realKernel {
		a.fastState.Store("loading")
		wg.Go(func() { a.runFastPath(ctx) })
	}
	a.reconcileLoop(ctx)
	cancel()
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

func (a *Agent) selfRecord() cluster.Node {
	return cluster.Node{
		Name: a.cfg.NodeName, Underlay: a.cfg.UnderlayIP, VTEPMAC: a.vtepMAC.String(),
		Tunnel: a.ipam.Tunnel(), Blocks: a.ipam.Blocks(), Version: version.Version,
	}
}

func (a *Agent) requestReconcile() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// blocksChanged runs when IPAM claimed or gave back a block: publish the new record and
// put the block's route on the bridge before the pod that caused it starts.
func (a *Agent) blocksChanged() {
	if a.cluster == nil {
		return
	}
	if err := a.cluster.Update(a.selfRecord()); err != nil {
		a.log.Error("publishing node record", "err", err)
	}
	a.reconcile(false)
}

// confirmAfter is how soon a reconcile that found the kernel drifted and repaired it is
// followed by another, which confirms the repair and clears the health report of the
// entries it found missing.
const confirmAfter = time.Second

// jittered is d give or take up to 10 %, drawn afresh for every wait. The first wait is
// anywhere from half a period to one and a half: agents started together (a lab, nodes
// booted at once) would otherwise read their kernels in step for as long as they run.
func jittered(d time.Duration) time.Duration {
	return d - d/10 + rand.N(d/5+1)
}

func (a *Agent) reconcileLoop(ctx context.Context) {
	t := time.NewTimer(a.cfg.Resync/2 + rand.N(a.cfg.Resync+1))
	defer t.Stop()
	read := true // the first reconcile reads the kernel
	for {
		var confirm <-chan time.Time
		if n, _ := a.reconcile(read); n > 0 && read {
			// The kernel had drifted: look again soon, to confirm the repair.
			confirm = time.After(min(confirmAfter, a.cfg.Resync))
		}
		select {
		case <-ctx.Done():
			return
		case <-a.kick: // the cluster changed: plan from the last read
			read = false
		case <-t.C:
			read = true
			t.Reset(jittered(a.cfg.Resync))
		case <-confirm:
			read = true
		}
	}
}

// desired computes the node's desired kernel state from IPAM and the live peers.
func (a *Agent) desired() dataplane.Desired {
	d := dataplane.Desired{
		Bridge: dataplane.Bridge{
			Name: dataplane.BridgeName, Gateway: a.ipam.Gateway(), Blocks: a.ipam.Blocks(),
			MAC: a.bridgeMAC,
		},
		VXLAN: dataplane.VXLAN{
			Name: dataplane.VXLANName, VNI: dataplane.VNI, Port: dataplane.VXLANPort,
			UnderlayIP: a.cfg.UnderlayIP, Underlay: a.underlay,
			MAC: a.vtepMAC, TunnelIP: a.ipam.Tunnel(),
		},
		ClusterCIDR: a.cfg.ClusterCIDR,
		MTU:         a.mtu,
		Prune:       a.synced.Load(),
	}
	for _, l := range a.ipam.Leases() {
		for _, h := range hostPorts(l) {
			// Add refused bad mappings; one that slipped through (a lease file from another
			// release) must not stop the node's reconciles.
			if dataplane.CheckHostPort(h, d.VXLAN.Port) == nil {
				d.HostPorts = append(d.HostPorts, h)
			}
		}
	}
	for _, n := range a.cluster.Live() {
		if n.Underlay == a.cfg.UnderlayIP || !a.cfg.ClusterCIDR.Contains(n.Tunnel) {
			continue // a misconfigured peer must not hijack our own addresses
		}
		if !a.peerAllowed(n.Name) {
			continue // e.g. its Node object was deleted
		}
		d.Peers = append(d.Peers, dataplane.Peer{
			Name: n.Name, UnderlayIP: n.Underlay, MAC: n.MAC(), TunnelIP: n.Tunnel, Blocks: n.Blocks,
		})
	}
	return d
}

// reconcile makes the kernel match the desired state and returns how many changes that
// took, and its error (also kept for the status). With read false it plans from the state
// the last reconcile read, as changed since (dataplane.Reconciler.Update): that is how it
// reacts to the cluster, while the periodic reconcile reads the kernel and repairs
// whatever anyone else changed.
func (a *Agent) reconcile(read bool) (int, error) {
	a.recMu.Lock()
	defer a.recMu.Unlock()
	d := a.desired()
	update := a.recon.Reconcile
	if !read {
		update = a.recon.Update
	}
	res, err := update(d)
	if res.Read || err != nil {
		a.recordKernel(d, a.lastDesired, res, err)
	}
	a.lastDesired = &d
	a.statMu.Lock()
	a.reconciles++
	a.lastAttempt = time.Now()
	a.lastErr = err
	a.statMu.Unlock()
	if err != nil {
		a.log.Error("reconciling the dataplane (will retry)", "err", err)
		return len(res.Ops), err
	}
	for _, e := range res.Ignored {
		a.log.Warn("ignoring part of a peer's record", "err", e)
	}
	a.syncFastPath(d, read)
	a.statMu.Lock()
	a.lastReconcile = time.Now()
	if a.ready.Load() {
		a.drift += uint64(len(res.Ops))
	}
	a.statMu.Unlock()
	for _, op := range res.Ops {
		a.log.Info("kernel", "op", op.String())
	}
	if !a.ready.Swap(true) {
		a.log.Info("dataplane ready", "ops", len(res.Ops))
		a.becameReady()
	}
	return len(res.Ops), nil
}

// joinLoop joins every discovered peer that is not a live member, at start and then every
// resync period, so nodes that start later or come back after a partition are found.
func (a *Agent) joinLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.Resync)
	defer t.Stop()
	for {
		a.joinMissing(ctx)
		if !a.synced.Load() && time.Since(a.started) > a.cfg.SyncGrace {
			a.log.Warn("no peer answered within the grace period; removing kernel entries of unknown nodes from now on", "grace", a.cfg.SyncGrace)
			a.setSynced()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// joinMissing joins the discovered peers that are not live members, all at once up to
// 100 (cluster.Join exchanges state with several in parallel). Exchanging state with each
// of them directly, rather than with one and letting gossip carry the news, puts this
// node's record on every peer within one round trip: a restarted node is reachable from
// all in about the time its agent takes to start, instead of after log(N) gossip rounds.
func (a *Agent) joinMissing(ctx context.Context) {
	peers, err := a.cfg.Discovery.Peers(ctx)
	if err != nil {
		a.log.Warn("discovering peers", "err", err)
		return
	}
	if len(peers) == 0 {
		a.setSynced() // a cluster of one: nothing to wait for
		return
	}
	missing := a.missingPeers(peers)
	if len(missing) == 0 {
		a.setSynced()
		return
	}
	n, err := a.cluster.Join(missing)
	if n > 0 {
		a.setSynced()
	}
	if err != nil && n == 0 {
		a.log.Debug("joining peers", "peers", missing, "err", err)
	}
}

// missingPeers returns the peers ("ip" or "ip:port") that are neither this node nor a
// live member.
func (a *Agent) missingPeers(peers []string) []string {
	live := a.cluster.LiveAddrs()
	var missing []string
	for _, p := range peers {
		ap, err := netip.ParseAddrPort(p)
		addr := ap.Addr()
		if err != nil {
			addr, _ = netip.ParseAddr(p)
		}
		if addr == a.cfg.UnderlayIP || live[addr] {
			continue
		}
		missing = append(missing, p)
	}
	return missing
}

func (a *Agent) setSynced() {
	if !a.synced.Swap(true) {
		a.log.Info("cluster state heard; pruning enabled")
		a.requestReconcile()
	}
}

// The local API backend.

func key(at api.Attachment) ipam.Key { return ipam.Key{ContainerID: at.ContainerID, IfName: at.IfName} }

func (a *Agent) lease(l ipam.Lease) api.Lease {
	return api.Lease{
		Attachment:  api.Attachment{ContainerID: l.ContainerID, IfName: l.IfName},
		Address:     l.Address,
		Gateway:     a.ipam.Gateway(),
		ClusterCIDR: a.cfg.ClusterCIDR,
		Bridge:      dataplane.BridgeName,
		MTU:         a.mtu,
	}
}

// Add implements api.Backend.
func (a *Agent) Add(ctx context.Context, req api.AddRequest) (api.Lease, error) {
	if !a.ready.Load() {
		return api.Lease{}, fmt.Errorf("%w: the node's dataplane is not set up yet", api.ErrNotReady)
	}
	ports := make([]ipam.PortMapping, 0, len(req.PortMappings))
	for _, m := range req.PortMappings {
		if err := m.Validate(); err != nil {
			return api.Lease{}, fmt.Errorf("%w: %v", api.ErrInvalid, err)
		}
		ports = append(ports, ipam.PortMapping{Protocol: m.Protocol, HostIP: m.HostIP, HostPort: uint16(m.HostPort), PodPort: uint16(m.ContainerPort)})
	}
	before, existed := a.ipam.Get(key(req.Attachment))
	l, err := a.ipam.Allocate(ctx, key(req.Attachment), ports...)
	if errors.Is(err, ipam.ErrExhausted) {
		return api.Lease{}, fmt.Errorf("%w: %v", api.ErrExhausted, err)
	}
	if err != nil {
		return api.Lease{}, err
	}
	for _, h := range hostPorts(l) {
		if err = dataplane.CheckHostPort(h, dataplane.VXLANPort); err != nil {
			break
		}
	}
	if err != nil {
		if !existed {
			_, _ = a.ipam.Release(ctx, key(req.Attachment))
		} else {
			_, _ = a.ipam.Allocate(ctx, key(req.Attachment), before.Ports...)
		}
		return api.Lease{}, fmt.Errorf("%w: %v", api.ErrBadPortMapping, err)
	}
	if len(before.Ports) > 0 || len(l.Ports) > 0 {
		// The pod's hostPorts work when ADD returns, as they do with the portmap plugin.
		if _, err := a.reconcile(false); err != nil {
			if !existed {
				_, _ = a.ipam.Release(ctx, key(req.Attachment))
				a.reconcile(false)
			}
			return api.Lease{}, fmt.Errorf("forwarding the pod's hostPorts: %w", err)
		}
	}
	a.log.Debug("lease", "container", req.ContainerID, "if", req.IfName, "pod", req.PodNamespace+"/"+req.PodName, "address", l.Address, "hostPorts", len(l.Ports))
	return a.lease(l), nil
}

// hostPorts are the dataplane's forwarding entries for the port mappings of l.
func hostPorts(l ipam.Lease) []dataplane.HostPort {
	var out []dataplane.HostPort
	for _, m := range l.Ports {
		out = append(out, dataplane.HostPort{
			Protocol: m.Protocol, HostIP: m.HostIP, HostPort: m.HostPort, PodIP: l.Address.Addr(), PodPort: m.PodPort,
		})
	}
	return out
}

// Del implements api.Backend.
func (a *Agent) Del(ctx context.Context, at api.Attachment) error {
	l, _ := a.ipam.Get(key(at))
	released, err := a.ipam.Release(ctx, key(at))
	a.fastDirty.Store(true) // the pod's address leaves the fast path's map
	if released && len(l.Ports) > 0 {
		a.reconcile(false) // its hostPorts go with it; a failure is retried by the loop
	} else if released {
		a.requestReconcile()
	}
	return err
}

// Check implements api.Backend.
func (a *Agent) Check(_ context.Context, at api.Attachment) (api.Lease, error) {
	l, ok := a.ipam.Get(key(at))
	if !ok {
		return api.Lease{}, fmt.Errorf("%w: %s/%s", api.ErrNotFound, at.ContainerID, at.IfName)
	}
	return a.lease(l), nil
}

// GC implements api.Backend.
func (a *Agent) GC(ctx context.Context, req api.GCRequest) (api.GCResponse, error) {
	valid := make([]ipam.Key, 0, len(req.Valid))
	for _, at := range req.Valid {
		valid = append(valid, key(at))
	}
	freed, err := a.ipam.GC(ctx, valid)
	if len(freed) > 0 {
		a.reconcile(false) // hostPorts of freed leases go with them
	}
	resp := api.GCResponse{Released: []api.Attachment{}}
	for _, k := range freed {
		resp.Released = append(resp.Released, api.Attachment{ContainerID: k.ContainerID, IfName: k.IfName})
	}
	return resp, err
}

// Status implements api.Backend.
func (a *Agent) Status(context.Context) (api.Status, error) {
	s := api.Status{
		Node: a.cfg.NodeName, Version: version.Version, Ready: a.ready.Load(),
		Underlay: a.cfg.UnderlayIP, ClusterCIDR: a.cfg.ClusterCIDR, Gateway: a.ipam.Gateway(), MTU: a.mtu,
	}
	s.FastPath, _ = a.fastState.Load().(string)
	a.statMu.Lock()
	s.LastReconcile, s.Reconciles, s.Drift = a.lastReconcile, a.reconciles, a.drift
	s.Goroutines = runtime.NumGoroutine()
	if !s.Ready {
		s.Reason = "dataplane not reconciled yet"
		if a.lastErr != nil {
			s.Reason += ": " + a.lastErr.Error()
		}
	}
	a.statMu.Unlock()
	for _, u := range a.ipam.Usage() {
		s.Blocks = append(s.Blocks, api.BlockUsage{Block: u.Block, Used: u.Used, Capacity: u.Capacity})
	}
	for _, m := range a.cluster.Members() {
		s.Peers = append(s.Peers, api.Peer{Name: m.Name, Underlay: m.Underlay, State: m.State, Blocks: slices.Clone(m.Blocks), Version: m.Version, Tunnel: m.Tunnel})
	}
	if fast := a.fast.Load(); fast != nil {
		s.FastPathPackets, _ = fast.Counts() // a failed read leaves them out
	}
	a.observeStatus(&s)
	return s, nil
}
