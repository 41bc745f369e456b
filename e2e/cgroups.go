package e2e

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
)

// With cgroupsPerQOS off the kubelet gives pods no cgroup parent, and runc puts each
// container into "k8s.io/<container id>" of every hierarchy of the machine. runc removes
// it when containerd deletes the task; containers killed behind containerd's back (a node
// switched off) leave theirs, which removeCgroups takes away.

// cgroupRoots returns the mount points of the machine's cgroup hierarchies.
func cgroupRoots() []string {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return nil
	}
	defer f.Close()
	var roots []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		fs := strings.Fields(s.Text())
		if len(fs) >= 3 && (fs[2] == "cgroup" || fs[2] == "cgroup2") && strings.HasPrefix(fs[1], "/sys/fs/cgroup") {
			roots = append(roots, fs[1])
		}
	}
	return roots
}

// existingCgroupParents returns the k8s.io cgroups that exist before the cluster starts
// (they are not ours to remove).
func existingCgroupParents() map[string]bool {
	out := map[string]bool{}
	for _, r := range cgroupRoots() {
		p := filepath.Join(r, "k8s.io")
		if _, err := os.Stat(p); err == nil {
			out[p] = true
		}
	}
	return out
}

// removeCgroups removes the (empty) cgroups of the given containers, and the k8s.io
// parents that did not exist before.
func removeCgroups(ids map[string]bool, before map[string]bool) {
	for _, r := range cgroupRoots() {
		parent := filepath.Join(r, "k8s.io")
		for id := range ids {
			os.Remove(filepath.Join(parent, id))
		}
		if !before[parent] {
			os.Remove(parent)
		}
	}
}
