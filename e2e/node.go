package e2e

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Node is one simulated machine: a network namespace on the underlay and a private mount
// namespace (held by holder) in which containerd, the kubelet and kube-proxy run.
type Node struct {
	Name string // Kubernetes node name: "cp", "w1", "w2", ...
	IP   string // underlay address, the node's InternalIP
	NS   string // network namespace name
	Dir  string // the node's state: configs, logs, and root/ (bind-mounted over hostDirs)

	holder, containerd, kubelet, proxy *Daemon
}

// ControlPlane reports whether this is node 0.
func (n *Node) ControlPlane() bool { return n.Name == "cp" }

// socket is the node's containerd socket as seen from the machine.
func (n *Node) socket() string {
	return filepath.Join(n.Dir, "root", "run/containerd/containerd.sock")
}

const sandboxImage = "docker.io/weft-e2e/pause:dev"

// containerd 1.6 configuration. Paths are the usual ones: inside the node's mount
// namespace they are the node's own directories.
const containerdConfig = `version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "/var/lib/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "` + sandboxImage + `"
  # The machine's root lacks CAP_SYS_RESOURCE: a negative oom_score_adj would fail in runc.
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
`

// kubelet configuration for cgroup v1 without systemd, authenticating nobody (the API
// server reaches it over the private underlay only).
func kubeletConfig(n *Node, resolvConf string) string {
	taints := "[]"
	if n.ControlPlane() {
		taints = `[{key: node-role.kubernetes.io/control-plane, effect: NoSchedule}]`
	}
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %s
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
failCgroupV1: false
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
resolvConf: %s
registerWithTaints: %s
serializeImagePulls: false
evictionHard: {memory.available: "1Mi", nodefs.available: "1%%", imagefs.available: "1%%", nodefs.inodesFree: "1%%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
`, n.IP, resolvConf, taints)
}

// startRuntime starts the node's containerd and imports the images into it.
func (c *Cluster) startRuntime(n *Node) error {
	// containerd's loopback plugin; weft's conflist is weft-cni alone (it does hostPort).
	for _, p := range []string{"loopback"} {
		if err := copyFile(filepath.Join(c.cfg.CNIPlugins, p), filepath.Join(n.Dir, "root/opt/cni/bin", p), 0o755); err != nil {
			return err
		}
	}
	conf := filepath.Join(n.Dir, "containerd.toml")
	if err := os.WriteFile(conf, []byte(containerdConfig), 0o644); err != nil {
		return err
	}
	d, err := StartDaemon(n.Name+"/containerd", filepath.Join(n.Dir, "containerd.log"),
		append(n.nsenter(), "containerd", "--config", conf)...)
	if err != nil {
		return err
	}
	n.containerd = d
	err = poll(n.Name+": containerd", time.Minute, 200*time.Millisecond, func() error {
		if d.Exited() {
			return fmt.Errorf("exited:\n%s", d.Tail(20))
		}
		_, err := c.ctr(n, "version")
		return err
	})
	if err != nil {
		return err
	}
	return c.ImportImage(n, c.testImage)
}

// ctr runs ctr against the node's containerd, in the Kubernetes namespace.
func (c *Cluster) ctr(n *Node, args ...string) (string, error) {
	return runShort(append([]string{"ctr", "--address", n.socket(), "-n", "k8s.io"}, args...)...)
}

// ImportImage imports an image tarball into the node's containerd.
func (c *Cluster) ImportImage(n *Node, tarball string) error {
	_, err := c.ctr(n, "images", "import", "--all-platforms", tarball)
	return err
}

// startKubelet starts the kubelet and kube-proxy of the node.
func (c *Cluster) startKubelet(n *Node) error {
	conf := filepath.Join(n.Dir, "kubelet.yaml")
	if err := os.WriteFile(conf, []byte(kubeletConfig(n, c.resolvConf)), 0o644); err != nil {
		return err
	}
	kc := c.pki.Kubeconfigs["admin"]
	d, err := StartDaemon(n.Name+"/kubelet", filepath.Join(n.Dir, "kubelet.log"), append(n.nsenter(),
		c.cfg.bin("kubelet"), "--config="+conf, "--kubeconfig="+kc,
		"--hostname-override="+n.Name, "--node-ip="+n.IP)...)
	if err != nil {
		return err
	}
	n.kubelet = d
	p, err := StartDaemon(n.Name+"/kube-proxy", filepath.Join(n.Dir, "kube-proxy.log"), append(n.nsenter(),
		c.cfg.bin("kube-proxy"), "--kubeconfig="+kc, "--hostname-override="+n.Name,
		"--bind-address="+n.IP, "--cluster-cidr="+clusterCIDR, "--proxy-mode=iptables",
		// nf_conntrack_max is not writable in a network namespace.
		"--conntrack-max-per-core=0",
		"--metrics-bind-address=127.0.0.1:10249", "--healthz-bind-address=127.0.0.1:10256")...)
	if err != nil {
		return err
	}
	n.proxy = p
	return nil
}

// StopNode kills everything of the node: its daemons, shims and containers (hostNetwork
// pods included), as if the machine were switched off.
func (c *Cluster) StopNode(n *Node) error {
	if n.kubelet != nil {
		n.kubelet.Stop(0)
	}
	c.drainNode(n) // so that runc removes the containers' cgroups
	roots := []int{}
	for _, d := range []*Daemon{n.kubelet, n.proxy, n.containerd, n.holder} {
		if d != nil {
			roots = append(roots, d.Pid())
		}
	}
	roots = append(roots, pidsInNetns(netnsPath(n.NS))...)
	// Shims have reparented to the test process; they are in the node's network namespace
	// (found above), and their containers are their descendants.
	return KillAll(roots)
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func trimLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}
