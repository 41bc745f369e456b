package soak

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/api"
	"github.com/weftnet/weft/internal/lab"
)

var seedFlag = flag.Uint64("seed", 0, "seed of the randomized churn test (0: WEFT_SOAK_SEED, else random)")

func churnSeed(t *testing.T) uint64 {
	seed := *seedFlag
	if seed == 0 {
		if s := os.Getenv("WEFT_SOAK_SEED"); s != "" {
			v, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				t.Fatalf("WEFT_SOAK_SEED=%q: %v", s, err)
			}
			seed = v
		}
	}
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("churn seed %d (reproduce with WEFT_SOAK_SEED=%d or -seed %d)", seed, seed, seed)
	return seed
}

// partition drops all underlay traffic between the nodes of group a and those of group b,
// with an nftables table in each node's namespace; heal removes it.
func partition(l *lab.Lab, a, b []lab.Node) error {
	for _, side := range [][2][]lab.Node{{a, b}, {b, a}} {
		var other []string
		for _, n := range side[1] {
			other = append(other, n.Underlay.String())
		}
		set := strings.Join(other, ", ")
		rules := fmt.Sprintf(`table inet weftsoak {
	chain in { type filter hook input priority -200; ip saddr { %s } drop; }
	chain out { type filter hook output priority -200; ip daddr { %s } drop; }
}
`, set, set)
		for _, n := range side[0] {
			if err := nft(l, n.Name, rules); err != nil {
				return err
			}
		}
	}
	return nil
}

func heal(l *lab.Lab) error {
	for _, n := range l.Nodes() {
		if err := nft(l, n.Name, "table inet weftsoak {}\ndelete table inet weftsoak\n"); err != nil {
			return err
		}
	}
	return nil
}

func nft(l *lab.Lab, node, rules string) error {
	return inNode(l, node, func() error {
		cmd := exec.Command("nft", "-f", "-")
		cmd.Stdin = strings.NewReader(rules)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("nft in %s: %v: %s", node, err, out)
		}
		return nil
	})
}

// checkInvariant verifies, against the kernel and the agents, that no address is held by
// two live pods and no block by two nodes, and that every pod's address lies in a block of
// its own node. It returns the number of pods checked.
// Pods in deleting (node/name) had a DEL refused: weft-cni removed their veth before it
// found the agent down, so their eth0 may be gone while the lab (and the lease) keep them.
func checkInvariant(ctx context.Context, l *lab.Lab, deleting map[string]bool) (int, error) {
	blocks := map[string][]netip.Prefix{} // node -> its blocks
	for _, n := range l.Nodes() {
		s, err := api.NewClient(n.Socket, 5*time.Second).Status(ctx)
		if err == nil {
			for _, b := range s.Blocks {
				blocks[n.Name] = append(blocks[n.Name], b.Block)
			}
			continue
		}
		// A stopped agent: its lease file says what it owns.
		st, ferr := readIPAM(n)
		if ferr != nil {
			return 0, fmt.Errorf("%s: status: %v; lease file: %v", n.Name, err, ferr)
		}
		blocks[n.Name] = st.Blocks
	}
	owner := map[netip.Prefix]string{}
	for node, bs := range blocks {
		for _, b := range bs {
			if o, ok := owner[b]; ok {
				return 0, fmt.Errorf("DUPLICATE BLOCK %s held by %s and %s", b, o, node)
			}
			owner[b] = node
		}
	}
	for b1, n1 := range owner {
		for b2, n2 := range owner {
			if b1 != b2 && b1.Overlaps(b2) {
				return 0, fmt.Errorf("OVERLAPPING BLOCKS %s (%s) and %s (%s)", b1, n1, b2, n2)
			}
		}
	}
	holder := map[netip.Addr]string{}
	pods := l.Pods()
	for _, p := range pods {
		if !p.Address.IsValid() {
			continue
		}
		a, err := podAddr(p.Namespace)
		if err != nil && deleting[p.Node+"/"+p.Name] {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("pod %s/%s: reading eth0: %w", p.Node, p.Name, err)
		}
		if a != p.Address {
			return 0, fmt.Errorf("pod %s/%s has %s on eth0, CNI said %s", p.Node, p.Name, a, p.Address)
		}
		if h, ok := holder[a.Addr()]; ok {
			return 0, fmt.Errorf("DUPLICATE ADDRESS %s held by %s and %s/%s", a.Addr(), h, p.Node, p.Name)
		}
		holder[a.Addr()] = p.Node + "/" + p.Name
		if !slices.ContainsFunc(blocks[p.Node], func(b netip.Prefix) bool { return b.Contains(a.Addr()) }) {
			return 0, fmt.Errorf("pod %s/%s has %s, outside its node's blocks %v (owner %q)", p.Node, p.Name, a, blocks[p.Node], ownerOf(owner, a.Addr()))
		}
	}
	return len(holder), nil
}

func ownerOf(owner map[netip.Prefix]string, a netip.Addr) string {
	for b, n := range owner {
		if b.Contains(a) {
			return n
		}
	}
	return ""
}

