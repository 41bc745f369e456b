package lab

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// The kernel's IPv4 neighbour (ARP) table is one table for all network namespaces, with
// limits that exist only in the root namespace. On real nodes every kernel has its own;
// a lab puts many nodes' worth of entries in one, and past gc_thresh3 new entries fail
// with ENOBUFS, so pods stop reaching their same-node neighbours. The lab therefore
// raises the limits by what it needs, and Down puts them back.
const neighSysctlDir = "/proc/sys/net/ipv4/neigh/default"

// neighLimits are gc_thresh2 (soft) and gc_thresh3 (hard).
type neighLimits struct {
	Thresh2 int `json:"gcThresh2"`
	Thresh3 int `json:"gcThresh3"`
}

// neighNeed estimates the neighbour entries of a lab whose nodes hold pods[i] pods: a
// pod resolves its gateway and every pod on its node (they share a subnet on the
// bridge); a node resolves its pods, the other nodes' underlay addresses and tunnels.
func neighNeed(pods []int) int {
	need := 0
	for _, p := range pods {
		need += p*p + p + 2*len(pods)
	}
	return need
}

func readNeighLimits() (neighLimits, error) {
	var nl neighLimits
	for _, f := range []struct {
		name string
		v    *int
	}{{"gc_thresh2", &nl.Thresh2}, {"gc_thresh3", &nl.Thresh3}} {
		b, err := os.ReadFile(filepath.Join(neighSysctlDir, f.name))
		if err != nil {
			return nl, err
		}
		if *f.v, err = strconv.Atoi(strings.TrimSpace(string(b))); err != nil {
			return nl, fmt.Errorf("parsing %s: %w", f.name, err)
		}
	}
	return nl, nil
}

// writeNeighLimits writes both limits, in the order that keeps thresh2 <= thresh3.
func writeNeighLimits(nl neighLimits) error {
	w := func(name string, v int) error {
		return os.WriteFile(filepath.Join(neighSysctlDir, name), []byte(strconv.Itoa(v)), 0o644)
	}
	cur, err := readNeighLimits()
	if err != nil {
		return err
	}
	if nl.Thresh3 >= cur.Thresh3 {
		if err := w("gc_thresh3", nl.Thresh3); err != nil {
			return err
		}
		return w("gc_thresh2", nl.Thresh2)
	}
	if err := w("gc_thresh2", nl.Thresh2); err != nil {
		return err
	}
	return w("gc_thresh3", nl.Thresh3)
}

// ensureNeighCapacity raises the host's neighbour table limits so that they hold what
// they held before the lab plus what the lab needs, when the lab would take more than
// half the hard limit. Failing is not fatal: the lab works, and a large one may show
// same-node pairs as unreachable.
func (l *Lab) ensureNeighCapacity(pods []int) {
	need := neighNeed(pods)
	l.mu.Lock()
	orig := l.st.NeighOrig
	l.mu.Unlock()
	cur, err := readNeighLimits()
	if err != nil {
		l.logf("warning: cannot read the neighbour table limits (%v); a large lab may lose same-node traffic", err)
		return
	}
	if orig == nil && need <= cur.Thresh3/2 {
		return // a small lab: leave the host alone
	}
	base := cur
	if orig != nil {
		base = *orig
	}
	want := neighLimits{Thresh2: base.Thresh2 + need, Thresh3: base.Thresh3 + need}
	if cur.Thresh2 >= want.Thresh2 && cur.Thresh3 >= want.Thresh3 {
		return
	}
	want.Thresh2, want.Thresh3 = max(want.Thresh2, cur.Thresh2), max(want.Thresh3, cur.Thresh3)
	if err := writeNeighLimits(want); err != nil {
		l.logf("warning: cannot raise %s/gc_thresh3 to %d (%v); the lab needs about %d neighbour entries in the table all namespaces share, and may lose same-node traffic", neighSysctlDir, want.Thresh3, err, need)
		return
	}
	l.logf("neighbour table: raised the host's net.ipv4.neigh.default.gc_thresh2/3 %d/%d -> %d/%d (all namespaces share one table; the lab needs about %d entries; `weft lab down` restores them)",
		cur.Thresh2, cur.Thresh3, want.Thresh2, want.Thresh3, need)
	l.mu.Lock()
	if l.st.NeighOrig == nil {
		l.st.NeighOrig = &cur
	}
	l.st.NeighSet = &want
	l.mu.Unlock()
}

// restoreNeighLimits puts back the limits the lab raised, unless someone changed them
// since or another lab (which may rely on them) is up.
func (l *Lab) restoreNeighLimits(st state) {
	if st.NeighOrig == nil || st.NeighSet == nil {
		return
	}
	cur, err := readNeighLimits()
	if err != nil || cur != *st.NeighSet {
		l.logf("neighbour table limits changed by someone else since the lab raised them; leaving them at %d/%d", cur.Thresh2, cur.Thresh3)
		return
	}
	if other := otherLabs(st.Name); len(other) > 0 {
		l.logf("neighbour table limits left at %d/%d: other labs are up (%s)", cur.Thresh2, cur.Thresh3, strings.Join(other, ", "))
		return
	}
	if err := writeNeighLimits(*st.NeighOrig); err != nil {
		l.logf("warning: restoring the neighbour table limits to %d/%d: %v", st.NeighOrig.Thresh2, st.NeighOrig.Thresh3, err)
		return
	}
	l.logf("neighbour table limits restored to %d/%d", st.NeighOrig.Thresh2, st.NeighOrig.Thresh3)
}

// otherLabs lists the underlay namespaces of labs other than name.
func otherLabs(name string) []string {
	ents, _ := os.ReadDir(netnsDir)
	var out []string
	for _, e := range ents {
		if n, ok := strings.CutSuffix(e.Name(), "-underlay"); ok && n != name {
			out = append(out, n)
		}
	}
	return out
}

// podsPerNode counts the pods of each node, plus extra on node add (a pod about to be
// added).
func (l *Lab) podsPerNode(add string) []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	idx := map[string]int{}
	counts := make([]int, len(l.st.Nodes))
	for i, n := range l.st.Nodes {
		idx[n.Name] = i
	}
	for _, p := range l.st.Pods {
		if i, ok := idx[p.Node]; ok {
			counts[i]++
		}
	}
	if i, ok := idx[add]; ok {
		counts[i]++
	}
	return counts
}
