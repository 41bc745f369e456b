package cni

// Real-kernel tests: they build the weft-cni binary and drive it through libcni exactly as a
// container runtime does, against a fake agent. Each test gets a "node" network namespace
// holding bridge weft (10.32.0.1/32, route 10.32.0.0/26 dev weft) and pod namespaces. libcni
// runs a plugin in the caller's network namespace, so every libcni call happens inside the
// node namespace's Do, and the plugin puts the host end of each veth there.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/api"
	"github.com/weftnet/weft/internal/testutil"
)

// referencePlugins is where Debian's containernetworking-plugins installs the reference plugins.
const referencePlugins = "/usr/lib/cni"

// pluginDir holds the weft-cni binary TestMain built; empty when not root (the real-kernel
// tests skip then).
var pluginDir string

func TestMain(m *testing.M) { os.Exit(runTests(m)) }

func runTests(m *testing.M) int {
	if os.Geteuid() == 0 {
		dir, err := os.MkdirTemp("", "weft-cni-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "weft-cni"), "github.com/weftnet/weft/cmd/weft-cni")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "building weft-cni: %v\n", err)
			return 1
		}
		pluginDir = dir
	}
	return m.Run()
}

type env struct {
	t     *testing.T
	agent *fakeAgent
	node  ns.NetNS
	cni   *libcni.CNIConfig
}

func newEnv(t *testing.T) *env {
	t.Helper()
	testutil.RequireRoot(t)
	e := &env{t: t, agent: startFakeAgent(t), node: testutil.NewNS(t)}
	e.cni = libcni.NewCNIConfigWithCacheDir([]string{pluginDir, referencePlugins}, t.TempDir(), nil)
	err := e.node.Do(func(ns.NetNS) error {
		// A fixed MAC, as the agent must give its bridge: otherwise the bridge takes the
		// lowest MAC of its ports, changes it when that pod goes, and every other pod's ARP
		// entry for the gateway goes stale (pings to the gateway fail for seconds).
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "weft", MTU: fakeMTU,
			HardwareAddr: net.HardwareAddr{0x02, 0x77, 0x65, 0x66, 0x74, 0x01}}}
		if err := netlink.LinkAdd(br); err != nil {
			return err
		}
		if err := netlink.AddrAdd(br, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(fakeGateway, 32))}); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(br); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: br.Index, Dst: ipNet(fakeBlock), Scope: netlink.SCOPE_LINK})
	})
	if err != nil {
		t.Fatalf("setting up the node's bridge: %v", err)
	}
	return e
}

// conflist is the runtime's network config list: weft-cni (with a field it does not know),
// then any more plugins given as JSON objects.
func (e *env) conflist(cniVersion string, more ...string) *libcni.NetworkConfigList {
	e.t.Helper()
	plugins := append([]string{fmt.Sprintf(`{"type":"weft-cni","socket":%q,"timeout":"5s","someFutureField":{"x":1}}`, e.agent.socket)}, more...)
	l, err := libcni.ConfListFromBytes(fmt.Appendf(nil, `{"cniVersion":%q,"name":"weft","plugins":[%s]}`, cniVersion, strings.Join(plugins, ",")))
	if err != nil {
		e.t.Fatal(err)
	}
	return l
}

func podRT(pod ns.NetNS, id string) *libcni.RuntimeConf {
	rt := &libcni.RuntimeConf{ContainerID: id, IfName: "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", "pod-" + id}}}
	if pod != nil {
		rt.NetNS = pod.Path()
	}
	return rt
}

// inNode runs fn (a libcni call) in the node's namespace, where the runtime would run.
func (e *env) inNode(fn func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return e.node.Do(func(ns.NetNS) error { return fn(ctx) })
}

func (e *env) add(list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) (types.Result, error) {
	var res types.Result
	err := e.inNode(func(ctx context.Context) (err error) {
		res, err = e.cni.AddNetworkList(ctx, list, rt)
		return err
	})
	return res, err
}

// mustAdd adds and returns the result as the current version.
func (e *env) mustAdd(list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) *current.Result {
	e.t.Helper()
	res, err := e.add(list, rt)
	if err != nil {
		e.t.Fatalf("ADD %s: %v", rt.ContainerID, err)
	}
	r, err := current.NewResultFromResult(res)
	if err != nil {
		e.t.Fatalf("converting ADD result: %v", err)
	}
	return r
}

