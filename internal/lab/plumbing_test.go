package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/testutil"
)

func TestMatrixString(t *testing.T) {
	a := netip.MustParseAddr
	m := Matrix{
		Sources: []Endpoint{{Name: "node1/pod1", Group: "node1"}, {Name: "node2/pod1", Group: "node2"}, {Name: "node1", Group: "node1"}},
		Targets: []Endpoint{{Name: "node1/pod1", Group: "node1", Addr: a("10.32.0.2")}, {Name: "node2/pod1", Group: "node2", Addr: a("10.32.0.66")}},
		Cells: [][]Cell{
			{NotTested, Unreachable},
			{Reachable, NotTested},
			{Reachable, Reachable},
		},
		Reasons: map[[2]int]string{{0, 1}: "no echo reply to 3 tries"},
	}
	s := m.String()
	t.Log("\n" + s)
	for _, want := range []string{
		"from \\ to  node1 node2\n",
		"node1/pod1 -     X    \n",
		"node2/pod1 .     -    \n",
		"node1      .     .    \n",
		"3/4 reachable, 1 unreachable",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("String() lacks %q", want)
		}
	}
	f := m.Failures()
	if len(f) != 1 || f[0].From != "node1/pod1" || f[0].To != "node2/pod1" || f[0].Addr != a("10.32.0.66") {
		t.Fatalf("Failures() = %v", f)
	}
}

func TestNames(t *testing.T) {
	for _, n := range []string{"weft-lab", "wlt-1a2b3c", "a", "my.lab_2"} {
		if err := validName(n); err != nil {
			t.Errorf("validName(%q): %v", n, err)
		}
	}
	for _, n := range []string{"", "-x", "x-", "a--b", "a/b", "lab-node1", "x-node2-y", strings.Repeat("a", 65)} {
		if validName(n) == nil {
			t.Errorf("validName(%q) accepted", n)
		}
	}
	re := labNSPattern("wlt")
	for ns, want := range map[string]bool{
		"wlt-underlay": true, "wlt-node1": true, "wlt-node12-pod3": true,
		"wlt-x-underlay": false, "wlt-node-node1": false, "wlt2-node1": false, "wlt-nodex": false,
	} {
		if re.MatchString(ns) != want {
			t.Errorf("pattern of lab wlt matches %q: %v, want %v", ns, !want, want)
		}
	}
	if underlayIP(1) != netip.MustParseAddr("198.18.0.1") || underlayIP(256) != netip.MustParseAddr("198.18.1.0") {
		t.Errorf("underlayIP: %s %s", underlayIP(1), underlayIP(256))
	}
}

