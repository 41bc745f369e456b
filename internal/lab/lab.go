package lab

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// DefaultName is the lab name when Options.Name is empty.
const DefaultName = "weft-lab"

// ErrNoState means the lab's lab.json is missing or unreadable: the lab is not up, or
// it was half torn down. Down still works on such a lab (see Load and Teardown).
var ErrNoState = errors.New("no lab state")

const (
	stateFile  = "lab.json"
	lockFile   = "lab.lock"
	gossipFile = "gossip.key"
	claimsDir  = "claims"
	cniCache   = "cni-cache"
	// sockMax is the longest unix socket path the kernel accepts (sun_path minus NUL).
	sockMax = 107
)

var (
	labNameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.]*(-[a-zA-Z0-9_.]+)*$`)
	nodeSegRE = regexp.MustCompile(`-node[0-9]`)
	podNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$`)
)

// Options configure Up.
type Options struct {
	// Name prefixes every namespace of the lab, so a test lab never collides with a
	// user's. Default DefaultName.
	Name string
	// Dir holds the lab's state: lab.json, per-node agent logs, state and sockets, the
	// claims directory and CNI configuration. Default /run/<Name>.
	Dir string
	// Nodes is the number of simulated nodes (node1..nodeN); PodsPerNode the pods
	// (pod1..podM) created on each.
	Nodes       int
	PodsPerNode int
	// WeftBin is the binary that runs `weft agent` (default: this executable).
	WeftBin string
	// CNIBinDir holds weft-cni (default: the directory of WeftBin). Plugins are looked
	// up in CNIBinDir, then /usr/lib/cni (the loopback plugin, if installed).
	CNIBinDir string
	// AgentArgs are appended to every agent's command line.
	AgentArgs []string
	// Out receives progress output; nil discards it.
	Out io.Writer

	// noAgents builds namespaces and links only (tests of the plumbing).
	noAgents bool
	// hook, if set, is called at each step of Up ("underlay", "node:node2", "agents",
	// "pod:node1/pod2"); an error from it fails Up there (tests of the roll-back).
	hook func(step string) error
}

// Node is one simulated node.
type Node struct {
	Name      string     `json:"name"`      // node<i>
	Index     int        `json:"index"`     // i
	Namespace string     `json:"namespace"` // <lab>-node<i>
	Underlay  netip.Addr `json:"underlay"`  // 198.18.0.0+i
	PID       int        `json:"pid,omitempty"`
	Dir       string     `json:"dir"`    // <Dir>/node<i>: agent.log, state/, weft.sock, weft.conflist
	Socket    string     `json:"socket"` // the agent's API socket
}

// Pod is one pod namespace wired by weft-cni.
type Pod struct {
	Node        string `json:"node"`
	Name        string `json:"name"`
	Namespace   string `json:"namespace"`   // <lab>-<node>-<pod>
	ContainerID string `json:"containerID"` // <lab>-<node>-<pod>
	// Address is the pod's address with its prefix length, from the CNI result; invalid
	// until CNI ADD succeeded.
	Address netip.Prefix `json:"address"`
	// HostPorts are forwarded from the node's addresses to the pod (Kubernetes' hostPort).
	HostPorts []HostPort `json:"hostPorts,omitempty"`
}

// HostPort forwards port Host of the pod's node to port Pod of the pod.
type HostPort struct {
	Protocol string `json:"protocol"` // tcp, udp or sctp
	Host     int    `json:"host"`
	Pod      int    `json:"pod"`
}

// ParseHostPort reads "8080:80" or "5353:53/udp" (host port, pod port, protocol; tcp when
// left out).
func ParseHostPort(s string) (HostPort, error) {
	ports, proto, _ := strings.Cut(s, "/")
	h := HostPort{Protocol: strings.ToLower(cmp.Or(proto, "tcp"))}
	host, pod, ok := strings.Cut(ports, ":")
	var err1, err2 error
	h.Host, err1 = strconv.Atoi(host)
	h.Pod, err2 = strconv.Atoi(pod)
	if !ok || err1 != nil || err2 != nil || h.Host < 1 || h.Host > 65535 || h.Pod < 1 || h.Pod > 65535 ||
		(h.Protocol != "tcp" && h.Protocol != "udp" && h.Protocol != "sctp") {
		return HostPort{}, fmt.Errorf("host port %q: write HOST:POD with ports 1 to 65535 and an optional /tcp, /udp or /sctp, e.g. 8080:80", s)
	}
	return h, nil
}

