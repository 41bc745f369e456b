package lab

// The test binary doubles as a fake `weft agent` and a fake `weft-cni` (TestMain
// dispatches on argv[0]), so the lab's plumbing, process handling, libcni calls and Down
// are tested independently of the real agent and plugin.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/weftnet/weft/internal/api"
	"github.com/weftnet/weft/internal/api/apiserver"
)

// fakeDispatch runs the fake agent or plugin if argv[0] asks for one; it reports
// whether it did (the caller then exits with the returned code).
func fakeDispatch() (int, bool) {
	switch filepath.Base(os.Args[0]) {
	case "weft":
		if len(os.Args) > 1 && os.Args[1] == "agent" {
			return fakeAgent(os.Args[2:]), true
		}
		fmt.Fprintln(os.Stderr, "fake weft: only `agent` is implemented")
		return 2, true
	case "weft-cni":
		skel.PluginMainFuncs(skel.CNIFuncs{Add: fakeAdd, Del: fakeDel, Check: func(*skel.CmdArgs) error { return nil }},
			version.All, "fake weft-cni for internal/lab tests")
		return 0, true
	}
	return 0, false
}

// fakeBins returns a directory holding "weft" and "weft-cni", both symlinks to the
// test binary.
func fakeBins(t *testing.T) (weft, dir string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir = t.TempDir()
	for _, n := range []string{"weft", "weft-cni"} {
		if err := os.Symlink(self, filepath.Join(dir, n)); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, "weft"), dir
}

type fakeBackend struct {
	status api.Status
}

func (b *fakeBackend) Add(context.Context, api.AddRequest) (api.Lease, error) {
	return api.Lease{}, api.ErrNotReady
}
func (b *fakeBackend) Del(context.Context, api.Attachment) error { return nil }
func (b *fakeBackend) Check(context.Context, api.Attachment) (api.Lease, error) {
	return api.Lease{}, api.ErrNotFound
}
func (b *fakeBackend) GC(context.Context, api.GCRequest) (api.GCResponse, error) {
	return api.GCResponse{}, nil
}
func (b *fakeBackend) Status(context.Context) (api.Status, error) {
	s := b.status
	s.LastReconcile = time.Now()
	return s, nil
}

// fakeAgent checks the flags the lab passes and serves a Status that is Ready only if
// the process really runs in its node's namespace (eth0 holds --underlay-ip).
func fakeAgent(args []string) int {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	node := fs.String("node-name", "", "")
	underlay := fs.String("underlay-ip", "", "")
	peers := fs.String("peers", "", "")
	sock := fs.String("socket", "", "")
	stateDir := fs.String("state-dir", "", "")
	claims := fs.String("claims-dir", "", "")
	keyFile := fs.String("gossip-key-file", "", "")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	for n, v := range map[string]string{"node-name": *node, "underlay-ip": *underlay, "socket": *sock, "state-dir": *stateDir, "claims-dir": *claims, "gossip-key-file": *keyFile} {
		if v == "" {
			fmt.Fprintf(os.Stderr, "fake agent: --%s missing\n", n)
			return 2
		}
	}
	key, err := os.ReadFile(*keyFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake agent:", err)
		return 2
	}
	if k, err := hex.DecodeString(string(key)); err != nil || len(k) != 32 {
		fmt.Fprintf(os.Stderr, "fake agent: gossip key is not 32 hex-encoded bytes: %q\n", key)
		return 2
	}
	if st, err := os.Stat(*claims); err != nil || !st.IsDir() {
		fmt.Fprintln(os.Stderr, "fake agent: claims dir:", err)
		return 2
	}
	ip, err := netip.ParseAddr(*underlay)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake agent:", err)
		return 2
	}
	st := api.Status{Node: *node, Underlay: ip, Version: "fake", Reason: "eth0 does not hold " + *underlay + ": wrong namespace"}
	if l, err := netlink.LinkByName("eth0"); err == nil {
		addrs, _ := netlink.AddrList(l, netlink.FAMILY_V4)
		for _, a := range addrs {
			if a.IP.Equal(ip.AsSlice()) {
				st.Ready, st.Reason = true, ""
			}
		}
	}
	// Peers named the way the lab names nodes: node<i> at 198.18.0.i.
	for _, p := range strings.Split(*peers, ",") {
		if a, err := netip.ParseAddr(p); err == nil {
			st.Peers = append(st.Peers, api.Peer{Name: fmt.Sprintf("node%d", a.As4()[3]), Underlay: a, State: "alive"})
		}
	}
	l, err := apiserver.Listen(*sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake agent:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	fmt.Fprintf(os.Stderr, "fake agent %s serving on %s (ready=%v)\n", *node, *sock, st.Ready)
	if err := apiserver.Serve(ctx, l, apiserver.NewHandler(&fakeBackend{status: st})); err != nil {
		fmt.Fprintln(os.Stderr, "fake agent:", err)
		return 1
	}
	return 0
}

