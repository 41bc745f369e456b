package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Manifests of the test's workloads. All use TestImage (imported on every node, never
// pulled) and tolerate the control plane's taint, so they can run on every node.

const podCommon = `      tolerations:
      - {key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 2
`

// spreadDeployment is a Deployment of `netcheck serve` with one replica per node
// (required anti-affinity on the hostname).
func spreadDeployment(replicas int) string {
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: netcheck, namespace: default}
spec:
  replicas: %d
  selector: {matchLabels: {app: netcheck}}
  template:
    metadata: {labels: {app: netcheck}}
    spec:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {matchLabels: {app: netcheck}}
            topologyKey: kubernetes.io/hostname
%s      containers:
      - name: netcheck
        image: %s
        imagePullPolicy: Never
        args: [serve]
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        ports: [{containerPort: 8080}]
`, replicas, podCommon, TestImage)
}

// clusterIPService is a Service with the given ClusterIP: port 80 to the selected pods'
// port 8080.
func clusterIPService(name, ip, selector string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: %s, namespace: default}
spec:
  clusterIP: %s
  selector: {%s}
  ports: [{port: 80, targetPort: 8080, protocol: TCP}]
`, name, ip, selector)
}

// barePod is a pod on node running netcheck with args; hostPort (if not 0) maps to 8080.
func barePod(name, node string, hostPort int, args ...string) string {
	ports := ""
	if hostPort != 0 {
		ports = fmt.Sprintf("    ports: [{containerPort: 8080, hostPort: %d}]\n", hostPort)
	}
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = strconv.Quote(a)
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: default, labels: {app: %s}}
spec:
  nodeSelector: {kubernetes.io/hostname: %s}
  restartPolicy: Never
%s  containers:
  - name: netcheck
    image: %s
    imagePullPolicy: Never
    args: [%s]
    env:
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
%s`, name, name, node, strings.ReplaceAll(podCommon, "      ", "  "), TestImage, strings.Join(quoted, ", "), ports)
}

// StreamStatus is a status line of `netcheck stream`.
type StreamStatus struct {
	State    string // ok, BROKEN, stopped
	Peer     string
	Local    string
	Sent     int
	MaxGapMs int
	UpS      int
}

// parseStream reads the last status line of a `netcheck stream` log.
func parseStream(log string) (StreamStatus, error) {
	lines := trimLines(log)
	for i := len(lines) - 1; i >= 0; i-- {
		f := strings.Fields(lines[i])
		if len(f) < 2 || f[0] != "stream" {
			continue
		}
		s := StreamStatus{State: f[1]}
		for _, kv := range f[2:] {
			k, v, _ := strings.Cut(kv, "=")
			n, _ := strconv.Atoi(v)
			switch k {
			case "peer":
				s.Peer = v
			case "local":
				s.Local = v
			case "sent":
				s.Sent = n
			case "maxgap_ms":
				s.MaxGapMs = n
			case "up_s":
				s.UpS = n
			}
		}
		return s, nil
	}
	return StreamStatus{}, fmt.Errorf("no status line in %q", log)
}

// VXLANRoutes returns the destinations of the node's routes through weft's VXLAN device.
func (c *Cluster) VXLANRoutes(n *Node) ([]netip.Prefix, error) {
	out, err := runShort("ip", "-n", n.NS, "-4", "route", "show", "dev", "weft-vxlan")
	if err != nil {
		return nil, err
	}
	var ps []netip.Prefix
	for _, l := range trimLines(out) {
		dst := strings.Fields(l)[0]
		if !strings.Contains(dst, "/") {
			dst += "/32"
		}
		if p, err := netip.ParsePrefix(dst); err == nil {
			ps = append(ps, p)
		}
	}
	return ps, nil
}

// Block is a weft block claim (a Lease labelled weft.dev/block=true).
type Block struct {
	Name, CIDR, Holder string
}

// Blocks lists weft's block claims.
func (c *Cluster) Blocks() ([]Block, error) {
	var l struct {
		Items []struct {
			Metadata struct {
				Name        string
				Annotations map[string]string
			}
			Spec struct{ HolderIdentity string }
		}
	}
	if err := c.KubectlJSON(&l, "get", "leases", "-n", "kube-system", "-l", "weft.dev/block=true"); err != nil {
		return nil, err
	}
	var out []Block
	for _, it := range l.Items {
		out = append(out, Block{Name: it.Metadata.Name, CIDR: it.Metadata.Annotations["weft.dev/block"], Holder: it.Spec.HolderIdentity})
	}
	return out, nil
}

// podProcess finds the host pid of the `netcheck serve` process of the pod called name
// (by the POD_NAME in its environment), to enter the pod's network namespace without
// the API server.
func podProcess(name string) (int, error) {
	for pid := range readProcs() {
		cmdline, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
		if err != nil || !strings.HasPrefix(string(cmdline), "/netcheck\x00serve") {
			continue
		}
		environ, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "environ"))
		for _, e := range strings.Split(string(environ), "\x00") {
			if e == "POD_NAME="+name {
				return pid, nil
			}
		}
	}
	return 0, fmt.Errorf("no netcheck process of pod %s", name)
}
