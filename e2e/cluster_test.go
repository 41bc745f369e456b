//go:build e2e

package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCluster is issue 3's proof: a real cluster on one machine, weft installed with one
// `kubectl apply`, and the pod network checked the way users depend on it. The steps build
// on each other; a failing prerequisite stops the test (and the cluster is torn down).
func TestCluster(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root (network and mount namespaces)")
	}
	cfg, err := FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	wall := time.Now()
	c := NewCluster(cfg)
	// Ctrl-C or a kill: tear down before exiting (t.Cleanup would not run). A test killed
	// harder (SIGKILL, go test's -timeout) leaves orphans that the next run sweeps.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		if s, ok := <-sig; ok {
			fmt.Fprintf(os.Stderr, "e2e: %v: tearing the cluster down\n", s)
			c.Down()
			os.Exit(1)
		}
	}()
	err = c.Up(t.Logf)
	t.Cleanup(func() {
		signal.Stop(sig)
		if t.Failed() {
			t.Logf("diagnostics:\n%s", c.Diagnose())
		}
		start := time.Now()
		if err := c.Down(); err != nil {
			t.Errorf("teardown: %v", err)
		}
		t.Logf("teardown took %s", time.Since(start).Round(time.Second))
		t.Logf("e2e wall time (cluster up to torn down): %s", time.Since(wall).Round(time.Second))
	})
	if err != nil {
		t.Fatalf("cluster up: %v", err)
	}
	t.Logf("cluster of %d nodes up in %s", len(c.Nodes), time.Since(wall).Round(time.Second))

	s := &suite{c: c}
	step := func(name string, f func(t *testing.T)) {
		if !t.Run(name, f) {
			t.FailNow()
		}
	}
	step("NodesNotReadyBeforeWeft", s.nodesNotReadyBeforeWeft)
	step("InstallWeft", s.installWeft)
	step("SpreadDeployment", s.spreadDeployment)
	t.Run("PodToPod", s.podToPod)
	t.Run("HostPort", s.hostPort)
	t.Run("ServiceClusterIP", s.serviceClusterIP)
	step("StartStream", s.startStream)
	t.Run("RollingRestartKeepsStream", s.rollingRestartKeepsStream)
	t.Run("APIServerDownKeepsTraffic", s.apiServerDown)
	t.Run("DeleteNodeReclaimsBlocks", s.deleteNode)
}

type suite struct {
	c    *Cluster
	pods []PodInfo // the spread Deployment's pods, one per node
	// The stream: a client pod on one worker to a server pod on another.
	streamClient string
}

func (s *suite) nodesNotReadyBeforeWeft(t *testing.T) {
	nodes, err := s.c.GetNodes()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		r := n.Condition("Ready")
		t.Logf("%s: Ready=%s %s", n.Metadata.Name, r.Status, r.Message)
		if r.Status == "True" {
			t.Errorf("node %s is Ready before any CNI is installed", n.Metadata.Name)
		}
	}
}