func (e *env) del(list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	return e.inNode(func(ctx context.Context) error { return e.cni.DelNetworkList(ctx, list, rt) })
}

func (e *env) check(list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	return e.inNode(func(ctx context.Context) error { return e.cni.CheckNetworkList(ctx, list, rt) })
}

func (e *env) status(list *libcni.NetworkConfigList) error {
	return e.inNode(func(ctx context.Context) error { return e.cni.GetStatusNetworkList(ctx, list) })
}

// exec runs the plugin directly with a hand-written config, for what libcni never sends.
func (e *env) exec(command string, conf string, args *invoke.Args) error {
	args.Command, args.Path = command, pluginDir
	return e.inNode(func(ctx context.Context) error {
		return invoke.ExecPluginWithoutResult(ctx, filepath.Join(pluginDir, "weft-cni"), []byte(conf), args, nil)
	})
}

// nodeVeths lists the veths in the node's namespace.
func (e *env) nodeVeths() []string {
	e.t.Helper()
	var names []string
	err := e.node.Do(func(ns.NetNS) error {
		links, err := netlinksafe.LinkList()
		for _, l := range links {
			if _, ok := l.(*netlink.Veth); ok {
				names = append(names, l.Attrs().Name)
			}
		}
		return err
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return names
}

// requireClean fails unless the node has no veth, pod has no eth0 and the agent holds no
// lease for id.
func (e *env) requireClean(pod ns.NetNS, id string) {
	e.t.Helper()
	if v := e.nodeVeths(); len(v) != 0 {
		e.t.Errorf("veths left in the node namespace: %v", v)
	}
	if pod != nil {
		if _, err := linkIn(pod, "eth0"); err == nil {
			e.t.Errorf("eth0 left in the pod namespace")
		}
	}
	if l, ok := e.agent.held()[api.Attachment{ContainerID: id, IfName: "eth0"}]; ok {
		e.t.Errorf("lease %s for %s not released", l, id)
	}
}

func linkIn(n ns.NetNS, name string) (netlink.Link, error) {
	var link netlink.Link
	err := n.Do(func(ns.NetNS) (err error) {
		link, err = netlinksafe.LinkByName(name)
		return err
	})
	return link, err
}

func ping(from ns.NetNS, addr netip.Addr) error {
	return from.Do(func(ns.NetNS) error {
		out, err := exec.Command("ping", "-c1", "-W1", addr.String()).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ping %s: %v: %s", addr, err, out)
		}
		return nil
	})
}

// wantCode fails unless err is a CNI error with code (and a message containing has).
func wantCode(t *testing.T, err error, code uint, has string) {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("got %v, want a CNI error with code %d", err, code)
	}
	if e.Code != code || !strings.Contains(e.Error(), has) {
		t.Fatalf("got code %d %q, want code %d saying %q", e.Code, e, code, has)
	}
}

func resultAddr(t *testing.T, r *current.Result) netip.Addr {
	t.Helper()
	if len(r.IPs) != 1 {
		t.Fatalf("result has %d IPs, want 1: %+v", len(r.IPs), r)
	}
	p, ok := prefixOf(&r.IPs[0].Address)
	if !ok {
		t.Fatalf("bad address in result: %v", r.IPs[0].Address)
	}
	return p.Addr()
}