// TestUnderlay builds the underlay and 3 nodes without agents and pings node to node
// over the underlay bridge with the Check machinery.
func TestUnderlay(t *testing.T) {
	testutil.RequireRoot(t)
	name, dir := newLab(t)
	ctx := context.Background()
	start := time.Now()
	l, err := Up(ctx, Options{Name: name, Dir: dir, Nodes: 3, noAgents: true, Out: testOut(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("underlay + 3 nodes in %s", time.Since(start))

	for _, n := range []string{name + "-underlay", name + "-node1", name + "-node2", name + "-node3"} {
		if !nsExists(n) || nsInode(n) == 0 {
			t.Errorf("namespace %s missing", n)
		}
	}
	var targets, sources []Endpoint
	for _, n := range l.Nodes() {
		targets = append(targets, Endpoint{Name: n.Name, Group: "underlay", NS: n.Namespace, Addr: n.Underlay})
		sources = append(sources, Endpoint{Name: n.Name, Group: "underlay", NS: n.Namespace})
		// eth0 holds the address, MTU 1500, lo up; the only routes are the connected ones.
		err := withHandle(n.Namespace, func(h *netlink.Handle) error {
			eth0, err := h.LinkByName("eth0")
			if err != nil {
				return err
			}
			if eth0.Attrs().MTU != 1500 {
				return fmt.Errorf("eth0 MTU %d", eth0.Attrs().MTU)
			}
			addrs, err := h.AddrList(eth0, netlink.FAMILY_V4)
			if err != nil || len(addrs) != 1 || addrs[0].IPNet.String() != n.Underlay.String()+"/15" {
				return fmt.Errorf("eth0 addresses %v (%v)", addrs, err)
			}
			lo, err := h.LinkByName("lo")
			if err != nil || lo.Attrs().Flags&unix.IFF_UP == 0 {
				return fmt.Errorf("lo not up (%v)", err)
			}
			routes, err := h.RouteList(nil, netlink.FAMILY_V4)
			if err != nil {
				return err
			}
			for _, r := range routes {
				if r.Dst == nil || r.Gw != nil {
					return fmt.Errorf("unexpected route %v: the underlay must not route anywhere", r)
				}
			}
			return nil
		})
		if err != nil {
			t.Errorf("%s: %v", n.Name, err)
		}
	}
	// Nothing in the root namespace.
	for _, ln := range []string{"ul0", "node1", "node2", "node3"} {
		if _, err := netlink.LinkByName(ln); err == nil {
			t.Errorf("link %s exists in the root namespace", ln)
		}
	}

	m, err := probe(ctx, sources, targets, defaultProbe)
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + m.String())
	if ok, n := m.Counts(); ok != 6 || n != 6 || len(m.Failures()) != 0 {
		t.Fatalf("node to node over the underlay: %d/%d, failures %v", ok, n, m.Failures())
	}
	// A target nobody has: reported unreachable, quickly.
	m, err = probe(ctx, sources[:1], []Endpoint{{Name: "nobody", Addr: netip.MustParseAddr("198.18.0.200")}},
		probeConfig{tries: 2, timeout: 200 * time.Millisecond, workers: 1, total: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if f := m.Failures(); len(f) != 1 {
		t.Fatalf("unknown target: failures %v", f)
	} else {
		t.Logf("expected failure: %v", f[0])
	}
	// A target that answers ICMP but drops UDP (what a broken fast path looks like):
	// unreachable, and the reason says so.
	nft := exec.Command("ip", "netns", "exec", targets[1].NS, "nft", "-f", "-")
	nft.Stdin = strings.NewReader(fmt.Sprintf("table ip udpdrop {\n chain in {\n  type filter hook input priority 0;\n  udp dport %d drop\n }\n}\n", echoPort))
	if out, err := nft.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v\n%s", err, out)
	}
	m, err = probe(ctx, sources[:1], targets[1:2], probeConfig{tries: 2, timeout: 200 * time.Millisecond, workers: 1, total: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if f := m.Failures(); len(f) != 1 || !strings.Contains(f[0].Reason, "not UDP") {
		t.Fatalf("a target dropping UDP: failures %v, want one saying UDP", f)
	}

	if err := l.Down(ctx); err != nil {
		t.Fatal(err)
	}
	assertGone(t, name, dir)
	if err := l.Down(ctx); err != nil {
		t.Fatalf("second Down: %v", err)
	}
}

// TestFakeLab runs the whole lab with the fake agent and plugin: agents start inside
// their node namespaces, pods are wired through libcni in the node namespace, the
// matrix tells intra-node (wired) from cross-node (no overlay in the fake) pairs.
func TestFakeLab(t *testing.T) {
	testutil.RequireRoot(t)
	name, dir := newLab(t)
	weft, bins := fakeBins(t)
	ctx := context.Background()
	start := time.Now()
	l, err := Up(ctx, Options{Name: name, Dir: dir, Nodes: 3, PodsPerNode: 2, WeftBin: weft, CNIBinDir: bins, Out: testOut(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("fake lab 3x2 up in %s", time.Since(start))

	// Agents run in their node's namespace, in their own session.
	for _, n := range l.Nodes() {
		link, err := os.Readlink("/proc/" + strconv.Itoa(n.PID) + "/ns/net")
		if err != nil {
			t.Fatalf("%s: agent pid %d: %v", n.Name, n.PID, err)
		}
		if want := "net:[" + strconv.FormatUint(nsInode(n.Namespace), 10) + "]"; link != want {
			t.Errorf("%s: agent in %s, want %s", n.Name, link, want)
		}
		if sid, _ := unix.Getsid(n.PID); sid != n.PID {
			t.Errorf("%s: agent session %d, want its own (%d)", n.Name, sid, n.PID)
		}
		if !isAgent(n.PID, weft, n.Socket) {
			t.Errorf("%s: isAgent false for pid %d (%q)", n.Name, n.PID, cmdline(n.PID))
		}
	}
	st, err := l.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		t.Log(s)
		if !s.Alive || s.Agent == nil || !s.Agent.Ready || s.Agent.Node != s.Node {
			t.Errorf("status %+v", s)
		}
	}
	pods := l.Pods()
	if len(pods) != 6 {
		t.Fatalf("pods %v", pods)
	}
	for _, p := range pods {
		if !p.Address.IsValid() || !nsExists(p.Namespace) || p.ContainerID != name+"-"+p.Node+"-"+p.Name {
			t.Errorf("pod %+v", p)
		}
	}
	conf, err := os.ReadFile(filepath.Join(dir, "node1", "weft.conflist"))
	if err != nil || !strings.Contains(string(conf), `"socket": "`+filepath.Join(dir, "node1", "weft.sock")+`"`) {
		t.Errorf("conflist: %s (%v)", conf, err)
	}

	// A second handle, as a separate CLI invocation would have.
	l2, err := Load(name, dir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := l2.Check(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + m.String())
	checkFakeMatrix(t, m)

	// Pods come and go.
	p, err := l2.AddPod(ctx, "node2", "extra")
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Pods()) != 6 {
		t.Errorf("first handle sees %d pods before reload", len(l.Pods()))
	}
	if _, err := l.AddPod(ctx, "node2", "extra"); err == nil {
		t.Errorf("adding pod node2/extra twice succeeded")
	}
	if len(l.Pods()) != 7 {
		t.Errorf("first handle sees %d pods after its reload, want 7", len(l.Pods()))
	}
	t.Logf("added %s at %s", p.Namespace, p.Address)
	if err := l.DelPod(ctx, "node2", "extra"); err != nil {
		t.Fatal(err)
	}
	if nsExists(p.Namespace) {
		t.Errorf("pod namespace %s left after DelPod", p.Namespace)
	}
	if err := withHandle(name+"-node2", func(h *netlink.Handle) error {
		if _, err := h.LinkByName(hostVeth(p.ContainerID)); err == nil {
			return errors.New("host veth left: CNI DEL did not run")
		}
		return nil
	}); err != nil {
		t.Error(err)
	}

	// Kill and restart an agent.
	old := l.Nodes()[1].PID
	if err := l.StopAgent("node2", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if running(old) {
		t.Errorf("agent pid %d still running after StopAgent", old)
	}
	st, _ = l.Status(ctx)
	if st[1].Alive || st[1].Agent != nil {
		t.Errorf("status of killed agent: %+v", st[1])
	}
	if err := l.StartAgent(ctx, "node2"); err != nil {
		t.Fatal(err)
	}
	if n := l.Nodes()[1]; n.PID == old || !l.agentAlive(n) {
		t.Errorf("restarted agent: %+v", n)
	}
	if err := l.StartAgent(ctx, "node2"); err == nil {
		t.Errorf("starting a running agent succeeded")
	}

	pids := []int{}
	for _, n := range l.Nodes() {
		pids = append(pids, n.PID)
	}
	if err := l.Down(ctx); err != nil {
		t.Fatal(err)
	}
	assertGone(t, name, dir)
	for _, pid := range pids {
		if running(pid) {
			t.Errorf("agent pid %d survived Down", pid)
		}
	}
}

// checkFakeMatrix: with the fake plugin, a pod reaches the pods of its node and a node
// its own pods; nothing crosses nodes.
func checkFakeMatrix(t *testing.T, m Matrix) {
	t.Helper()
	if len(m.Sources) != 9 || len(m.Targets) != 6 {
		t.Fatalf("matrix %dx%d, want 9x6", len(m.Sources), len(m.Targets))
	}
	for i, s := range m.Sources {
		for j, tg := range m.Targets {
			want := Unreachable
			switch {
			case s.Name == tg.Name:
				want = NotTested
			case s.Group == tg.Group:
				want = Reachable
			}
			if m.Cells[i][j] != want {
				t.Errorf("%s -> %s: %v, want %v", s.Name, tg.Name, m.Cells[i][j], want)
			}
		}
	}
	ok, n := m.Counts()
	if ok != 12 || n != 48 || len(m.Failures()) != 36 {
		t.Errorf("counts %d/%d, %d failures; want 12/48, 36", ok, n, len(m.Failures()))
	}
}

// TestUpRollback: an Up that fails half-way leaves nothing behind.
func TestUpRollback(t *testing.T) {
	testutil.RequireRoot(t)
	weft, bins := fakeBins(t)
	boom := errors.New("injected failure")
	for _, tc := range []struct {
		step     string
		noAgents bool
	}{
		{"underlay", true},
		{"node:node2", true},
		{"agents", false},
		{"pod:node2/pod1", false},
	} {
		t.Run(strings.ReplaceAll(tc.step, "/", "_"), func(t *testing.T) {
			name, dir := newLab(t)
			var pids []int
			_, err := Up(context.Background(), Options{
				Name: name, Dir: dir, Nodes: 3, PodsPerNode: 2, WeftBin: weft, CNIBinDir: bins, Out: testOut(t),
				noAgents: tc.noAgents,
				hook: func(s string) error {
					if s != tc.step {
						return nil
					}
					l, _ := Load(name, dir)
					for _, n := range l.Nodes() {
						pids = append(pids, n.PID)
					}
					return boom
				},
			})
			if !errors.Is(err, boom) {
				t.Fatalf("Up: %v, want the injected failure", err)
			}
			assertGone(t, name, dir)
			for _, pid := range pids {
				if pid != 0 && running(pid) {
					t.Errorf("agent pid %d survived the roll-back", pid)
				}
			}
		})
	}
}

// TestDownWithoutState: with lab.json gone, Down still finds the namespaces by name and
// the agents inside them.
func TestDownWithoutState(t *testing.T) {
	testutil.RequireRoot(t)
	name, dir := newLab(t)
	weft, bins := fakeBins(t)
	ctx := context.Background()
	l, err := Up(ctx, Options{Name: name, Dir: dir, Nodes: 2, PodsPerNode: 1, WeftBin: weft, CNIBinDir: bins, Out: testOut(t)})
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, n := range l.Nodes() {
		pids = append(pids, n.PID)
	}
	if err := os.Remove(filepath.Join(dir, stateFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(name, dir); !errors.Is(err, ErrNoState) {
		t.Fatalf("Load without lab.json: %v, want ErrNoState", err)
	}
	if err := Teardown(ctx, name, dir, testOut(t)); err != nil {
		t.Fatal(err)
	}
	assertGone(t, name, dir)
	for _, pid := range pids {
		if running(pid) {
			t.Errorf("agent pid %d survived Down without lab.json", pid)
		}
	}
	if err := Teardown(ctx, name, dir, testOut(t)); err != nil {
		t.Fatalf("second Teardown: %v", err)
	}
}

// TestStartInNS: a process started through startInNS lives in the namespace.
func TestStartInNS(t *testing.T) {
	testutil.RequireRoot(t)
	name, _ := newLab(t)
	nsName := name + "-node1"
	if err := createNS(nsName); err != nil {
		t.Fatal(err)
	}
	cmd := execCommand("sleep", "30")
	if err := startInNS(nsName, cmd); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	link, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid))
	if want := fmt.Sprintf("net:[%d]", nsInode(nsName)); link != want {
		t.Fatalf("child in %s, want %s", link, want)
	}
}
