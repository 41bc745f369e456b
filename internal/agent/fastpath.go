package agent

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/api"
	"github.com/weftnet/weft/internal/dataplane"
	"github.com/weftnet/weft/internal/fastpath"
)

// runFastPath loads the BPF fast path when the configuration asks for it and the kernel
// can run it, then watches for new pod veths until ctx ends; otherwise it takes off any
// fast path an earlier agent left, so traffic takes the normal path that this agent's
// configuration asks for. Either way the node works: the fast path only shortens the path
// of packets the normal path would carry anyway. It runs beside the agent's start, not
// before it: loading parses the kernel's BTF, which takes a good part of a second on a
// busy node, and a restarted node must not wait for that to rejoin (an earlier agent's
// programs keep working meanwhile).
func (a *Agent) runFastPath(ctx context.Context) {
	if !a.cfg.FastPath {
		a.fastState.Store("off (--fast-path=false)")
		if n, err := fastpath.Remove(dataplane.BridgeName, dataplane.VXLANName); err != nil {
			a.log.Warn("removing the fast path an earlier agent attached", "removed", n, "err", err)
		} else if n > 0 {
			a.log.Info("removed the fast path an earlier agent attached", "devices", n)
		}
		return
	}
	// Load once the node has joined and its dataplane is up: a restarted node's peers
	// must not wait for this node's CPU.
	wait := time.NewTicker(20 * time.Millisecond)
	for !(a.ready.Load() && a.synced.Load()) {
		select {
		case <-ctx.Done():
			wait.Stop()
			return
		case <-wait.C:
		}
	}
	wait.Stop()
	start := time.Now()
	p, err := fastpath.Load()
	var s *fastpath.Syncer
	if err == nil {
		if s, err = fastpath.NewSyncer(p); err != nil {
			p.Close()
		}
	}
	if err != nil {
		a.fastState.Store("unavailable: " + err.Error())
		if errors.Is(err, fastpath.ErrUnsupported) {
			a.log.Warn("running without the BPF fast path: pod traffic takes the bridge and the IP stack", "err", err)
		} else {
			a.log.Error("running without the BPF fast path", "err", err)
		}
		return
	}
	a.fast.Store(s)
	a.fastState.Store("on")
	a.log.Info("BPF fast path loaded", "took", time.Since(start).Round(time.Millisecond))
	a.fastDirty.Store(true)
	a.requestReconcile() // attach it now, not at the next resync
	a.watchLinks(ctx)
}

// syncFastPath reconciles the fast path for the desired state d; full also checks the
// devices it has already seen (the periodic repair). A failure is logged and retried on
// the next reconcile: packets the fast path does not take go the normal way.
func (a *Agent) syncFastPath(d dataplane.Desired, full bool) {
	fast := a.fast.Load()
	if fast == nil {
		return
	}
	// The fast path depends on this node's pods and devices only, not on peers: the
	// reconciles that follow cluster changes (on every node, for every change) skip it.
	if dirty := a.fastDirty.Swap(false); !full && !dirty {
		return
	}
	want := fastpath.Want{Bridge: d.Bridge.Name, VXLAN: d.VXLAN.Name, Pods: map[netip.Addr]string{}}
	for _, l := range a.ipam.Leases() {
		want.Pods[l.Address.Addr()] = api.HostVethName(l.ContainerID, l.IfName)
	}
	n, err := fast.Sync(want, full)
	if err != nil {
		a.fastDirty.Store(true)
		a.log.Warn("updating the BPF fast path (will retry)", "changes", n, "err", err)
	} else if n > 0 {
		a.log.Debug("fast path updated", "changes", n)
	}
}

// watchLinks asks for a reconcile whenever a veth joins a bridge, so the fast path takes
// a new pod's traffic at once instead of at the next periodic reconcile. Until then the
// pod's packets take the normal path, so a lost event costs only that delay.
func (a *Agent) watchLinks(ctx context.Context) {
	updates := make(chan netlink.LinkUpdate, 64)
	err := netlink.LinkSubscribeWithOptions(updates, ctx.Done(), netlink.LinkSubscribeOptions{
		ErrorCallback: func(err error) { a.log.Debug("link updates", "err", err) },
	})
	if err != nil {
		a.log.Warn("not watching for new pod veths; the fast path picks them up at each resync", "err", err)
		return
	}
	for u := range updates {
		if u.Header.Type == unix.RTM_NEWLINK && u.Link.Type() == "veth" && u.Attrs().MasterIndex != 0 {
			a.fastDirty.Store(true)
			a.requestReconcile()
		}
	}
}