// state is lab.json.
type state struct {
	Name       string    `json:"name"`
	Dir        string    `json:"dir"`
	Underlay   string    `json:"underlayNamespace"`
	WeftBin    string    `json:"weftBin"`
	CNIBinDir  string    `json:"cniBinDir"`
	AgentArgs  []string  `json:"agentArgs,omitempty"`
	NodesWant  int       `json:"nodesWanted"`
	PodsWant   int       `json:"podsPerNodeWanted"`
	Created    time.Time `json:"created"`
	Nodes      []Node    `json:"nodes"`
	Pods       []Pod     `json:"pods"`
	NoAgents   bool      `json:"noAgents,omitempty"`
	GossipFile string    `json:"gossipKeyFile"`
	// NeighOrig and NeighSet are the host's neighbour table limits before and after
	// the lab raised them (nil if it did not); see neigh.go.
	NeighOrig *neighLimits `json:"neighOrig,omitempty"`
	NeighSet  *neighLimits `json:"neighSet,omitempty"`
}

// Lab is a lab that is up (or half up). Its methods are safe for concurrent use.
type Lab struct {
	mu sync.Mutex // guards st
	st state
	// saveMu orders saves: the state snapshot taken last is the one written last.
	saveMu sync.Mutex
	out    io.Writer
	hook   func(string) error
	// children maps the pid of each agent this Lab started to its *child.
	children sync.Map
}

func (o Options) withDefaults() (Options, error) {
	if o.Name == "" {
		o.Name = DefaultName
	}
	if err := validName(o.Name); err != nil {
		return o, err
	}
	if o.Dir == "" {
		o.Dir = filepath.Join("/run", o.Name)
	}
	d, err := filepath.Abs(o.Dir)
	if err != nil {
		return o, fmt.Errorf("resolving lab dir %s: %w", o.Dir, err)
	}
	o.Dir = d
	if o.Out == nil {
		o.Out = io.Discard
	}
	return o, nil
}

func validName(name string) error {
	if len(name) > 64 || !labNameRE.MatchString(name) || nodeSegRE.MatchString(name) {
		return fmt.Errorf("invalid lab name %q: use letters, digits, '_', '.' and single '-' between them, at most 64 characters, and no \"-node<digit>\" (it would look like a node namespace)", name)
	}
	return nil
}

func validPodName(name string) error {
	if len(name) > 63 || !podNameRE.MatchString(name) {
		return fmt.Errorf("invalid pod name %q: use lower-case letters, digits, '-' and '.', starting and ending with a letter or digit, at most 63 characters", name)
	}
	return nil
}

