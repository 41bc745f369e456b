// Package e2e runs weft on a real Kubernetes cluster built on one machine, and installs it
// the way a user does: one `kubectl apply -f deploy/weft.yaml`.
//
// The cluster (type Cluster) is made of network namespaces on a private underlay:
//
//   - the underlay: namespace "weft-e2e-ul" holding a bridge "ul0" with 198.19.0.1/16, the
//     nodes' default gateway, which forwards nowhere. Nothing is linked to the root
//     namespace's network.
//   - nodes: namespace "weft-e2e-<node>" with eth0 = 198.19.0.10+i/16. Node 0 ("cp") is
//     the control plane and also a node, tainted node-role.kubernetes.io/control-plane, as
//     kubeadm does: etcd, kube-apiserver, kube-controller-manager and kube-scheduler run in
//     its namespace. Every node runs containerd, kubelet and kube-proxy.
//   - each node's containerd and kubelet share one private mount namespace, held open by a
//     "sleep" process started with `ip netns exec NS unshare -m`; the daemons join it with
//     nsenter. In it a fresh tmpfs on /sys/fs/cgroup carries the host's cgroup hierarchies
//     again (ip netns exec mounts a new sysfs, which hides them), and per-node directories
//     are bind-mounted over the paths a DaemonSet's hostPath volumes use (/opt/cni/bin,
//     /etc/cni/net.d, /var/lib/weft, /run/weft, ...) and over the runtime's state, so the
//     simulated nodes share nothing.
//
// Images come from no registry: the test image (netcheck, also the pod sandbox image) is
// written with go-containerregistry, weft's image is `make image`'s bin/weft-image.tar, and
// both are imported into every node's containerd with `ctr images import`.
//
// Every process is started by the test (or is an orphan of one: the test process is a
// child subreaper, so containerd's shims and the containers reparent to it). Down stops
// the kubelets, has each containerd kill and delete its containers (so runc removes their
// cgroups), kills every remaining descendant and every process in a weft-e2e-* namespace
// by PID, removes the cgroups of the containers, the namespaces, the mount points it had
// to create and the work directory: after a pass, after a failure (t.Cleanup) and on
// SIGINT/SIGTERM. A test killed harder (SIGKILL, go test's -timeout) can leave processes
// and namespaces behind; the next run sweeps them first (processes in the weft-e2e-*
// namespaces, the namespaces, the work directory).
//
// The test itself is TestCluster in cluster_test.go, behind the build tag e2e; run it with
// `make e2e` (as root).
package e2e