// TestChurnNoDuplicates creates and deletes pods at random across four nodes (blocks of
// /28, so nodes claim and give back blocks all the time) while agents are killed and
// restarted, stopped for a while (the peer leaves and rejoins), and the underlay is
// partitioned into two groups and healed. After every step the invariant of
// checkInvariant must hold. At the end, with the partition healed and every agent up, the
// reachability matrix must pass again.
func TestChurnNoDuplicates(t *testing.T) {
	seed := churnSeed(t)
	rng := rand.New(rand.NewPCG(seed, seed^0x77656674))
	steps := size(250, 3000)
	budget := time.Duration(size(120, 270)) * time.Second
	maxPods := size(24, 48)
	l := upLab(t, 4, 0, "--block-size", "28")
	ctx := context.Background()
	nodes := l.Nodes()
	groupA, groupB := nodes[:2], nodes[2:]

	down := map[string]int{} // node -> step at which its agent comes back
	deleting := map[string]bool{}
	partitioned, healAt := false, 0
	var adds, dels, failedAdds, failedDels, kills, terms, parts, checks int
	podSeq := 0
	start := time.Now()
	step := 0
	startAgent := func(n string) {
		sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		if err := l.StartAgent(sctx, n); err != nil {
			t.Fatalf("step %d: restarting %s: %v", step, n, err)
		}
		delete(down, n)
		// As a runtime does: a refused DEL is retried until it succeeds.
		for _, p := range l.Pods() {
			if p.Node == n && deleting[p.Node+"/"+p.Name] {
				if err := l.DelPod(ctx, p.Node, p.Name); err != nil {
					t.Fatalf("step %d: retried DEL of %s/%s: %v", step, p.Node, p.Name, err)
				}
				delete(deleting, p.Node+"/"+p.Name)
				dels++
			}
		}
	}
	for step = 1; step <= steps && time.Since(start) < budget; step++ {
		for n, at := range down {
			if step >= at {
				startAgent(n)
			}
		}
		if partitioned && step >= healAt {
			if err := heal(l); err != nil {
				t.Fatal(err)
			}
			partitioned = false
		}
		pods := l.Pods()
		node := nodes[rng.IntN(len(nodes))].Name
		switch x := rng.Float64(); {
		case x < 0.02 && len(down) == 0:
			sig := syscall.SIGKILL
			if rng.IntN(2) == 0 {
				sig = syscall.SIGTERM
				terms++
			} else {
				kills++
			}
			if err := l.StopAgent(node, sig); err != nil {
				t.Fatalf("step %d: stopping %s: %v", step, node, err)
			}
			// Back at once (a restart) or after a while (the peer left and rejoins).
			down[node] = step + []int{1, 1, 5, 20}[rng.IntN(4)]
		case x < 0.035 && !partitioned:
			if err := partition(l, groupA, groupB); err != nil {
				t.Fatal(err)
			}
			partitioned, healAt = true, step+10+rng.IntN(40)
			parts++
		case x < 0.5 && len(pods) < maxPods || len(pods) == 0:
			podSeq++
			name := "p" + strconv.Itoa(podSeq)
			_, err := l.AddPod(ctx, node, name)
			_, isDown := down[node]
			switch {
			case err == nil && isDown:
				t.Fatalf("step %d: ADD of %s/%s succeeded with the agent down", step, node, name)
			case err != nil && !isDown:
				t.Fatalf("step %d: ADD of %s/%s: %v", step, node, name, err)
			case err != nil:
				failedAdds++
			default:
				adds++
			}
		default:
			p := pods[rng.IntN(len(pods))]
			err := l.DelPod(ctx, p.Node, p.Name)
			_, isDown := down[p.Node]
			switch {
			case err != nil && !isDown:
				t.Fatalf("step %d: DEL of %s/%s: %v", step, p.Node, p.Name, err)
			case err != nil:
				failedDels++
				deleting[p.Node+"/"+p.Name] = true
			default:
				dels++
				delete(deleting, p.Node+"/"+p.Name)
			}
		}
		n, err := checkInvariant(ctx, l, deleting)
		checks++
		if err != nil {
			t.Fatalf("step %d (seed %d): %v", step, seed, err)
		}
		_ = n
	}
	if partitioned {
		if err := heal(l); err != nil {
			t.Fatal(err)
		}
	}
	for n := range down {
		startAgent(n)
	}
	t.Logf("FIGURE churn (seed %d): %d steps in %s: %d pods created, %d deleted, %d ADDs and %d DELs refused while the agent was down, %d kill -9, %d SIGTERM stops, %d partitions, %d invariant checks, 0 duplicates",
		seed, step-1, time.Since(start).Round(time.Second), adds, dels, failedAdds, failedDels, kills, terms, parts, checks)
	// The walk may end with few pods or none: give every node a new one, so the matrix
	// after healing covers every node, and shows that new pods work after the churn.
	for _, nd := range l.Nodes() {
		if _, err := l.AddPod(ctx, nd.Name, "final"); err != nil {
			t.Fatalf("adding a pod on %s after the churn: %v", nd.Name, err)
		}
	}
	converged := waitCheck(t, l, 90*time.Second, "after the churn, healed")
	t.Logf("FIGURE churn: matrix of %d pods passed %s after healing", len(l.Pods()), converged.Round(time.Millisecond))
	if _, err := checkInvariant(ctx, l, deleting); err != nil {
		t.Fatal(err)
	}
}