// Up builds a lab: the underlay, o.Nodes nodes each running a weft agent, and
// o.PodsPerNode pods on each node wired by weft-cni. On error it removes whatever it
// made and returns the error.
func Up(ctx context.Context, o Options) (*Lab, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	if o.Nodes < 1 || o.Nodes > maxNodes {
		return nil, fmt.Errorf("invalid node count %d: choose between 1 and %d", o.Nodes, maxNodes)
	}
	if o.PodsPerNode < 0 {
		return nil, fmt.Errorf("invalid pods per node %d: choose 0 or more", o.PodsPerNode)
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("weft lab needs root: it creates network namespaces, links and processes (run it with sudo)")
	}
	if !o.noAgents {
		if o.WeftBin == "" {
			if o.WeftBin, err = os.Executable(); err != nil {
				return nil, fmt.Errorf("finding the weft binary (set Options.WeftBin): %w", err)
			}
		}
		if o.WeftBin, err = filepath.Abs(o.WeftBin); err != nil {
			return nil, fmt.Errorf("resolving the weft binary path %s: %w", o.WeftBin, err)
		}
		if _, err := os.Stat(o.WeftBin); err != nil {
			return nil, fmt.Errorf("weft binary: %w (build it, or pass its path)", err)
		}
		if o.CNIBinDir == "" {
			o.CNIBinDir = filepath.Dir(o.WeftBin)
		}
		if o.CNIBinDir, err = filepath.Abs(o.CNIBinDir); err != nil {
			return nil, fmt.Errorf("resolving the CNI plugin directory %s: %w", o.CNIBinDir, err)
		}
		if _, err := invoke.FindInPath("weft-cni", []string{o.CNIBinDir, systemCNIDir}); err != nil {
			return nil, fmt.Errorf("the weft-cni plugin is in neither %s nor %s: put it next to the weft binary (go build -o %s ./cmd/weft-cni) or set the CNI plugin directory: %w",
				o.CNIBinDir, systemCNIDir, filepath.Join(o.CNIBinDir, "weft-cni"), err)
		}
	}
	if sock := filepath.Join(o.Dir, "node"+strconv.Itoa(o.Nodes), "weft.sock"); len(sock) > sockMax {
		return nil, fmt.Errorf("lab dir %s is too long: agent socket %s exceeds the %d bytes a unix socket path may have; choose a shorter dir", o.Dir, sock, sockMax)
	}
	if _, err := os.Stat(filepath.Join(o.Dir, stateFile)); err == nil {
		return nil, fmt.Errorf("lab %q is already up (%s exists): use it, or run %s first", o.Name, filepath.Join(o.Dir, stateFile), cli("down", o.Name, o.Dir))
	}
	left, err := labNamespaces(o.Name)
	if err != nil {
		return nil, err
	}
	if len(left) > 0 {
		return nil, fmt.Errorf("namespaces of a lab %q exist already (%v): run %s, or choose another name", o.Name, left, cli("down", o.Name, o.Dir))
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating lab dir: %w", err)
	}
	unlock, err := lockDir(o.Dir)
	if err != nil {
		return nil, err
	}
	defer unlock()

	l := &Lab{
		out:  o.Out,
		hook: o.hook,
		st: state{
			Name:       o.Name,
			Dir:        o.Dir,
			Underlay:   o.Name + "-underlay",
			WeftBin:    o.WeftBin,
			CNIBinDir:  o.CNIBinDir,
			AgentArgs:  slices.Clone(o.AgentArgs),
			NodesWant:  o.Nodes,
			PodsWant:   o.PodsPerNode,
			Created:    time.Now().UTC().Truncate(time.Second),
			NoAgents:   o.noAgents,
			GossipFile: filepath.Join(o.Dir, gossipFile),
		},
	}
	start := time.Now()
	if err := l.build(ctx); err != nil {
		l.logf("lab %s: up failed, removing what was built: %v", o.Name, err)
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		if derr := l.down(dctx); derr != nil {
			return nil, errors.Join(err, fmt.Errorf("rolling back the half-built lab also failed (run %s): %w", cli("down", o.Name, o.Dir), derr))
		}
		return nil, err
	}
	l.logf("lab %s is up: %d nodes, %d pods in %s", o.Name, len(l.st.Nodes), len(l.st.Pods), time.Since(start).Round(time.Millisecond))
	return l, nil
}

// cli is the `weft lab <sub>` command line for lab name with state in dir, with --name
// and --dir only where they differ from the defaults, for hints in messages.
func cli(sub, name, dir string) string {
	c := "weft lab " + sub
	if name != DefaultName {
		c += " --name " + name
	}
	if dir != "" && dir != filepath.Join("/run", name) {
		c += " --dir " + dir
	}
	return "`" + c + "`"
}

// cli is the command line of sub for this lab.
func (l *Lab) cli(sub string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return cli(sub, l.st.Name, l.st.Dir)
}

func (l *Lab) step(s string) error {
	if l.hook == nil {
		return nil
	}
	if err := l.hook(s); err != nil {
		return fmt.Errorf("at step %s: %w", s, err)
	}
	return nil
}

func (l *Lab) logf(format string, args ...any) {
	fmt.Fprintf(l.out, format+"\n", args...)
}