func (s *suite) installWeft(t *testing.T) {
	c := s.c
	start := time.Now()
	for _, n := range c.Nodes {
		if err := c.ImportImage(n, c.cfg.WeftImage); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("imported %s into %d nodes in %s", c.cfg.WeftImage, len(c.Nodes), time.Since(start).Round(100*time.Millisecond))

	applied := time.Now()
	if out, err := c.Kubectl("apply", "-f", c.cfg.Manifest); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("kubectl apply -f %s:\n%s", c.cfg.Manifest, out)
	}
	err := poll("all nodes Ready", 4*time.Minute, time.Second, func() error { return c.nodesReady(c.NodeNames()) })
	if err != nil {
		t.Fatal(err)
	}
	ready := time.Since(applied)
	t.Logf("FIGURE time from kubectl apply to all %d nodes Ready: %s", len(c.Nodes), ready.Round(100*time.Millisecond))

	n := len(c.Nodes)
	err = poll("DaemonSet weft complete", 3*time.Minute, time.Second, func() error {
		ds, err := c.GetDaemonSet("kube-system", "weft")
		if err != nil {
			return err
		}
		st := ds.Status
		if st.DesiredNumberScheduled != n || st.CurrentNumberScheduled != n || st.NumberReady != n {
			return fmt.Errorf("DESIRED=%d CURRENT=%d READY=%d, want %d", st.DesiredNumberScheduled, st.CurrentNumberScheduled, st.NumberReady, n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("FIGURE time from kubectl apply to DaemonSet DESIRED=CURRENT=READY=%d: %s", n, time.Since(applied).Round(100*time.Millisecond))
	// What a user sees after the install (the README quotes it).
	for _, args := range [][]string{{"get", "ds", "-n", "kube-system"}, {"get", "nodes"}} {
		if out, err := c.Kubectl(args...); err == nil {
			t.Logf("$ kubectl %s\n%s", strings.Join(args, " "), out)
		}
	}
	for _, nd := range mustNodes(t, c) {
		if cond := nd.Condition("NetworkUnavailable"); cond.Status != "False" {
			t.Errorf("%s: NetworkUnavailable=%s (%s), want False", nd.Metadata.Name, cond.Status, cond.Reason)
		}
	}
}

func mustNodes(t *testing.T, c *Cluster) []NodeInfo {
	t.Helper()
	nodes, err := c.GetNodes()
	if err != nil {
		t.Fatal(err)
	}
	return nodes
}

func (s *suite) spreadDeployment(t *testing.T) {
	c := s.c
	if err := c.Apply(spreadDeployment(len(c.Nodes))); err != nil {
		t.Fatal(err)
	}
	err := poll("netcheck pods Ready on every node", 3*time.Minute, time.Second, func() error {
		pods, err := c.GetPods("default", "app=netcheck")
		if err != nil {
			return err
		}
		on := map[string]bool{}
		var ready []PodInfo
		for _, p := range pods {
			if p.Ready() && p.Status.PodIP != "" {
				on[p.Spec.NodeName] = true
				ready = append(ready, p)
			}
		}
		if len(ready) != len(c.Nodes) || len(on) != len(c.Nodes) {
			return fmt.Errorf("%d pods Ready on %d nodes", len(ready), len(on))
		}
		s.pods = ready
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	clusterCIDR := netip.MustParsePrefix(clusterCIDR)
	for _, p := range s.pods {
		t.Logf("pod %s on %s: %s", p.Metadata.Name, p.Spec.NodeName, p.Status.PodIP)
		if a, err := netip.ParseAddr(p.Status.PodIP); err != nil || !clusterCIDR.Contains(a) {
			t.Errorf("pod %s: address %s not in the cluster CIDR %s", p.Metadata.Name, p.Status.PodIP, clusterCIDR)
		}
	}
}

// podAddrs returns IP:8080 of every spread pod, and the pod name expected to answer.
func (s *suite) podAddrs() (addrs []string, names map[string]string) {
	names = map[string]string{}
	for _, p := range s.pods {
		a := p.Status.PodIP + ":8080"
		addrs = append(addrs, a)
		names[a] = p.Metadata.Name
	}
	return addrs, names
}

// checkConnectOutput checks `netcheck connect` output: every address answered by the right pod.
func checkConnectOutput(out string, names map[string]string) error {
	var bad []string
	seen := map[string]bool{}
	for _, l := range trimLines(out) {
		f := strings.Fields(l)
		if len(f) >= 3 && f[1] == "ok" && names[f[0]] == f[2] {
			seen[f[0]] = true
		} else {
			bad = append(bad, l)
		}
	}
	for a := range names {
		if !seen[a] {
			bad = append(bad, a+" not answered by "+names[a])
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("%s", strings.Join(bad, "; "))
	}
	return nil
}

func (s *suite) podToPod(t *testing.T) {
	addrs, names := s.podAddrs()
	for _, p := range s.pods {
		out, err := s.c.Kubectl(append([]string{"exec", "-n", "default", p.Metadata.Name, "--", "/netcheck", "connect"}, addrs...)...)
		if err == nil {
			err = checkConnectOutput(out, names)
		}
		if err != nil {
			t.Errorf("from %s (%s): %v\n%s", p.Metadata.Name, p.Spec.NodeName, err, out)
			continue
		}
		t.Logf("from %s on %s: all %d pods answered", p.Metadata.Name, p.Spec.NodeName, len(addrs))
	}
	// The agents run the BPF fast path (the DaemonSet's default): its filter is on every
	// node's VXLAN device. An agent loads it once it has joined, so it may still be on
	// its way.
	for _, n := range s.c.Nodes {
		err := poll("the fast-path filter on "+n.Name+"'s weft-vxlan", 30*time.Second, 200*time.Millisecond, func() error {
			out, err := runShort("nsenter", "--net="+netnsPath(n.NS), "--", "tc", "filter", "show", "dev", "weft-vxlan", "ingress")
			if err == nil && !strings.Contains(out, "weft-fastpath") {
				err = fmt.Errorf("not there:\n%s", out)
			}
			return err
		})
		if err != nil {
			t.Errorf("node %s: %v", n.Name, err)
		}
	}
}

// serviceIPAddr is the ClusterIP of the spread pods' Service (inside serviceCIDR).
const serviceIPAddr = "10.96.100.100"

// serviceClusterIP: every spread pod reaches the spread pods through a ClusterIP Service,
// kube-proxy's DNAT. The replies of those connections must be un-DNATed by conntrack on the
// client's node, so weft's fast path must leave them to netfilter: whether the backend is
// on another node (the reply comes through the tunnel) or on the client's own bridge.
func (s *suite) serviceClusterIP(t *testing.T) {
	c := s.c
	if err := c.Apply(clusterIPService("netcheck", serviceIPAddr, "app: netcheck")); err != nil {
		t.Fatal(err)
	}
	target := serviceIPAddr + ":80"
	names := map[string]bool{}
	for _, p := range s.pods {
		names[p.Metadata.Name] = true
	}
	// kube-proxy programs the Service within a few seconds.
	first := s.pods[0].Metadata.Name
	err := poll("the Service answers", time.Minute, time.Second, func() error {
		_, err := c.Kubectl("exec", "-n", "default", first, "--", "/netcheck", "connect", "-attempts", "1", target)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	const tries = 15 // per client: with 3 backends chosen at random, all of them answer
	answered := map[string]bool{}
	for _, p := range s.pods {
		args := []string{"exec", "-n", "default", p.Metadata.Name, "--", "/netcheck", "connect", "-attempts", "1"}
		for range tries {
			args = append(args, target)
		}
		out, err := c.Kubectl(args...)
		var bad []string
		for _, l := range trimLines(out) {
			f := strings.Fields(l)
			if len(f) >= 3 && f[0] == target && f[1] == "ok" && names[f[2]] {
				answered[f[2]] = true
			} else {
				bad = append(bad, l)
			}
		}
		if err != nil || len(bad) > 0 {
			t.Errorf("from %s on %s through %s: %v\n%s", p.Metadata.Name, p.Spec.NodeName, target, err, out)
			continue
		}
		t.Logf("from %s on %s: %d connections through the Service, all answered", p.Metadata.Name, p.Spec.NodeName, tries)
	}
	if len(answered) != len(names) {
		t.Errorf("only %d of %d backends answered through the Service: %v", len(answered), len(names), answered)
	}
}

const hostPort = 18080

func (s *suite) hostPort(t *testing.T) {
	c := s.c
	node := c.Nodes[1]
	if err := c.Apply(barePod("hostport", node.Name, hostPort, "serve")); err != nil {
		t.Fatal(err)
	}
	err := poll("pod hostport Ready", 2*time.Minute, time.Second, func() error {
		pods, err := c.GetPods("default", "app=hostport")
		if err != nil || len(pods) != 1 || !pods[0].Ready() {
			return fmt.Errorf("not Ready (%v)", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	target := fmt.Sprintf("%s:%d", node.IP, hostPort)
	want := map[string]string{target: "hostport"}
	// From every node (its own network namespace: the node itself and the others, over
	// the underlay) and from every pod (on other nodes, and on the same bridge).
	for _, n := range c.Nodes {
		out, err := runShort("nsenter", "--net="+netnsPath(n.NS), "--", c.Netcheck, "connect", target)
		if err == nil {
			err = checkConnectOutput(out, want)
		}
		if err != nil {
			t.Errorf("from node %s to %s: %v", n.Name, target, err)
		} else {
			t.Logf("node %s -> %s answered by the hostPort pod", n.Name, target)
		}
	}
	for _, p := range s.pods {
		out, err := c.Kubectl("exec", "-n", "default", p.Metadata.Name, "--", "/netcheck", "connect", target)
		if err == nil {
			err = checkConnectOutput(out, want)
		}
		if err != nil {
			t.Errorf("from pod %s (%s) to %s: %v", p.Metadata.Name, p.Spec.NodeName, target, err)
		} else {
			t.Logf("pod %s (%s) -> %s answered by the hostPort pod", p.Metadata.Name, p.Spec.NodeName, target)
		}
	}
}

// startStream starts a pod on the first worker holding one TCP connection to the spread
// pod on the last worker.
func (s *suite) startStream(t *testing.T) {
	c := s.c
	client, server := c.Nodes[1].Name, c.Nodes[len(c.Nodes)-1].Name
	var target PodInfo
	for _, p := range s.pods {
		if p.Spec.NodeName == server {
			target = p
		}
	}
	s.streamClient = "stream"
	if err := c.Apply(barePod(s.streamClient, client, 0, "stream", target.Status.PodIP+":8080")); err != nil {
		t.Fatal(err)
	}
	err := poll("stream running", 2*time.Minute, time.Second, func() error {
		st, err := s.streamStatus()
		if err != nil {
			return err
		}
		if st.State != "ok" || st.Sent < 5 {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stream %s (%s) -> %s (%s) established", s.streamClient, client, target.Metadata.Name, server)
}

func (s *suite) streamStatus() (StreamStatus, error) {
	out, err := s.c.Kubectl("logs", "-n", "default", s.streamClient, "--tail=3")
	if err != nil {
		return StreamStatus{}, err
	}
	return parseStream(out)
}

// streamAlive checks that the stream pod still runs, on the same connection, and that it
// has made progress since before.
func (s *suite) streamAlive(t *testing.T, before StreamStatus) StreamStatus {
	t.Helper()
	var st StreamStatus
	err := poll("stream progressing", 30*time.Second, time.Second, func() error {
		var err error
		if st, err = s.streamStatus(); err != nil {
			return err
		}
		if st.State != "ok" {
			return fmt.Errorf("stream %+v", st)
		}
		if st.Local != before.Local || st.Sent <= before.Sent+10 {
			return fmt.Errorf("stream %+v, before %+v", st, before)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	pods, err := s.c.GetPods("default", "app="+s.streamClient)
	if err != nil || len(pods) != 1 || pods[0].Status.Phase != "Running" || pods[0].Restarts() != 0 {
		t.Errorf("stream pod not running unbroken: %v %+v", err, pods)
	}
	return st
}

func (s *suite) rollingRestartKeepsStream(t *testing.T) {
	c := s.c
	before, err := s.streamStatus()
	if err != nil {
		t.Fatal(err)
	}
	oldPods, err := c.GetPods("kube-system", "app.kubernetes.io/name=weft")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := c.Kubectl("rollout", "restart", "ds/weft", "-n", "kube-system"); err != nil {
		t.Fatal(err)
	}
	if out, err := c.Kubectl("rollout", "status", "ds/weft", "-n", "kube-system", "--timeout=50s"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Logf("FIGURE rolling restart of %d weft pods took %s", len(c.Nodes), time.Since(start).Round(100*time.Millisecond))
	newPods, err := c.GetPods("kube-system", "app.kubernetes.io/name=weft")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range newPods {
		if slices.ContainsFunc(oldPods, func(o PodInfo) bool { return o.Metadata.Name == p.Metadata.Name }) {
			t.Errorf("weft pod %s was not replaced", p.Metadata.Name)
		}
	}
	after := s.streamAlive(t, before)
	t.Logf("FIGURE stream across the rolling restart: alive, %d -> %d messages, longest gap %d ms", before.Sent, after.Sent, after.MaxGapMs)
}

func (s *suite) apiServerDown(t *testing.T) {
	c := s.c
	before, err := s.streamStatus()
	if err != nil {
		t.Fatal(err)
	}
	addrs, names := s.podAddrs()
	pids := map[string]int{}
	for _, p := range s.pods {
		pid, err := podProcess(p.Metadata.Name)
		if err != nil {
			t.Fatal(err)
		}
		pids[p.Metadata.Name] = pid
	}
	const outage = 30 * time.Second
	down := time.Now()
	c.StopAPIServer()
	t.Logf("kube-apiserver stopped (took %s)", time.Since(down).Round(100*time.Millisecond))
	restarted := false
	defer func() {
		if !restarted {
			if err := c.StartAPIServer(); err != nil {
				t.Errorf("restarting kube-apiserver: %v", err)
			}
		}
	}()
	// Pod to pod while the API server is away: from each pod's network namespace,
	// entered from the machine (kubectl exec needs the API server).
	for round := 1; time.Since(down) < outage-5*time.Second && round <= 3; round++ {
		for _, p := range s.pods {
			argv := append([]string{"nsenter", "--net=/proc/" + strconv.Itoa(pids[p.Metadata.Name]) + "/ns/net", "--", c.Netcheck, "connect"}, addrs...)
			out, err := runShort(argv...)
			if err == nil {
				err = checkConnectOutput(out, names)
			}
			if err != nil {
				t.Errorf("API server down %s: from %s: %v", time.Since(down).Round(time.Second), p.Metadata.Name, err)
			}
		}
		t.Logf("API server down %s: every pod reached every pod", time.Since(down).Round(time.Second))
		time.Sleep(8 * time.Second)
	}
	if _, err := c.Kubectl("get", "--raw", "/readyz"); err == nil {
		t.Errorf("the API server still answers")
	}
	time.Sleep(time.Until(down.Add(outage)))
	restarted = true
	if err := c.StartAPIServer(); err != nil {
		t.Fatalf("restarting kube-apiserver: %v", err)
	}
	t.Logf("kube-apiserver back after %s", time.Since(down).Round(time.Second))
	after := s.streamAlive(t, before)
	t.Logf("FIGURE stream across %s without API server: alive, %d -> %d messages, longest gap %d ms", outage, before.Sent, after.Sent, after.MaxGapMs)

	// A pod created after the outage gets an address and reaches the others.
	if err := c.Apply(barePod("late", c.Nodes[1].Name, 0, "serve")); err != nil {
		t.Fatal(err)
	}
	err = poll("pod late Ready", 2*time.Minute, time.Second, func() error {
		pods, err := c.GetPods("default", "app=late")
		if err != nil || len(pods) != 1 || !pods[0].Ready() {
			return fmt.Errorf("not Ready (%v)", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	out, err := c.Kubectl(append([]string{"exec", "-n", "default", "late", "--", "/netcheck", "connect"}, addrs...)...)
	if err == nil {
		err = checkConnectOutput(out, names)
	}
	if err != nil {
		t.Errorf("from the new pod: %v\n%s", err, out)
	} else {
		t.Logf("a pod created after the outage reaches all %d pods", len(addrs))
	}
	s.uniquePodIPs(t)
	final := s.streamAlive(t, after)
	t.Logf("stream still alive after the new pod: %d messages", final.Sent)
}

// uniquePodIPs checks that no two running pods (hostNetwork ones aside) share an address.
func (s *suite) uniquePodIPs(t *testing.T) {
	t.Helper()
	pods, err := s.c.GetPods("", "")
	if err != nil {
		t.Fatal(err)
	}
	owner := map[string]string{}
	for _, p := range pods {
		if p.Status.Phase != "Running" || p.Status.PodIP == "" || p.Status.PodIP == p.Status.HostIP {
			continue
		}
		if o, dup := owner[p.Status.PodIP]; dup {
			t.Errorf("pods %s and %s share the address %s", o, p.Metadata.Name, p.Status.PodIP)
		}
		owner[p.Status.PodIP] = p.Metadata.Name
	}
}

func (s *suite) deleteNode(t *testing.T) {
	c := s.c
	gone := c.Nodes[len(c.Nodes)-1]
	var goneIP netip.Addr
	for _, p := range s.pods {
		if p.Spec.NodeName == gone.Name {
			goneIP = netip.MustParseAddr(p.Status.PodIP)
		}
	}
	blocks, err := c.Blocks()
	if err != nil {
		t.Fatal(err)
	}
	var held []string
	for _, b := range blocks {
		if b.Holder == gone.Name {
			held = append(held, b.CIDR)
		}
	}
	if len(held) == 0 {
		t.Fatalf("%s holds no block (claims: %+v)", gone.Name, blocks)
	}
	others := slices.DeleteFunc(slices.Clone(c.Nodes), func(n *Node) bool { return n == gone })
	routed := func(n *Node) (bool, error) {
		routes, err := c.VXLANRoutes(n)
		if err != nil {
			return false, err
		}
		return slices.ContainsFunc(routes, func(p netip.Prefix) bool { return p.Contains(goneIP) }), nil
	}
	for _, n := range others {
		if ok, err := routed(n); err != nil || !ok {
			t.Fatalf("%s: no route to %s's pod %s before the deletion (%v)", n.Name, gone.Name, goneIP, err)
		}
	}
	t.Logf("%s holds blocks %v; the other nodes route its pod %s over weft-vxlan", gone.Name, held, goneIP)

	// The machine goes away, then its Node object.
	if err := c.StopNode(gone); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := c.Kubectl("delete", "node", gone.Name); err != nil {
		t.Fatal(err)
	}
	err = poll("blocks reclaimed and routes removed", 2*time.Minute, time.Second, func() error {
		blocks, err := c.Blocks()
		if err != nil {
			return err
		}
		for _, b := range blocks {
			if b.Holder == gone.Name {
				return fmt.Errorf("block %s still held by %s", b.CIDR, gone.Name)
			}
		}
		for _, n := range others {
			if ok, err := routed(n); err != nil || ok {
				return fmt.Errorf("%s still routes %s over weft-vxlan (%v)", n.Name, goneIP, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("FIGURE kubectl delete node %s: blocks %v reclaimed and routes removed on %d nodes in %s",
		gone.Name, held, len(others), time.Since(start).Round(100*time.Millisecond))
}