type fakeConf struct {
	types.PluginConf
	Socket string `json:"socket"`
}

const fakeBridge = "fakebr"

// fakeAdd wires a pod like a simple bridge plugin, with node-local addressing
// 10.99.<node index>.0/24 and no overlay: pods reach pods on their node only.
func fakeAdd(args *skel.CmdArgs) error {
	var conf fakeConf
	if err := json.Unmarshal(args.StdinData, &conf); err != nil {
		return err
	}
	if conf.Socket == "" {
		return errors.New("fake weft-cni: no socket in the network config")
	}
	if _, err := os.Stat(conf.Socket); err != nil {
		return fmt.Errorf("fake weft-cni: agent socket: %w", err)
	}
	// The plugin runs in the node's namespace: its eth0 tells the node index.
	up, err := netlink.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("fake weft-cni: not in a node namespace: %w", err)
	}
	addrs, err := netlink.AddrList(up, netlink.FAMILY_V4)
	if err != nil || len(addrs) == 0 {
		return fmt.Errorf("fake weft-cni: node eth0 has no address: %v", err)
	}
	idx := addrs[0].IP.To4()[3]
	gw := net.IPv4(10, 99, idx, 1).To4()
	mask := net.CIDRMask(24, 32)

	br, err := netlink.LinkByName(fakeBridge)
	if err != nil {
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: fakeBridge}}); err != nil {
			return err
		}
		if br, err = netlink.LinkByName(fakeBridge); err != nil {
			return err
		}
		if err := netlink.AddrAdd(br, &netlink.Addr{IPNet: &net.IPNet{IP: gw, Mask: mask}}); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(br); err != nil {
			return err
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		return err
	}
	ports := 0
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Attrs().Index {
			ports++
		}
	}
	podIP := net.IPv4(10, 99, idx, byte(10+ports)).To4()

	podNS, err := netns.GetFromPath(args.Netns)
	if err != nil {
		return err
	}
	defer podNS.Close()
	host := hostVeth(args.ContainerID)
	if err := netlink.LinkAdd(&netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: host, MasterIndex: br.Attrs().Index},
		PeerName:      args.IfName,
		PeerNamespace: netlink.NsFd(int(podNS)),
	}); err != nil {
		return err
	}
	hl, err := netlink.LinkByName(host)
	if err != nil {
		return err
	}
	if err := netlink.LinkSetUp(hl); err != nil {
		return err
	}
	h, err := netlink.NewHandleAt(podNS)
	if err != nil {
		return err
	}
	defer h.Close()
	pl, err := h.LinkByName(args.IfName)
	if err != nil {
		return err
	}
	if err := h.AddrAdd(pl, &netlink.Addr{IPNet: &net.IPNet{IP: podIP, Mask: mask}}); err != nil {
		return err
	}
	if err := h.LinkSetUp(pl); err != nil {
		return err
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: pl.Attrs().Index, Gw: gw}); err != nil {
		return err
	}
	one := 1
	res := &types100.Result{
		CNIVersion: conf.CNIVersion,
		Interfaces: []*types100.Interface{{Name: host}, {Name: args.IfName, Sandbox: args.Netns}},
		IPs:        []*types100.IPConfig{{Interface: &one, Address: net.IPNet{IP: podIP, Mask: mask}, Gateway: gw}},
	}
	return types.PrintResult(res, conf.CNIVersion)
}

func fakeDel(args *skel.CmdArgs) error {
	l, err := netlink.LinkByName(hostVeth(args.ContainerID))
	if err != nil {
		return nil
	}
	return netlink.LinkDel(l)
}

func hostVeth(containerID string) string {
	s := sha256.Sum256([]byte(containerID))
	return "fk" + hex.EncodeToString(s[:])[:10]
}
