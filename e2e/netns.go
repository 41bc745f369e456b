package e2e

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

const (
	nsPrefix   = "weft-e2e-"
	underlayNS = nsPrefix + "ul"
	underlayGW = "198.19.0.1"
	underlayPL = 16
)

// nodeIP is node i's underlay address: 198.19.0.10+i.
func nodeIP(i int) string { return fmt.Sprintf("198.19.0.%d", 10+i) }

func ip(args ...string) error {
	_, err := runShort(append([]string{"ip"}, args...)...)
	return err
}

// createUnderlay makes the underlay namespace with its bridge. The bridge's address is
// the nodes' default gateway; the namespace has no other link and does not forward, so
// traffic to anything outside the cluster ends there.
func createUnderlay() error {
	for _, args := range [][]string{
		{"netns", "add", underlayNS},
		{"-n", underlayNS, "link", "set", "lo", "up"},
		{"-n", underlayNS, "link", "add", "ul0", "type", "bridge"},
		{"-n", underlayNS, "addr", "add", fmt.Sprintf("%s/%d", underlayGW, underlayPL), "dev", "ul0"},
		{"-n", underlayNS, "link", "set", "ul0", "up"},
	} {
		if err := ip(args...); err != nil {
			return err
		}
	}
	return nil
}

// createNodeNetns makes the node's namespace with eth0 on the underlay.
func createNodeNetns(n *Node) error {
	veth := "v-" + n.Name
	for _, args := range [][]string{
		{"netns", "add", n.NS},
		{"-n", n.NS, "link", "set", "lo", "up"},
		{"-n", underlayNS, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", n.NS},
		{"-n", underlayNS, "link", "set", veth, "master", "ul0", "up"},
		{"-n", n.NS, "addr", "add", fmt.Sprintf("%s/%d", n.IP, underlayPL), "dev", "eth0"},
		{"-n", n.NS, "link", "set", "eth0", "up"},
		{"-n", n.NS, "route", "add", "default", "via", underlayGW},
	} {
		if err := ip(args...); err != nil {
			return err
		}
	}
	// What kubeadm's preflight checks demand of a node.
	sysctls := map[string]string{
		"net/ipv4/ip_forward":                 "1",
		"net/bridge/bridge-nf-call-iptables":  "1",
		"net/bridge/bridge-nf-call-ip6tables": "1",
	}
	for k, v := range sysctls {
		if _, err := os.Stat("/proc/sys/" + k); err != nil {
			continue // br_netfilter not loaded
		}
		if _, err := runShort("ip", "netns", "exec", n.NS, "sh", "-c", fmt.Sprintf("echo %s > /proc/sys/%s", v, k)); err != nil {
			return err
		}
	}
	return nil
}

// hostDirs are the paths that each node sees as its own directory: a DaemonSet's hostPath
// volumes (weft's) and the state of the runtime and the kubelet. They are bind-mounted from
// the node's directory inside its mount namespace.
var hostDirs = []string{
	"/opt/cni/bin",
	"/etc/cni/net.d",
	"/var/lib/weft",
	"/run/weft",
	"/var/lib/kubelet",
	"/var/lib/containerd",
	"/run/containerd",
	"/var/log/pods",
	"/var/log/containers",
	"/run/netns", // containerd's pod network namespaces
}

// ensureMountPoints creates the hostDirs missing on the machine (as empty mount points)
// and returns the ones it created, for removal at the end.
func ensureMountPoints() ([]string, error) {
	var created []string
	for _, d := range hostDirs {
		// Create parents one by one, so that each one we made is removed again.
		var missing []string
		for p := d; p != "/"; p = filepath.Dir(p) {
			if _, err := os.Stat(p); err == nil {
				break
			}
			missing = append(missing, p)
		}
		for i := len(missing) - 1; i >= 0; i-- {
			if err := os.Mkdir(missing[i], 0o755); err != nil && !os.IsExist(err) {
				return created, err
			}
			created = append(created, missing[i])
		}
	}
	return created, nil
}

// removeMountPoints removes the directories ensureMountPoints made, deepest first, if empty.
func removeMountPoints(created []string) {
	for i := len(created) - 1; i >= 0; i-- {
		os.Remove(created[i])
	}
}

// startHolder starts the process that holds the node's private mount namespace open, and
// sets that namespace up: the cgroup hierarchies again under a fresh /sys/fs/cgroup, and
// the node's directories over hostDirs.
func startHolder(n *Node) error {
	d, err := StartDaemon(n.Name+"/holder", filepath.Join(n.Dir, "holder.log"),
		"ip", "netns", "exec", n.NS, "unshare", "--mount", "--propagation", "private", "sleep", "infinity")
	if err != nil {
		return err
	}
	n.holder = d
	self, _ := os.Readlink("/proc/self/ns/mnt")
	err = poll(n.Name+": mount namespace", 10*time.Second, 50*time.Millisecond, func() error {
		if d.Exited() {
			return fmt.Errorf("exited: %s", d.Tail(5))
		}
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", d.Pid()))
		mnt, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", d.Pid()))
		if strings.TrimSpace(string(comm)) != "sleep" || mnt == self {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	if err != nil {
		return err
	}
	mounts, err := cgroupMounts()
	if err != nil {
		return err
	}
	var script []string
	script = append(script, "set -e")
	script = append(script, mounts...)
	for _, hd := range hostDirs {
		src := filepath.Join(n.Dir, "root", hd)
		if err := os.MkdirAll(src, 0o755); err != nil {
			return err
		}
		script = append(script, fmt.Sprintf("mount --bind %s %s", src, hd))
	}
	_, err = runShort(append(n.nsenter(), "sh", "-c", strings.Join(script, "\n"))...)
	return err
}

// nsenter is the command prefix that runs a program in the node's network and mount
// namespaces.
func (n *Node) nsenter() []string {
	return []string{"nsenter", "-t", strconv.Itoa(n.holder.Pid()), "-m", "-n", "--"}
}

// cgroupMounts returns the shell commands that mount the machine's cgroup hierarchies
// again in a namespace where `ip netns exec` mounted a new sysfs over /sys: a tmpfs on
// /sys/fs/cgroup holding every v1 hierarchy (and the v2 "unified" one) of cgroup v1 or
// hybrid machines, or the one cgroup2 mount of a cgroup v2 machine.
func cgroupMounts() ([]string, error) {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var cmds []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		// device mountpoint fstype options 0 0
		fs := strings.Fields(s.Text())
		if len(fs) < 4 || (fs[2] != "cgroup" && fs[2] != "cgroup2") {
			continue
		}
		mp := fs[1]
		if mp == "/sys/fs/cgroup" {
			cmds = append(cmds, fmt.Sprintf("mount -t %s -o %s %s %s", fs[2], fs[3], fs[2], mp))
			continue
		}
		if !strings.HasPrefix(mp, "/sys/fs/cgroup/") {
			continue
		}
		if len(cmds) == 0 {
			cmds = append(cmds, "mount -t tmpfs -o mode=755 cgroup_root /sys/fs/cgroup")
		}
		cmds = append(cmds, "mkdir -p "+mp, fmt.Sprintf("mount -t %s -o %s %s %s", fs[2], fs[3], fs[2], mp))
	}
	if len(cmds) == 0 {
		return nil, fmt.Errorf("no cgroup mounts under /sys/fs/cgroup")
	}
	return cmds, s.Err()
}

// netnsPath is where `ip netns` keeps a named namespace.
func netnsPath(name string) string { return filepath.Join("/run/netns", name) }

// ourNamespaces lists the namespaces this harness owns by name.
func ourNamespaces() []string {
	ents, _ := os.ReadDir("/run/netns")
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), nsPrefix) {
			out = append(out, e.Name())
		}
	}
	return out
}