func TestAddPingCheckDel(t *testing.T) {
	e := newEnv(t)
	list := e.conflist("1.1.0")
	podA, podB := testutil.NewNS(t), testutil.NewNS(t)
	rtA, rtB := podRT(podA, "pod-a"), podRT(podB, "pod-b")

	start := time.Now()
	resA := e.mustAdd(list, rtA)
	t.Logf("ADD through libcni took %v", time.Since(start))
	resB := e.mustAdd(list, rtB)

	t.Run("result", func(t *testing.T) {
		checkResult(t, e, resA, podA, "pod-a", true)
	})
	t.Run("kernel", func(t *testing.T) {
		checkKernel(t, e, podA, "pod-a", resultAddr(t, resA))
	})
	t.Run("agent got pod metadata", func(t *testing.T) {
		e.agent.set(func(f *fakeAgent) {
			r := f.requests[0]
			if r.PodNamespace != "default" || r.PodName != "pod-pod-a" || r.Netns != podA.Path() || r.ContainerID != "pod-a" {
				t.Errorf("agent got %+v", r)
			}
		})
	})
	t.Run("ping", func(t *testing.T) {
		for _, p := range []struct {
			from ns.NetNS
			to   netip.Addr
		}{{podA, resultAddr(t, resB)}, {podB, resultAddr(t, resA)}, {podA, fakeGateway}, {podB, fakeGateway}} {
			if err := ping(p.from, p.to); err != nil {
				t.Error(err)
			}
		}
	})
	t.Run("check", func(t *testing.T) {
		if err := e.check(list, rtA); err != nil {
			t.Fatalf("CHECK of a fresh pod: %v", err)
		}
	})
	t.Run("check finds a route deleted by hand", func(t *testing.T) {
		err := podB.Do(func(ns.NetNS) error {
			link, err := netlinksafe.LinkByName("eth0")
			if err != nil {
				return err
			}
			return netlink.RouteDel(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: ipNet(fakeCluster), Gw: fakeGateway.AsSlice()})
		})
		if err != nil {
			t.Fatal(err)
		}
		wantCode(t, e.check(list, rtB), ErrCodeCheckFailed, "route 10.32.0.0/12 via 10.32.0.1 dev eth0 is missing")
	})
	t.Run("check finds the lease gone", func(t *testing.T) {
		att := api.Attachment{ContainerID: "pod-a", IfName: "eth0"}
		var lease api.Lease
		e.agent.set(func(f *fakeAgent) { lease = f.leases[att]; delete(f.leases, att) })
		wantCode(t, e.check(list, rtA), ErrCodeCheckFailed, "holds no address")
		e.agent.set(func(f *fakeAgent) { f.leases[att] = lease })
	})
	t.Run("del twice", func(t *testing.T) {
		start := time.Now()
		if err := e.del(list, rtA); err != nil {
			t.Fatalf("DEL: %v", err)
		}
		t.Logf("DEL through libcni took %v", time.Since(start))
		if err := e.del(list, rtA); err != nil {
			t.Fatalf("second DEL: %v", err)
		}
		if _, err := linkIn(podA, "eth0"); err == nil {
			t.Error("eth0 still in pod A after DEL")
		}
		if v := e.nodeVeths(); !slices.Equal(v, []string{api.HostVethName("pod-b", "eth0")}) {
			t.Errorf("node veths after deleting A = %v, want only B's", v)
		}
		if _, ok := e.agent.held()[api.Attachment{ContainerID: "pod-a", IfName: "eth0"}]; ok {
			t.Error("A's lease survived DEL")
		}
		if err := ping(podB, fakeGateway); err != nil {
			t.Errorf("B lost its network when A was deleted: %v", err)
		}
	})
}

