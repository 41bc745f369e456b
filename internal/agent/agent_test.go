package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/api"
	"github.com/weftnet/weft/internal/dataplane"
	"github.com/weftnet/weft/internal/ipam"
	"github.com/weftnet/weft/internal/testutil"
)

// These tests run a real agent in-process against a fake kernel, with gossip on loopback:
// no root needed. The lab tests run real agents against real kernels.

type running struct {
	client *api.Client
	stop   func() error
}

func testConfig(t *testing.T, dir string, k dataplane.Kernel, opts ...func(*Config)) Config {
	cfg := Config{
		NodeName: "node1", UnderlayIP: netip.MustParseAddr("127.0.0.1"), GossipPort: testutil.FreePort(t, "127.0.0.1"),
		Socket: filepath.Join(dir, "weft.sock"), StatePath: filepath.Join(dir, "ipam.json"),
		Claims:      ipam.FileStore{Dir: filepath.Join(dir, "claims")},
		ClusterCIDR: netip.MustParsePrefix("10.32.0.0/16"), BlockBits: 26,
		Resync: 100 * time.Millisecond, SyncGrace: 1500 * time.Millisecond,
		Kernel: k, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	for _, o := range opts {
		o(&cfg)
	}
	return cfg
}

func startAgent(t *testing.T, dir string, k dataplane.Kernel, peers ...string) running {
	return startAgentWith(t, dir, k, func(c *Config) { c.Discovery = StaticPeers(peers) })
}

func startAgentWith(t *testing.T, dir string, k dataplane.Kernel, opts ...func(*Config)) running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cfg := testConfig(t, dir, k, opts...)
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			return errors.New("agent did not stop within 10s")
		}
	}
	t.Cleanup(func() { _ = stop() })
	c := api.NewClient(cfg.Socket, time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := c.Status(context.Background())
		if err == nil && st.Ready {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("agent exited: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not ready after 10s: %v %+v", err, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return running{client: c, stop: stop}
}

func att(id string) api.Attachment { return api.Attachment{ContainerID: id, IfName: "eth0"} }

func TestLocalAPI(t *testing.T) {
	ctx := context.Background()
	k := &dataplane.FakeKernel{}
	a := startAgent(t, t.TempDir(), k)

	l1, err := a.client.Add(ctx, api.AddRequest{Attachment: att("c1"), PodName: "p1"})
	if err != nil {
		t.Fatal(err)
	}
	st, _ := a.client.Status(ctx)
	home := st.Blocks[0].Block
	if !home.Contains(l1.Address.Addr()) || l1.Address.Bits() != 26 {
		t.Fatalf("lease %s not in home block %s with its prefix", l1.Address, home)
	}
	if l1.Gateway != home.Addr().Next() || l1.Bridge != "weft" || l1.MTU != 65536-50 ||
		l1.ClusterCIDR != netip.MustParsePrefix("10.32.0.0/16") {
		t.Fatalf("lease %+v: wrong gateway, bridge, MTU or cluster CIDR", l1)
	}
	l1again, _ := a.client.Add(ctx, api.AddRequest{Attachment: att("c1")})
	if l1again.Address != l1.Address {
		t.Fatalf("ADD twice gave %s then %s", l1.Address, l1again.Address)
	}
	if got, err := a.client.Check(ctx, att("c1")); err != nil || got.Address != l1.Address {
		t.Fatalf("Check = %v, %v", got, err)
	}
	if _, err := a.client.Check(ctx, att("nope")); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("Check(unknown) err = %v, want ErrNotFound", err)
	}
	if err := a.client.Del(ctx, att("nope")); err != nil {
		t.Fatalf("Del(unknown) = %v, want nil", err)
	}
	a.client.Add(ctx, api.AddRequest{Attachment: att("c2")})
	a.client.Add(ctx, api.AddRequest{Attachment: att("c3")})
	gc, err := a.client.GC(ctx, api.GCRequest{Valid: []api.Attachment{att("c2")}})
	if err != nil || len(gc.Released) != 2 {
		t.Fatalf("GC = %+v, %v; want c1 and c3 released", gc, err)
	}
	st, _ = a.client.Status(ctx)
	if st.Blocks[0].Used != 1 || st.Node != "node1" || !st.Ready {
		t.Fatalf("status after GC: %+v", st)
	}

	// The dataplane got the node's bridge, VXLAN device and block route.
	o, _ := k.Observe(dataplane.BridgeName, dataplane.VXLANName)
	if o.Bridge == nil || o.VXLAN == nil || !o.IPForward {
		t.Fatalf("fake kernel lacks bridge/vxlan/forwarding: %+v", o)
	}
	if !slices.ContainsFunc(o.Routes, func(r dataplane.Route) bool { return r.Dst == home && r.Dev == "weft" }) {
		t.Fatalf("no route for the home block %s on the bridge: %+v", home, o.Routes)
	}
}

// A restarted agent hands out the same address to the same pod and keeps every address it
// handed out before.
func TestRestartKeepsLeases(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	k := &dataplane.FakeKernel{}
	a := startAgent(t, dir, k)
	l1, err := a.client.Add(ctx, api.AddRequest{Attachment: att("c1")})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.stop(); err != nil {
		t.Fatal(err)
	}
	applied := len(k.Applied)

	b := startAgent(t, dir, k)
	again, err := b.client.Add(ctx, api.AddRequest{Attachment: att("c1")})
	if err != nil || again.Address != l1.Address {
		t.Fatalf("after restart ADD(c1) = %v, %v; want %s", again.Address, err, l1.Address)
	}
	l2, _ := b.client.Add(ctx, api.AddRequest{Attachment: att("c2")})
	if l2.Address == l1.Address {
		t.Fatalf("after restart handed out %s twice", l1.Address)
	}
	if len(k.Applied) != applied {
		t.Fatalf("restart changed the converged kernel: %v", k.Applied[applied:])
	}
}

// Until the agent has heard the cluster, it must not delete kernel entries of nodes it does
// not know: they are what keeps traffic flowing across its restart.
func TestNoDeletesBeforeSync(t *testing.T) {
	peerBlock := netip.MustParsePrefix("10.32.200.0/26")
	k := &dataplane.FakeKernel{}
	k.State.Routes = []dataplane.Route{{
		Dst: peerBlock, Gw: peerBlock.Addr(), Dev: dataplane.VXLANName, OnLink: true,
	}}
	// A peer is configured but nobody answers there.
	a := startAgent(t, t.TempDir(), k, "127.0.0.2:16799")
	hasRoute := func() bool {
		o, _ := k.Observe(dataplane.BridgeName, dataplane.VXLANName)
		return slices.ContainsFunc(o.Routes, func(r dataplane.Route) bool { return r.Dst == peerBlock })
	}
	time.Sleep(700 * time.Millisecond) // several resyncs, still inside the grace period
	if !hasRoute() {
		t.Fatal("the agent deleted an unknown node's route before it heard the cluster")
	}
	deadline := time.Now().Add(5 * time.Second)
	for hasRoute() {
		if time.Now().After(deadline) {
			t.Fatal("the stale route outlived the grace period")
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = a
}

func TestHealthEndpoints(t *testing.T) {
	dir := t.TempDir()
	port := testutil.FreePort(t, "127.0.0.1")
	a := startAgentWith(t, dir, &dataplane.FakeKernel{}, func(c *Config) { c.HTTPAddr = fmt.Sprintf("127.0.0.1:%d", port) })
	_ = a
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %s", path, resp.Status)
		}
	}
}

// A part that cannot start stops the whole agent with its error, instead of hanging.
func TestHTTPAddrInUseFailsRun(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = Run(ctx, testConfig(t, dir, &dataplane.FakeKernel{}, func(c *Config) { c.HTTPAddr = l.Addr().String() }))
	if err == nil || ctx.Err() != nil {
		t.Fatalf("Run with a taken HTTP address = %v (ctx %v), want a prompt error", err, ctx.Err())
	}
}

// A join that hangs (the peer's SYNs are dropped, as behind a partition) must not hold up
// shutdown: the kubelet kills an agent that outlives its grace period.
func TestShutdownDoesNotWaitForJoin(t *testing.T) {
	// A listener that never accepts: TCP connects succeed into the backlog, and memberlist's
	// push/pull then waits for an answer until its 10 s timeout.
	l, err := net.Listen("tcp", "127.0.0.2:0") // not the agent's own 127.0.0.1, which it skips
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	a := startAgent(t, t.TempDir(), &dataplane.FakeKernel{}, l.Addr().String())
	time.Sleep(300 * time.Millisecond) // the join loop is now stuck in Join
	start := time.Now()
	if err := a.stop(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("shutdown took %s with a join in flight, want well under the 10 s join timeout", took)
	}
}

// A pod's hostPorts are in the kernel when ADD returns, refused when they cannot be
// forwarded, and gone with the pod's DEL.
func TestHostPorts(t *testing.T) {
	ctx := context.Background()
	k := &dataplane.FakeKernel{}
	a := startAgent(t, t.TempDir(), k)
	hostPorts := func() []dataplane.HostPort {
		t.Helper()
		o, err := k.Observe(dataplane.BridgeName, dataplane.VXLANName)
		if err != nil || o.NAT.HostPortsPrerouting == nil {
			t.Fatalf("fake kernel has no hostports chain: %v %+v", err, o.NAT)
		}
		return o.NAT.HostPortsPrerouting.Rules
	}
	web := []api.PortMapping{{HostPort: 18080, ContainerPort: 80, Protocol: "tcp"}}
	l, err := a.client.Add(ctx, api.AddRequest{Attachment: att("web"), PortMappings: web})
	if err != nil {
		t.Fatal(err)
	}
	want := []dataplane.HostPort{{Protocol: "tcp", HostPort: 18080, PodIP: l.Address.Addr(), PodPort: 80}}
	if got := hostPorts(); !slices.Equal(got, want) {
		t.Fatalf("after ADD the kernel forwards %+v, want %+v", got, want)
	}
	// The VXLAN port cannot be a UDP hostPort: refused, and no address is kept for it.
	vx := []api.PortMapping{{HostPort: dataplane.VXLANPort, ContainerPort: 53, Protocol: "udp"}}
	if _, err := a.client.Add(ctx, api.AddRequest{Attachment: att("dns"), PortMappings: vx}); !errors.Is(err, api.ErrBadPortMapping) {
		t.Fatalf("ADD with the VXLAN port as hostPort: err %v, want ErrBadPortMapping", err)
	}
	if _, err := a.client.Check(ctx, att("dns")); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("the refused pod kept a lease: %v", err)
	}
	if got := hostPorts(); !slices.Equal(got, want) {
		t.Fatalf("after the refused ADD the kernel forwards %+v, want %+v", got, want)
	}
	if err := a.client.Del(ctx, att("web")); err != nil {
		t.Fatal(err)
	}
	if got := hostPorts(); len(got) != 0 {
		t.Fatalf("after DEL the kernel still forwards %+v", got)
	}
}

