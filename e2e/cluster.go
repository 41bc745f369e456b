package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
)

// Cluster is a running Kubernetes cluster of Nodes; Nodes[0] is the control plane.
type Cluster struct {
	cfg        Config
	Nodes      []*Node
	pki        *PKI
	resolvConf string
	testImage  string // tarball with TestImage and the sandbox image
	Netcheck   string // the netcheck binary, for checks run from the machine side

	etcd, apiserver, controllerManager, scheduler *Daemon
	createdDirs                                   []string // mount points made on the machine
	cgroupsBefore                                 map[string]bool
	downOnce                                      sync.Once
	downErr                                       error
	containers                                    struct {
		sync.Mutex
		ids map[string]bool // every container the nodes' containerd had, for removeCgroups
	}
}

// NewCluster returns a cluster to be made by Up.
func NewCluster(cfg Config) *Cluster {
	c := &Cluster{cfg: cfg}
	c.containers.ids = map[string]bool{}
	return c
}

// Up builds the cluster: namespaces, control plane, and every node's containerd (with
// the test images), kubelet and kube-proxy. It returns once every node is registered.
// Call Down when done, also when Up failed: it removes whatever Up got to make.
func (c *Cluster) Up(logf func(string, ...any)) error {
	cfg := c.cfg
	if err := BecomeSubreaper(); err != nil {
		return fmt.Errorf("becoming a child subreaper: %w", err)
	}
	if err := Sweep(cfg.WorkDir); err != nil {
		return fmt.Errorf("removing what an earlier run left: %w", err)
	}
	c.cgroupsBefore = existingCgroupParents()
	if err := os.MkdirAll(cfg.WorkDir, 0o755); err != nil {
		return err
	}
	var err error
	if c.createdDirs, err = ensureMountPoints(); err != nil {
		return err
	}
	for i := 0; i < cfg.Nodes; i++ {
		name := fmt.Sprintf("w%d", i)
		if i == 0 {
			name = "cp"
		}
		n := &Node{Name: name, IP: nodeIP(i), NS: nsPrefix + name, Dir: filepath.Join(cfg.WorkDir, name)}
		if err := os.MkdirAll(n.Dir, 0o755); err != nil {
			return err
		}
		c.Nodes = append(c.Nodes, n)
	}
	cp := c.Nodes[0]

	logf("building the test image")
	if c.Netcheck, err = buildNetcheck(cfg.WorkDir); err != nil {
		return err
	}
	c.testImage = filepath.Join(cfg.WorkDir, "test-images.tar")
	if err := writeTestImages(c.Netcheck, c.testImage); err != nil {
		return err
	}
	if c.pki, err = NewPKI(filepath.Join(cfg.WorkDir, "pki"), cp.IP, serviceIP); err != nil {
		return err
	}
	c.pki.Kubeconfigs = map[string]string{"admin": filepath.Join(cfg.WorkDir, "admin.kubeconfig")}
	if err := c.pki.WriteKubeconfig(c.pki.Kubeconfigs["admin"], "https://"+cp.IP+":6443"); err != nil {
		return err
	}
	c.resolvConf = filepath.Join(cfg.WorkDir, "resolv.conf")
	if err := os.WriteFile(c.resolvConf, []byte("nameserver 127.0.0.1\n"), 0o644); err != nil {
		return err
	}

	logf("creating the underlay and %d node namespaces", len(c.Nodes))
	if err := createUnderlay(); err != nil {
		return err
	}
	for _, n := range c.Nodes {
		if err := createNodeNetns(n); err != nil {
			return err
		}
		if err := startHolder(n); err != nil {
			return err
		}
	}

	logf("starting the control plane")
	if err := c.startEtcd(); err != nil {
		return err
	}
	if err := c.StartAPIServer(); err != nil {
		return err
	}
	if err := c.startControllers(); err != nil {
		return err
	}

	logf("starting containerd on every node and importing the test images")
	var g errgroup.Group
	for _, n := range c.Nodes {
		g.Go(func() error { return c.startRuntime(n) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	logf("starting kubelet and kube-proxy on every node")
	for _, n := range c.Nodes {
		if err := c.startKubelet(n); err != nil {
			return err
		}
	}
	return poll("every node registered", 3*time.Minute, 2*time.Second, func() error {
		for _, n := range c.Nodes {
			if n.kubelet.Exited() {
				return fmt.Errorf("%s: kubelet exited:\n%s", n.Name, n.kubelet.Tail(20))
			}
		}
		nodes, err := c.GetNodes()
		if err != nil {
			return err
		}
		if len(nodes) != len(c.Nodes) {
			return fmt.Errorf("%d of %d registered", len(nodes), len(c.Nodes))
		}
		return nil
	})
}

// Down kills every process the cluster made, removes its namespaces, mount points and work
// directory. It is safe on a half-built cluster, and only the first call does anything.
func (c *Cluster) Down() error {
	c.downOnce.Do(func() { c.downErr = c.down() })
	return c.downErr
}

func (c *Cluster) down() error {
	var errs []error
	// Graceful stops first for the daemons that clean up after themselves.
	for _, n := range c.Nodes {
		n.kubelet.Stop(5 * time.Second)
		n.proxy.Stop(5 * time.Second)
	}
	c.cleanupContainers()
	if err := killEverything(); err != nil {
		errs = append(errs, err)
	}
	c.containers.Lock()
	removeCgroups(c.containers.ids, c.cgroupsBefore)
	c.containers.Unlock()
	c.keepLogs()
	for _, ns := range ourNamespaces() {
		if err := ip("netns", "del", ns); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(c.cfg.WorkDir); err != nil {
		errs = append(errs, err)
	}
	removeMountPoints(c.createdDirs)
	return errors.Join(errs...)
}

// cleanupContainers asks each node's containerd to kill and delete its containers, so
// runc removes their cgroups (processes killed behind its back would leave them behind).
func (c *Cluster) cleanupContainers() {
	var g errgroup.Group
	for _, n := range c.Nodes {
		g.Go(func() error { c.drainNode(n); return nil })
	}
	g.Wait()
}

// drainNode kills and deletes the node's containers through its containerd (the kubelet
// must be stopped first, or it starts them again) and records their ids.
func (c *Cluster) drainNode(n *Node) {
	if n.containerd == nil || n.containerd.Exited() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ctr := []string{"ctr", "--address", n.socket(), "-n", "k8s.io"}
	ids, _ := run(ctx, append(ctr, "containers", "ls", "-q")...)
	c.containers.Lock()
	for _, id := range trimLines(ids) {
		c.containers.ids[id] = true
	}
	c.containers.Unlock()
	tasks, _ := run(ctx, append(ctr, "tasks", "ls", "-q")...)
	for _, id := range trimLines(tasks) {
		run(ctx, append(ctr, "tasks", "kill", "-a", "-s", "SIGKILL", id)...)
	}
	for _, id := range trimLines(tasks) {
		run(ctx, append(ctr, "tasks", "delete", "-f", id)...)
	}
}

// killEverything kills every descendant of the test process (the subreaper) and every
// process left in one of the harness's namespaces.
func killEverything() error {
	roots := []int{os.Getpid()}
	for _, ns := range ourNamespaces() {
		roots = append(roots, pidsInNetns(netnsPath(ns))...)
	}
	procs := readProcs()
	pids := descendants(procs, roots...)
	for _, p := range roots[1:] {
		pids = append(pids, p)
	}
	return KillAll(pids)
}

// Sweep removes what a run killed before its teardown left: processes in the harness's
// namespaces (and their descendants), the namespaces, and the work directory.
func Sweep(workDir string) error {
	nss := ourNamespaces()
	var roots []int
	for _, ns := range nss {
		roots = append(roots, pidsInNetns(netnsPath(ns))...)
	}
	if err := KillAll(roots); err != nil {
		return err
	}
	var errs []error
	for _, ns := range nss {
		if err := ip("netns", "del", ns); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(workDir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (c *Cluster) keepLogs() {
	if c.cfg.KeepLogs == "" {
		return
	}
	filepath.Walk(c.cfg.WorkDir, func(path string, info os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		if info.IsDir() && path != c.cfg.WorkDir && filepath.Base(path) == "root" {
			return filepath.SkipDir
		}
		if !info.IsDir() && strings.HasSuffix(path, ".log") {
			rel, _ := filepath.Rel(c.cfg.WorkDir, path)
			dst := filepath.Join(c.cfg.KeepLogs, rel)
			os.MkdirAll(filepath.Dir(dst), 0o755)
			copyFile(path, dst, 0o644)
		}
		return nil
	})
}

// Kubectl runs kubectl (from the control plane's network namespace) with the admin
// credentials and returns its stdout.
func (c *Cluster) Kubectl(args ...string) (string, error) {
	return runShort(c.kubectlArgv(args...)...)
}

func (c *Cluster) kubectlArgv(args ...string) []string {
	return append([]string{"nsenter", "--net=" + netnsPath(c.Nodes[0].NS), "--",
		c.cfg.bin("kubectl"), "--kubeconfig=" + c.pki.Kubeconfigs["admin"]}, args...)
}

// KubectlJSON runs `kubectl ... -o json` and decodes the output into v.
func (c *Cluster) KubectlJSON(v any, args ...string) error {
	out, err := c.Kubectl(append(args, "-o", "json")...)
	if err != nil {
		return err
	}
	return json.Unmarshal([]byte(out), v)
}

// Diagnose returns what helps to understand a failure: the cluster's objects and the tail
// of every daemon's log.
func (c *Cluster) Diagnose() string {
	var b strings.Builder
	if c.pki != nil && len(c.Nodes) > 0 {
		for _, args := range [][]string{
			{"get", "nodes", "-o", "wide"},
			{"get", "pods", "-A", "-o", "wide"},
			{"get", "leases", "-n", "kube-system"},
			{"describe", "ds", "-n", "kube-system", "weft"},
			{"logs", "-n", "kube-system", "-l", "app.kubernetes.io/name=weft", "--tail=30", "--prefix", "--all-containers"},
			{"get", "events", "-A", "--sort-by=.lastTimestamp"},
		} {
			out, err := c.Kubectl(args...)
			fmt.Fprintf(&b, "$ kubectl %s\n%s%v\n", strings.Join(args, " "), out, errOrEmpty(err))
		}
	}
	for _, d := range []*Daemon{c.etcd, c.apiserver, c.controllerManager, c.scheduler} {
		if d != nil {
			fmt.Fprintf(&b, "--- %s (%s)\n%s\n", d.Name, d.Log, d.Tail(15))
		}
	}
	for _, n := range c.Nodes {
		for _, d := range []*Daemon{n.containerd, n.kubelet, n.proxy} {
			if d != nil {
				fmt.Fprintf(&b, "--- %s (%s)\n%s\n", d.Name, d.Log, d.Tail(15))
			}
		}
	}
	return b.String()
}

func errOrEmpty(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