// checkResult checks an ADD result (converted to the current version) against the kernel and
// the agent. Results before 1.1.0 carry no MTU.
func checkResult(t *testing.T, e *env, r *current.Result, pod ns.NetNS, id string, withMTU bool) {
	t.Helper()
	wantMTU := 0
	if withMTU {
		wantMTU = fakeMTU
	}
	if len(r.Interfaces) != 2 {
		t.Fatalf("result has %d interfaces, want 2: %+v", len(r.Interfaces), r.Interfaces)
	}
	host, podIf := r.Interfaces[0], r.Interfaces[1]
	var hostLink netlink.Link
	if err := e.node.Do(func(ns.NetNS) (err error) { hostLink, err = netlinksafe.LinkByName(host.Name); return err }); err != nil {
		t.Fatalf("host interface %q of the result: %v", host.Name, err)
	}
	podLink, err := linkIn(pod, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	if host.Name != api.HostVethName(id, "eth0") || host.Sandbox != "" || host.Mac != hostLink.Attrs().HardwareAddr.String() || host.Mtu != wantMTU {
		t.Errorf("host interface in result = %+v; want %s with MAC %s, MTU %d, no sandbox", host, api.HostVethName(id, "eth0"), hostLink.Attrs().HardwareAddr, wantMTU)
	}
	if podIf.Name != "eth0" || podIf.Sandbox != pod.Path() || podIf.Mac != podLink.Attrs().HardwareAddr.String() || podIf.Mtu != wantMTU {
		t.Errorf("pod interface in result = %+v; want eth0 with MAC %s, MTU %d, in %s", podIf, podLink.Attrs().HardwareAddr, wantMTU, pod.Path())
	}
	ipc := r.IPs[0]
	lease := e.agent.held()[api.Attachment{ContainerID: id, IfName: "eth0"}]
	if ipc.Interface == nil || *ipc.Interface != 1 || ipc.Address.String() != lease.String() || !ipc.Gateway.Equal(fakeGateway.AsSlice()) {
		t.Errorf("IP in result = %v; want interface 1, %s, gateway %s", ipc, lease, fakeGateway)
	}
	var routes []string
	for _, rt := range r.Routes {
		routes = append(routes, rt.Dst.String()+" via "+rt.GW.String())
	}
	sort.Strings(routes)
	if want := []string{"0.0.0.0/0 via 10.32.0.1", "10.32.0.0/12 via 10.32.0.1"}; !slices.Equal(routes, want) {
		t.Errorf("routes in result = %v, want %v", routes, want)
	}
}

func checkKernel(t *testing.T, e *env, pod ns.NetNS, id string, addr netip.Addr) {
	t.Helper()
	err := e.node.Do(func(ns.NetNS) error {
		host, err := netlinksafe.LinkByName(api.HostVethName(id, "eth0"))
		if err != nil {
			return err
		}
		br, err := netlinksafe.LinkByName("weft")
		if err != nil {
			return err
		}
		a := host.Attrs()
		if a.MasterIndex != br.Attrs().Index || a.MTU != fakeMTU || a.Flags&net.FlagUp == 0 {
			t.Errorf("host veth: master %d (bridge is %d), MTU %d, flags %v", a.MasterIndex, br.Attrs().Index, a.MTU, a.Flags)
		}
		pi, err := netlinksafe.LinkGetProtinfo(host)
		if err != nil {
			return err
		}
		if !pi.Hairpin {
			t.Error("hairpin mode is off on the host veth")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = pod.Do(func(ns.NetNS) error {
		link, err := netlinksafe.LinkByName("eth0")
		if err != nil {
			return err
		}
		if link.Attrs().MTU != fakeMTU || link.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("pod eth0: MTU %d, flags %v", link.Attrs().MTU, link.Attrs().Flags)
		}
		addrs, err := netlinksafe.AddrList(link, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		if len(addrs) != 1 || addrs[0].IPNet.String() != netip.PrefixFrom(addr, 26).String() {
			t.Errorf("pod addresses = %v, want %s/26", addrs, addr)
		}
		routes, err := netlinksafe.RouteList(link, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		var got []string
		for _, r := range routes {
			s := r.Dst.String()
			if r.Gw != nil {
				s += " via " + r.Gw.String()
			}
			got = append(got, s+" scope "+r.Scope.String())
		}
		sort.Strings(got)
		want := []string{"0.0.0.0/0 via 10.32.0.1 scope universe", "10.32.0.0/12 via 10.32.0.1 scope universe",
			"10.32.0.0/26 scope link", "10.32.0.1/32 scope link"}
		if !slices.Equal(got, want) {
			t.Errorf("pod routes = %q, want %q", got, want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestDelIsIdempotent(t *testing.T) {
	e := newEnv(t)
	list := e.conflist("1.1.0")

	t.Run("without netns", func(t *testing.T) {
		pod := testutil.NewNS(t)
		e.mustAdd(list, podRT(pod, "gone"))
		if err := e.del(list, podRT(nil, "gone")); err != nil {
			t.Fatalf("DEL with empty CNI_NETNS: %v", err)
		}
		e.requireClean(pod, "gone")
	})
	t.Run("netns path that does not exist", func(t *testing.T) {
		rt := podRT(nil, "nopath")
		rt.NetNS = "/proc/self/ns/no-such-ns"
		if err := e.del(list, rt); err != nil {
			t.Fatalf("DEL: %v", err)
		}
	})
	t.Run("unknown container", func(t *testing.T) {
		pod := testutil.NewNS(t)
		if err := e.del(list, podRT(pod, "never-added")); err != nil {
			t.Fatalf("DEL of an unknown container: %v", err)
		}
		e.agent.set(func(f *fakeAgent) { f.delNotFound = true })
		defer e.agent.set(func(f *fakeAgent) { f.delNotFound = false })
		if err := e.del(list, podRT(pod, "never-added")); err != nil {
			t.Fatalf("DEL of an unknown container, agent answering not found: %v", err)
		}
	})
	t.Run("agent unreachable: veth goes, code 11", func(t *testing.T) {
		pod := testutil.NewNS(t)
		e.mustAdd(list, podRT(pod, "orphan"))
		e.agent.stop()
		wantCode(t, e.del(list, podRT(pod, "orphan")), types.ErrTryAgainLater, "unreachable")
		if v := e.nodeVeths(); len(v) != 0 {
			t.Errorf("veths left after DEL: %v", v)
		}
		if _, err := linkIn(pod, "eth0"); err == nil {
			t.Error("eth0 left in the pod after DEL")
		}
	})
}

func TestAddFailsCleanly(t *testing.T) {
	t.Run("agent absent", func(t *testing.T) {
		e := newEnv(t)
		pod := testutil.NewNS(t)
		e.agent.stop()
		_, err := e.add(e.conflist("1.1.0"), podRT(pod, "c1"))
		wantCode(t, err, types.ErrTryAgainLater, "weft agent unreachable at "+e.agent.socket)
		e.requireClean(pod, "c1")
	})
	t.Run("agent not ready", func(t *testing.T) {
		e := newEnv(t)
		pod := testutil.NewNS(t)
		e.agent.set(func(f *fakeAgent) { f.notReady = true })
		_, err := e.add(e.conflist("1.1.0"), podRT(pod, "c1"))
		wantCode(t, err, types.ErrTryAgainLater, "still joining the cluster")
		e.requireClean(pod, "c1")
	})
	t.Run("addresses exhausted", func(t *testing.T) {
		e := newEnv(t)
		pod := testutil.NewNS(t)
		e.agent.set(func(f *fakeAgent) { f.exhaust = true })
		_, err := e.add(e.conflist("1.1.0"), podRT(pod, "c1"))
		wantCode(t, err, ErrCodeExhausted, "widen --cluster-cidr")
		e.requireClean(pod, "c1")
	})
	t.Run("bogus netns path", func(t *testing.T) {
		e := newEnv(t)
		rt := podRT(nil, "c1")
		rt.NetNS = "/proc/self/ns/no-such-ns"
		_, err := e.add(e.conflist("1.1.0"), rt)
		wantCode(t, err, types.ErrInvalidNetNS, "cannot open the pod's network namespace")
		e.requireClean(nil, "c1")
	})
	t.Run("netns is the node's own", func(t *testing.T) {
		e := newEnv(t)
		rt := podRT(e.node, "c1")
		_, err := e.add(e.conflist("1.1.0"), rt)
		wantCode(t, err, types.ErrInvalidNetNS, "weft-cni's own network namespace")
		e.requireClean(nil, "c1")
	})
	t.Run("bridge missing: veth and lease rolled back", func(t *testing.T) {
		e := newEnv(t)
		pod := testutil.NewNS(t)
		e.agent.set(func(f *fakeAgent) { f.bridge = "nosuchbr" })
		_, err := e.add(e.conflist("1.1.0"), podRT(pod, "c1"))
		wantCode(t, err, types.ErrTryAgainLater, `bridge "nosuchbr" not found`)
		e.requireClean(pod, "c1")
		e.agent.set(func(f *fakeAgent) {
			if len(f.requests) != 1 {
				t.Errorf("agent got %d ADDs, want 1", len(f.requests))
			}
		})
	})
	t.Run("interface name taken by another network", func(t *testing.T) {
		e := newEnv(t)
		pod := testutil.NewNS(t)
		err := pod.Do(func(ns.NetNS) error {
			return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "other0"})
		})
		if err != nil {
			t.Fatal(err)
		}
		list := e.conflist("1.1.0")
		_, err = e.add(list, podRT(pod, "c1"))
		wantCode(t, err, ErrCodeInterfaceExists, `interface "eth0" already exists`)
		if v := e.nodeVeths(); len(v) != 0 || len(e.agent.held()) != 0 {
			t.Errorf("failed ADD left veths %v, leases %v", v, e.agent.held())
		}
		// The runtime answers a failed ADD with DEL: that must not remove the other eth0.
		if err := e.del(list, podRT(pod, "c1")); err != nil {
			t.Fatalf("DEL: %v", err)
		}
		if _, err := linkIn(pod, "other0"); err != nil {
			t.Errorf("DEL removed an eth0 weft did not create: %v", err)
		}
	})
	t.Run("second ADD for the same attachment", func(t *testing.T) {
		e := newEnv(t)
		pod := testutil.NewNS(t)
		list := e.conflist("1.1.0")
		first := e.mustAdd(list, podRT(pod, "c1"))
		_, err := e.add(list, podRT(pod, "c1"))
		wantCode(t, err, ErrCodeInterfaceExists, "DEL this attachment first")
		if _, ok := e.agent.held()[api.Attachment{ContainerID: "c1", IfName: "eth0"}]; !ok {
			t.Error("second ADD released the first one's lease")
		}
		checkKernel(t, e, pod, "c1", resultAddr(t, first))
		if err := ping(pod, fakeGateway); err != nil {
			t.Error(err)
		}
	})
	t.Run("invalid CNI_IFNAME", func(t *testing.T) {
		e := newEnv(t)
		pod := testutil.NewNS(t)
		conf := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","socket":%q}`, e.agent.socket)
		err := e.exec("ADD", conf, &invoke.Args{ContainerID: "c1", NetNS: pod.Path(), IfName: "eth0/x"})
		wantCode(t, err, types.ErrInvalidEnvironmentVariables, "interface name")
		e.requireClean(pod, "c1")
	})
	t.Run("invalid config", func(t *testing.T) {
		e := newEnv(t)
		pod := testutil.NewNS(t)
		conf := `{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","socket":"weft.sock"}`
		err := e.exec("ADD", conf, &invoke.Args{ContainerID: "c1", NetNS: pod.Path(), IfName: "eth0"})
		wantCode(t, err, types.ErrInvalidNetworkConfig, "absolute path")
		e.requireClean(pod, "c1")
	})
}

func TestStatus(t *testing.T) {
	e := newEnv(t)
	list := e.conflist("1.1.0")
	if err := e.status(list); err != nil {
		t.Fatalf("STATUS of a ready agent: %v", err)
	}
	e.agent.set(func(f *fakeAgent) { f.notReady = true })
	wantCode(t, e.status(list), types.ErrPluginNotAvailable, "not ready: fake: still joining the cluster")
	e.agent.stop()
	wantCode(t, e.status(list), types.ErrPluginNotAvailable, "start the weft pod on this node")
}

func TestGC(t *testing.T) {
	e := newEnv(t)
	att := func(id string) api.Attachment { return api.Attachment{ContainerID: id, IfName: "eth0"} }
	for _, id := range []string{"a", "b", "c"} {
		if _, err := e.agent.Add(context.Background(), api.AddRequest{Attachment: att(id)}); err != nil {
			t.Fatal(err)
		}
	}
	held := func() []string {
		var ids []string
		for a := range e.agent.held() {
			ids = append(ids, a.ContainerID)
		}
		sort.Strings(ids)
		return ids
	}

	// Through libcni: it sends both keys. Its result cache is empty, so only the plugin's GC
	// can free anything.
	list := e.conflist("1.1.0")
	err := e.inNode(func(ctx context.Context) error {
		return e.cni.GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{
			{ContainerID: "a", IfName: "eth0"}, {ContainerID: "b", IfName: "eth0"}}})
	})
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	if got := held(); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("after GC keeping a and b the agent holds %v", got)
	}

	// Only the older key.
	conf := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","socket":%q,"cni.dev/attachments":[{"containerID":"a","ifname":"eth0"}]}`, e.agent.socket)
	if err := e.exec("GC", conf, &invoke.Args{}); err != nil {
		t.Fatalf("GC with cni.dev/attachments: %v", err)
	}
	if got := held(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("after GC keeping a the agent holds %v", got)
	}

	// No list at all is refused, not read as "nothing is valid".
	conf = fmt.Sprintf(`{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","socket":%q}`, e.agent.socket)
	wantCode(t, e.exec("GC", conf, &invoke.Args{}), types.ErrInvalidNetworkConfig, "refuses")
	if got := held(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("GC without a list freed leases: the agent holds %v", got)
	}
}

// TestGCAsRuntime is GC as containerd runs it: libcni DELs the cached attachments that are
// not valid any more, then weft-cni's GC frees leases libcni never knew of.
func TestGCAsRuntime(t *testing.T) {
	e := newEnv(t)
	list := e.conflist("1.1.0")
	podA, podB := testutil.NewNS(t), testutil.NewNS(t)
	e.mustAdd(list, podRT(podA, "a"))
	e.mustAdd(list, podRT(podB, "b"))
	if _, err := e.agent.Add(context.Background(), api.AddRequest{Attachment: api.Attachment{ContainerID: "leaked", IfName: "eth0"}}); err != nil {
		t.Fatal(err)
	}
	err := e.inNode(func(ctx context.Context) error {
		return e.cni.GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: "a", IfName: "eth0"}}})
	})
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	if h := e.agent.held(); len(h) != 1 || h[api.Attachment{ContainerID: "a", IfName: "eth0"}] == (netip.Prefix{}) {
		t.Errorf("after GC the agent holds %v, want only a", h)
	}
	if v := e.nodeVeths(); !slices.Equal(v, []string{api.HostVethName("a", "eth0")}) {
		t.Errorf("node veths after GC = %v, want only a's", v)
	}
	if err := ping(podA, fakeGateway); err != nil {
		t.Error(err)
	}
}

func TestCNIVersions(t *testing.T) {
	e := newEnv(t)
	for _, v := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			list := e.conflist(v)
			pod := testutil.NewNS(t)
			rt := podRT(pod, "v"+strings.ReplaceAll(v, ".", ""))
			res, err := e.add(list, rt)
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if res.Version() != v {
				t.Errorf("result version %s, want %s", res.Version(), v)
			}
			r, err := current.NewResultFromResult(res)
			if err != nil {
				t.Fatal(err)
			}
			checkResult(t, e, r, pod, rt.ContainerID, v == "1.0.0" || v == "1.1.0")
			if err := ping(pod, fakeGateway); err != nil {
				t.Error(err)
			}
			if v != "0.3.1" { // CHECK came with 0.4.0
				if err := e.check(list, rt); err != nil {
					t.Errorf("CHECK: %v", err)
				}
			}
			if err := e.del(list, rt); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			e.requireClean(pod, rt.ContainerID)
		})
	}
}