func (l *Lab) build(ctx context.Context) error {
	st := &l.st
	if err := os.MkdirAll(filepath.Join(st.Dir, claimsDir), 0o700); err != nil {
		return fmt.Errorf("creating claims dir: %w", err)
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("generating gossip key: %w", err)
	}
	if err := os.WriteFile(st.GossipFile, []byte(hex.EncodeToString(key)), 0o600); err != nil {
		return fmt.Errorf("writing gossip key: %w", err)
	}
	if err := l.save(); err != nil {
		return err
	}

	t := time.Now()
	if err := buildUnderlay(st.Underlay); err != nil {
		return err
	}
	if err := l.step("underlay"); err != nil {
		return err
	}
	for i := 1; i <= st.NodesWant; i++ {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("building nodes: %w", err)
		}
		n := l.newNode(i)
		// Record the node before building it, so a failure half-way is cleaned up.
		l.mu.Lock()
		st.Nodes = append(st.Nodes, n)
		l.mu.Unlock()
		if err := l.save(); err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Join(n.Dir, "state"), 0o700); err != nil {
			return fmt.Errorf("creating %s: %w", n.Dir, err)
		}
		if err := buildNode(st.Underlay, n); err != nil {
			return err
		}
		if !st.NoAgents {
			if err := l.writeConflist(n); err != nil {
				return err
			}
		}
		if err := l.step("node:" + n.Name); err != nil {
			return err
		}
	}
	if err := waitUnderlayUp(st.Underlay, l.Nodes()); err != nil {
		return err
	}
	l.logf("underlay %s: %d nodes on %s in %s", st.Underlay, st.NodesWant, underlayNet, time.Since(t).Round(time.Millisecond))
	if st.NoAgents {
		return nil
	}

	t = time.Now()
	for _, n := range l.Nodes() {
		if err := l.startAgent(n.Name); err != nil {
			return err
		}
	}
	if err := l.save(); err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, n := range l.Nodes() {
		g.Go(func() error { return l.waitReady(gctx, n.Name) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	l.logf("agents: %d ready in %s", st.NodesWant, time.Since(t).Round(time.Millisecond))
	if err := l.step("agents"); err != nil {
		return err
	}

	if st.PodsWant > 0 {
		pods := make([]int, st.NodesWant)
		for i := range pods {
			pods[i] = st.PodsWant
		}
		l.ensureNeighCapacity(pods)
		if err := l.save(); err != nil {
			return err
		}
		if err := l.addPods(ctx); err != nil {
			return err
		}
	}
	if err := l.WaitSettled(ctx); err != nil {
		l.logf("warning: %v; %s shows each agent's view", err, l.cli("status"))
	}
	return nil
}

func (l *Lab) addPods(ctx context.Context) error {
	st := &l.st
	t := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for _, n := range l.Nodes() {
		g.Go(func() error {
			for j := 1; j <= st.PodsWant; j++ {
				name := "pod" + strconv.Itoa(j)
				if _, err := l.addPod(gctx, n.Name, name); err != nil {
					return err
				}
				if err := l.step("pod:" + n.Name + "/" + name); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	l.logf("pods: %d added in %s", st.NodesWant*st.PodsWant, time.Since(t).Round(time.Millisecond))
	return nil
}

func (l *Lab) newNode(i int) Node {
	name := "node" + strconv.Itoa(i)
	dir := filepath.Join(l.st.Dir, name)
	return Node{
		Name:      name,
		Index:     i,
		Namespace: l.st.Name + "-" + name,
		Underlay:  underlayIP(i),
		Dir:       dir,
		Socket:    filepath.Join(dir, "weft.sock"),
	}
}

// Load finds the lab name (default DefaultName) whose state is in dir (default
// /run/<name>), for CLI invocations after the one that ran Up. If lab.json is missing or
// unreadable, Load returns an error wrapping ErrNoState together with a Lab that can
// still Down: it removes everything the lab owns by name.
func Load(name, dir string) (*Lab, error) {
	o, err := Options{Name: name, Dir: dir}.withDefaults()
	if err != nil {
		return nil, err
	}
	l := &Lab{out: io.Discard, st: state{Name: o.Name, Dir: o.Dir, Underlay: o.Name + "-underlay"}}
	if err := l.reload(); err != nil {
		return l, err
	}
	return l, nil
}

// Teardown removes lab name with state in dir (defaults as in Load), whether or not its
// lab.json survived: Load followed by Down, for `weft lab down`.
func Teardown(ctx context.Context, name, dir string, out io.Writer) error {
	l, err := Load(name, dir)
	if l == nil {
		return err
	}
	if out != nil {
		l.SetOutput(out)
	}
	if err != nil && !errors.Is(err, ErrNoState) {
		return err
	}
	return l.Down(ctx)
}

// SetOutput directs progress output to w (a loaded lab discards it).
func (l *Lab) SetOutput(w io.Writer) {
	if w == nil {
		w = io.Discard
	}
	l.mu.Lock()
	l.out = w
	l.mu.Unlock()
}

// Name is the lab's name; Dir its state directory.
func (l *Lab) Name() string { l.mu.Lock(); defer l.mu.Unlock(); return l.st.Name }

// Dir is the lab's state directory.
func (l *Lab) Dir() string { l.mu.Lock(); defer l.mu.Unlock(); return l.st.Dir }

// Nodes returns the lab's nodes in order.
func (l *Lab) Nodes() []Node {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.st.Nodes)
}

// Pods returns the lab's pods, by node, in the order they were added.
func (l *Lab) Pods() []Pod {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sortedPodsLocked()
}

func (l *Lab) sortedPodsLocked() []Pod {
	idx := map[string]int{}
	for _, n := range l.st.Nodes {
		idx[n.Name] = n.Index
	}
	pods := slices.Clone(l.st.Pods)
	slices.SortStableFunc(pods, func(a, b Pod) int { return idx[a.Node] - idx[b.Node] })
	return pods
}

func (l *Lab) node(name string) (Node, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, n := range l.st.Nodes {
		if n.Name == name {
			return n, nil
		}
	}
	var names []string
	for _, n := range l.st.Nodes {
		names = append(names, n.Name)
	}
	return Node{}, fmt.Errorf("lab %s has no node %q (nodes: %v)", l.st.Name, name, names)
}

// NodeNS opens the network namespace of node; the caller closes it.
func (l *Lab) NodeNS(node string) (ns.NetNS, error) {
	n, err := l.node(node)
	if err != nil {
		return nil, err
	}
	h, err := ns.GetNS(nsPath(n.Namespace))
	if err != nil {
		return nil, fmt.Errorf("opening the namespace of %s (is the lab up?): %w", node, err)
	}
	return h, nil
}

// save writes lab.json atomically.
func (l *Lab) save() error {
	l.saveMu.Lock()
	defer l.saveMu.Unlock()
	l.mu.Lock()
	b, err := json.MarshalIndent(l.st, "", "  ")
	dir := l.st.Dir
	l.mu.Unlock()
	if err != nil {
		return fmt.Errorf("encoding lab state: %w", err)
	}
	tmp, err := os.CreateTemp(dir, stateFile+".*")
	if err != nil {
		return fmt.Errorf("writing lab state: %w", err)
	}
	_, err = tmp.Write(append(b, '\n'))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(dir, stateFile))
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("writing lab state: %w", err)
	}
	return nil
}

// reload replaces the in-memory state with lab.json, so separate CLI invocations see
// each other's changes.
func (l *Lab) reload() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := filepath.Join(l.st.Dir, stateFile)
	b, err := os.ReadFile(p)
	if err != nil {
		return fmt.Errorf("%w: %v (is lab %s up? start it with %s)", ErrNoState, err, l.st.Name, cli("up", l.st.Name, l.st.Dir))
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("%w: %s is corrupt: %v (run %s to remove the lab by name)", ErrNoState, p, err, cli("down", l.st.Name, l.st.Dir))
	}
	if st.Name != l.st.Name {
		return fmt.Errorf("%w: %s belongs to lab %q, not %q (pass the matching name and dir)", ErrNoState, p, st.Name, l.st.Name)
	}
	st.Dir = l.st.Dir
	if st.Underlay == "" {
		st.Underlay = st.Name + "-underlay"
	}
	l.st = st
	return nil
}

// lockDir takes an exclusive lock on the lab dir against concurrent CLI invocations.
// If dir does not exist there is nothing to protect and the lock is a no-op.
func lockDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return func() {}, nil
		}
		return nil, fmt.Errorf("opening lab lock: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", f.Name(), err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("another weft lab command holds %s for over 2 minutes; wait for it or kill it", f.Name())
		case <-time.After(50 * time.Millisecond):
		}
	}
	return func() { f.Close() }, nil
}

// mutate runs f under the lab lock on the freshest state; used by the public methods
// that change the lab, which separate CLI invocations may run at the same time.
func (l *Lab) mutate(f func() error) error {
	unlock, err := lockDir(l.Dir())
	if err != nil {
		return err
	}
	defer unlock()
	if err := l.reload(); err != nil {
		return err
	}
	return f()
}
