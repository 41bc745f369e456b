package soak

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/weftnet/weft/internal/lab"
	"github.com/weftnet/weft/internal/testutil"
)

// bins holds the weft and weft-cni binaries TestMain builds.
var bins struct {
	dir, weft string
	err       error
}

func TestMain(m *testing.M) {
	if code, ok := helperDispatch(); ok {
		os.Exit(code)
	}
	code := func() int {
		if os.Geteuid() == 0 {
			dir, cleanup, err := testutil.Binaries("weft-soak-bins-")
			defer cleanup()
			bins.dir, bins.weft, bins.err = dir, filepath.Join(dir, "weft"), err
		}
		return m.Run()
	}()
	os.Exit(code)
}

// soak reports whether the full-size runs are wanted (`make soak`).
func soak() bool { return os.Getenv("WEFT_SOAK") == "1" }

// size picks the light or the soak figure.
func size(light, full int) int {
	if soak() {
		return full
	}
	return light
}

// upLab brings up a lab of nodes x pods with the real binaries; it is torn down when the
// test ends, pass or fail, and the test fails if anything of it is left.
func upLab(t *testing.T, nodes, pods int, agentArgs ...string) *lab.Lab {
	t.Helper()
	testutil.RequireRoot(t)
	if bins.err != nil {
		t.Fatalf("building the real binaries failed: %v", bins.err)
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	name := "wsk-" + hex.EncodeToString(b)
	// Not t.TempDir: the agent socket path must fit sun_path whatever the test's name.
	dir, err := os.MkdirTemp("", "wsk-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := lab.Teardown(ctx, name, dir, testOut(t)); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		assertGone(t, name, dir)
		_ = os.RemoveAll(dir)
	})
	start := time.Now()
	l, err := lab.Up(context.Background(), lab.Options{
		Name: name, Dir: dir, Nodes: nodes, PodsPerNode: pods,
		WeftBin: bins.weft, CNIBinDir: bins.dir, AgentArgs: agentArgs, Out: testOut(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("FIGURE lab up (%d nodes x %d pods) in %s", nodes, pods, time.Since(start).Round(time.Millisecond))
	return l
}

// assertGone checks that nothing of lab name is left: no namespace, no process with dir on
// its command line.
func assertGone(t *testing.T, name, dir string) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Errorf("ip netns list: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, name+"-") {
			t.Errorf("namespace left behind: %s", line)
		}
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		if c := strings.ReplaceAll(string(b), "\x00", " "); strings.Contains(c, dir+"/") && procRunning(pid) {
			t.Errorf("process left behind: pid %d: %s", pid, c)
		}
	}
}

func procRunning(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && i+2 < len(b) && b[i+2] != 'Z' && b[i+2] != 'X'
}

// mustCheck runs the lab's reachability matrix and fails the test on any failure.
func mustCheck(t *testing.T, l *lab.Lab, what string) {
	t.Helper()
	m, err := l.Check(context.Background())
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	ok, n := m.Counts()
	t.Logf("check %s: %d/%d reachable in %s", what, ok, n, m.Elapsed.Round(time.Millisecond))
	if f := m.Failures(); len(f) > 0 {
		for i, x := range f {
			if i == 10 {
				t.Errorf("... and %d more", len(f)-10)
				break
			}
			t.Errorf("%s: %v", what, x)
		}
		t.FailNow()
	}
}

// waitCheck polls the matrix until it passes or d is over.
func waitCheck(t *testing.T, l *lab.Lab, d time.Duration, what string) time.Duration {
	t.Helper()
	start := time.Now()
	var last string
	for time.Since(start) < d {
		m, err := l.Check(context.Background())
		if err == nil && len(m.Failures()) == 0 {
			return time.Since(start)
		}
		if err != nil {
			last = err.Error()
		} else {
			ok, n := m.Counts()
			last = fmt.Sprintf("%d/%d reachable, first failure %v", ok, n, m.Failures()[0])
		}
		time.Sleep(500 * time.Millisecond)
	}
	diagnose(t, l)
	t.Fatalf("%s: the matrix did not pass within %s: %s", what, d, last)
	return 0
}

// diagnose logs every agent's status and weft's kernel state on every node.
func diagnose(t *testing.T, l *lab.Lab) {
	t.Helper()
	st, err := l.Status(context.Background())
	if err != nil {
		t.Logf("status: %v", err)
	}
	for _, s := range st {
		t.Logf("status %s", s)
	}
	for _, n := range l.Nodes() {
		k, err := snapshot(l, n.Name)
		t.Logf("kernel %s (%v):\n%s", n.Name, err, k)
	}
}

// nsPath is where iproute2 (and the lab) keep named network namespaces.
func nsPath(name string) string { return filepath.Join("/run/netns", name) }

func inNS(name string, f func() error) error {
	h, err := ns.GetNS(nsPath(name))
	if err != nil {
		return err
	}
	defer h.Close()
	return h.Do(func(ns.NetNS) error { return f() })
}

func inNode(l *lab.Lab, node string, f func() error) error {
	h, err := l.NodeNS(node)
	if err != nil {
		return err
	}
	defer h.Close()
	return h.Do(func(ns.NetNS) error { return f() })
}

func node(t *testing.T, l *lab.Lab, name string) lab.Node {
	t.Helper()
	for _, n := range l.Nodes() {
		if n.Name == name {
			return n
		}
	}
	t.Fatalf("no node %s", name)
	return lab.Node{}
}

// podAddr reads the IPv4 address on eth0 inside the pod's namespace.
func podAddr(nsName string) (netip.Prefix, error) {
	var p netip.Prefix
	err := inNS(nsName, func() error {
		link, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		if len(addrs) != 1 {
			return fmt.Errorf("%d IPv4 addresses on eth0, want 1", len(addrs))
		}
		a, _ := netip.AddrFromSlice(addrs[0].IP.To4())
		bits, _ := addrs[0].Mask.Size()
		p = netip.PrefixFrom(a, bits)
		return nil
	})
	return p, err
}

// veths lists the veths in node's namespace.
func veths(l *lab.Lab, node string) ([]string, error) {
	var names []string
	err := inNode(l, node, func() error {
		links, err := netlink.LinkList()
		for _, k := range links {
			if _, ok := k.(*netlink.Veth); ok && k.Attrs().Name != "eth0" {
				names = append(names, k.Attrs().Name)
			}
		}
		return err
	})
	return names, err
}

// ipamState is the part of the agent's lease file (internal/ipam) the tests read.
type ipamState struct {
	Blocks []netip.Prefix `json:"blocks"`
	Leases []struct {
		ContainerID string       `json:"containerID"`
		Address     netip.Prefix `json:"address"`
	} `json:"leases"`
}

func readIPAM(n lab.Node) (ipamState, error) {
	var st ipamState
	b, err := os.ReadFile(filepath.Join(n.Dir, "state", "ipam.json"))
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(b, &st)
}

// poll calls f every 100ms until it returns true or d passes; it returns f's last note.
func poll(d time.Duration, f func() (bool, string)) (bool, string) {
	deadline := time.Now().Add(d)
	for {
		ok, note := f()
		if ok || time.Now().After(deadline) {
			return ok, note
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// testOut is an io.Writer to t.Log, line by line.
func testOut(t *testing.T) *logWriter { return &logWriter{t: t} }

type logWriter struct{ t *testing.T }

func (w *logWriter) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		w.t.Log(line)
	}
	return len(p), nil
}

// startInNS starts cmd with its network namespace set to nsName: the fork happens on a
// thread locked in that namespace, and the child keeps it.
func startInNS(nsName string, cmd *exec.Cmd) error {
	return inNS(nsName, cmd.Start)
}