// The runtime's hostPorts (capability portMappings) reach the agent with the ADD; weft-cni
// needs no portmap plugin chained. The agent's side (nftables) is tested in dataplane.
func TestHostPortsGoToTheAgent(t *testing.T) {
	e := newEnv(t)
	list, err := libcni.ConfListFromBytes(fmt.Appendf(nil,
		`{"cniVersion":"1.1.0","name":"weft","plugins":[{"type":"weft-cni","socket":%q,"capabilities":{"portMappings":true}}]}`, e.agent.socket))
	if err != nil {
		t.Fatal(err)
	}
	pod := testutil.NewNS(t)
	rt := podRT(pod, "web")
	rt.CapabilityArgs = map[string]any{"portMappings": []map[string]any{
		{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"},
		{"hostPort": 18053, "containerPort": 53, "protocol": "UDP", "hostIP": "198.18.0.1"},
	}}
	r := e.mustAdd(list, rt)
	checkResult(t, e, r, pod, "web", true)
	want := []api.PortMapping{
		{HostPort: 18080, ContainerPort: 80, Protocol: "tcp"},
		{HostPort: 18053, ContainerPort: 53, Protocol: "udp", HostIP: netip.MustParseAddr("198.18.0.1")},
	}
	e.agent.set(func(f *fakeAgent) {
		if got := f.requests[len(f.requests)-1].PortMappings; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("agent got port mappings %+v, want %+v", got, want)
		}
	})
	if err := e.del(list, rt); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	e.requireClean(pod, "web")
}

