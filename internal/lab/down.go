package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Down removes every namespace, link, process and file the lab made: it runs CNI DEL
// for pods whose node agent is alive, stops the agents, deletes the pod, node and
// underlay namespaces (which takes every link in them) and the lab's files. It also
// removes namespaces that match the lab's naming but are missing from lab.json, so it
// works on a half-built lab and without lab.json. Calling it again is harmless.
func (l *Lab) Down(ctx context.Context) error {
	unlock, err := lockDir(l.Dir())
	if err != nil {
		return err
	}
	defer unlock()
	if err := l.reload(); err != nil && !errors.Is(err, ErrNoState) {
		return err
	}
	return l.down(ctx)
}

func (l *Lab) down(ctx context.Context) error {
	start := time.Now()
	l.mu.Lock()
	st := l.st
	st.Nodes = slices.Clone(l.st.Nodes)
	st.Pods = slices.Clone(l.st.Pods)
	l.mu.Unlock()
	var (
		errs []error
		emu  sync.Mutex
	)
	addErr := func(err error) {
		emu.Lock()
		errs = append(errs, err)
		emu.Unlock()
	}

	// 1. CNI DEL where an agent can still hear it, so the agents release leases and the
	// plugins undo what they did; failures do not matter, the namespaces go anyway.
	nodes := map[string]Node{}
	for _, n := range st.Nodes {
		nodes[n.Name] = n
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for _, p := range st.Pods {
		n, ok := nodes[p.Node]
		if !ok || !l.agentAlive(n) || !nsExists(p.Namespace) {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			defer cancel()
			if err := l.cniDel(dctx, n, p); err != nil {
				l.logf("%s: CNI DEL of pod %s failed (ignored, its namespace is removed anyway): %v", p.Node, p.Name, err)
			}
		}()
	}
	wg.Wait()

	// 2. Stop the recorded agents, verified by their command line.
	for _, n := range st.Nodes {
		if !l.agentAlive(n) {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := stopPID(n.PID); err != nil {
				addErr(fmt.Errorf("stopping the agent of %s: %w", n.Name, err))
			} else {
				l.logf("%s: agent pid %d stopped", n.Name, n.PID)
			}
		}()
	}
	wg.Wait()

	// 3. Every namespace of the lab: recorded or found by name.
	set := map[string]bool{}
	for _, p := range st.Pods {
		set[p.Namespace] = true
	}
	for _, n := range st.Nodes {
		set[n.Namespace] = true
	}
	set[st.Underlay] = true
	found, err := labNamespaces(st.Name)
	if err != nil {
		errs = append(errs, err)
	}
	for _, n := range found {
		set[n] = true
	}
	var all []string
	for n := range set {
		if nsExists(n) {
			all = append(all, n)
		}
	}

	// Processes still inside lab namespaces: agents not in lab.json (lost state) are
	// stopped; anything else (someone's `ip netns exec` shell) is only reported, since
	// the lab did not start it.
	for _, pr := range procsInNamespaces(all) {
		if isAgent(pr.pid, st.WeftBin, "") {
			if err := stopPID(pr.pid); err != nil {
				errs = append(errs, fmt.Errorf("stopping agent pid %d found in %s: %w", pr.pid, pr.ns, err))
			} else {
				l.logf("stopped agent pid %d found in namespace %s", pr.pid, pr.ns)
			}
			continue
		}
		l.logf("warning: pid %d (%s) runs in lab namespace %s; the namespace lives on, invisible, until it exits",
			pr.pid, strings.Join(cmdline(pr.pid), " "), pr.ns)
	}

	// 4. Pods first, then nodes, then the underlay; deleting a namespace deletes its links.
	slices.SortFunc(all, func(a, b string) int {
		return nsOrder(st.Name, a) - nsOrder(st.Name, b)
	})
	for _, n := range all {
		if err := deleteNS(n); err != nil {
			errs = append(errs, err)
		}
	}

	// 5. Host neighbour table limits, then files.
	l.restoreNeighLimits(st)
	errs = append(errs, removeFiles(st)...)

	l.mu.Lock()
	l.st.Nodes, l.st.Pods = nil, nil
	l.mu.Unlock()
	if len(all) > 0 {
		l.logf("lab %s is down: %d namespaces removed in %s", st.Name, len(all), time.Since(start).Round(time.Millisecond))
	} else {
		l.logf("lab %s: no namespaces left to remove", st.Name)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("removing lab %s (run %s again; `ip netns list` shows what is left): %w", st.Name, cli("down", st.Name, st.Dir), err)
	}
	return nil
}

func nsOrder(lab, ns string) int {
	switch {
	case isPodNS(lab, ns):
		return 0
	case ns == lab+"-underlay":
		return 2
	default:
		return 1
	}
}

type nsProc struct {
	pid int
	ns  string
}

// procsInNamespaces finds processes whose network namespace is one of names.
func procsInNamespaces(names []string) []nsProc {
	byIno := map[string]string{}
	for _, n := range names {
		if ino := nsInode(n); ino != 0 {
			byIno["net:["+strconv.FormatUint(ino, 10)+"]"] = n
		}
	}
	if len(byIno) == 0 {
		return nil
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var out []nsProc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		link, err := os.Readlink("/proc/" + e.Name() + "/ns/net")
		if err != nil {
			continue
		}
		if n, ok := byIno[link]; ok && running(pid) {
			out = append(out, nsProc{pid, n})
		}
	}
	return out
}

// removeFiles deletes what the lab wrote into its dir, then the dir if it is empty.
// Only the lab's own entries are removed, so a Dir pointed at a directory holding other
// files does not lose them.
func removeFiles(st state) []error {
	if st.Dir == "" {
		return nil
	}
	var errs []error
	names := []string{stateFile, gossipFile, claimsDir, cniCache}
	ents, err := os.ReadDir(st.Dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return []error{fmt.Errorf("reading lab dir: %w", err)}
	}
	for _, e := range ents {
		n := e.Name()
		if isNodeDirName(n) || strings.HasPrefix(n, stateFile+".") {
			names = append(names, n)
		}
	}
	for _, n := range names {
		if err := os.RemoveAll(filepath.Join(st.Dir, n)); err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", filepath.Join(st.Dir, n), err))
		}
	}
	// The lock file goes last: Down holds it.
	_ = os.Remove(filepath.Join(st.Dir, lockFile))
	if err := os.Remove(st.Dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		left, _ := os.ReadDir(st.Dir)
		var ln []string
		for _, e := range left {
			ln = append(ln, e.Name())
		}
		errs = append(errs, fmt.Errorf("lab dir %s is not empty after removing the lab's files (left: %v); remove it by hand if those are yours to delete: %w", st.Dir, ln, err))
	}
	return errs
}

func isNodeDirName(n string) bool {
	rest, ok := strings.CutPrefix(n, "node")
	if !ok || rest == "" {
		return false
	}
	_, err := strconv.Atoi(rest)
	return err == nil
}