// stallKernel is a fake kernel whose reads block while stalled: a reconcile stuck in the
// kernel, as on a node whose netlink calls wait for a busy rtnl lock.
type stallKernel struct {
	dataplane.FakeKernel
	armed   atomic.Bool
	once    sync.Once
	stuck   chan struct{} // closed once a read is blocked
	release chan struct{}
}

func (k *stallKernel) Observe(bridge, vxlan string) (dataplane.Observed, error) {
	if k.armed.Load() {
		k.once.Do(func() { close(k.stuck) })
		<-k.release
	}
	return k.FakeKernel.Observe(bridge, vxlan)
}

// The status and the health probe answer while a reconcile is stuck, and the probe says
// the loop stalled, rather than waiting for the reconcile with it.
func TestStatusAnswersDuringStuckReconcile(t *testing.T) {
	dir := t.TempDir()
	port := testutil.FreePort(t, "127.0.0.1")
	k := &stallKernel{stuck: make(chan struct{}), release: make(chan struct{})}
	a := startAgentWith(t, dir, k, func(c *Config) { c.HTTPAddr = fmt.Sprintf("127.0.0.1:%d", port) })
	t.Cleanup(func() { close(k.release) }) // runs before the agent's stop
	k.armed.Store(true)
	select {
	case <-k.stuck:
	case <-time.After(5 * time.Second):
		t.Fatal("no reconcile read the kernel within 5s")
	}
	time.Sleep(500 * time.Millisecond) // over 3 resync periods (100 ms each)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	st, err := a.client.Status(ctx)
	if err != nil {
		t.Fatalf("status while a reconcile is stuck: %v", err)
	}
	if !st.Ready {
		t.Errorf("status: not ready (%s)", st.Reason)
	}
	hc := http.Client{Timeout: time.Second}
	resp, err := hc.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", port))
	if err != nil {
		t.Fatalf("/healthz while a reconcile is stuck: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "stalled") {
		t.Errorf("/healthz while a reconcile is stuck: %s %q, want 503 and \"stalled\"", resp.Status, body)
	}
}

// Every periodic wait is within 10 % of the period, and the waits differ, so agents
// started together drift apart.
func TestJitteredWaits(t *testing.T) {
	for _, d := range []time.Duration{100 * time.Millisecond, 5 * time.Second} {
		seen := map[time.Duration]bool{}
		for range 1000 {
			w := jittered(d)
			if w < d-d/10 || w > d+d/10 {
				t.Fatalf("jittered(%s) = %s: outside %s ± 10 %%", d, w, d)
			}
			seen[w] = true
		}
		if len(seen) < 100 {
			t.Errorf("jittered(%s): only %d distinct waits in 1000", d, len(seen))
		}
	}
}