// TestAddLatency reports how long a runtime waits for ADD and DEL, pod after pod.
func TestAddLatency(t *testing.T) {
	e := newEnv(t)
	list := e.conflist("1.1.0")
	var adds, dels []time.Duration
	for i := range 10 {
		pod := testutil.NewNS(t)
		rt := podRT(pod, fmt.Sprintf("lat%d", i))
		start := time.Now()
		e.mustAdd(list, rt)
		adds = append(adds, time.Since(start))
		start = time.Now()
		if err := e.del(list, rt); err != nil {
			t.Fatal(err)
		}
		dels = append(dels, time.Since(start))
	}
	slices.Sort(adds)
	slices.Sort(dels)
	t.Logf("ADD min %v median %v max %v; DEL min %v median %v max %v", adds[0], adds[5], adds[9], dels[0], dels[5], dels[9])
	if adds[5] > 2*time.Second {
		t.Errorf("median ADD took %v", adds[5])
	}
}

func TestVersionInfo(t *testing.T) {
	testutil.RequireRoot(t)
	info, err := libcni.NewCNIConfig([]string{pluginDir}, nil).GetVersionInfo(context.Background(), "weft-cni")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := info.SupportedVersions(), []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"}; !slices.Equal(got, want) {
		t.Errorf("VERSION lists %v, want %v", got, want)
	}
}
