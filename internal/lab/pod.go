package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
)

const (
	cniVersion   = "1.1.0"
	cniNetwork   = "weft"
	systemCNIDir = "/usr/lib/cni"
	podIfName    = "eth0"
	// cniTimeout bounds one CNI ADD or DEL.
	cniTimeout = 60 * time.Second
)

func (l *Lab) cniPath() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return []string{l.st.CNIBinDir, systemCNIDir}
}

func (l *Lab) cniConfig() *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir(l.cniPath(), filepath.Join(l.Dir(), cniCache), nil)
}

func conflistPath(n Node) string { return filepath.Join(n.Dir, "weft.conflist") }

// loadConflist reads the node's conflist. It parses bytes rather than using
// libcni.ConfListFromFile, which would also pick up plugin configs from a directory
// named after the network next to the file.
func loadConflist(n Node) (*libcni.NetworkConfigList, error) {
	b, err := os.ReadFile(conflistPath(n))
	if err != nil {
		return nil, err
	}
	list, err := libcni.ConfListFromBytes(b)
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", conflistPath(n), err)
	}
	return list, nil
}

// writeConflist writes the node's CNI network configuration list.
func (l *Lab) writeConflist(n Node) error {
	// weft-cni alone: it takes the pods' hostPorts itself (capability portMappings).
	b, err := json.MarshalIndent(map[string]any{
		"cniVersion": cniVersion,
		"name":       cniNetwork,
		"plugins": []map[string]any{{
			"type": "weft-cni", "socket": n.Socket, "capabilities": map[string]bool{"portMappings": true},
		}},
	}, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding conflist: %w", err)
	}
	if err := os.WriteFile(conflistPath(n), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("writing conflist of %s: %w", n.Name, err)
	}
	return nil
}

func (l *Lab) runtimeConf(p Pod) *libcni.RuntimeConf {
	var capArgs map[string]any
	if len(p.HostPorts) > 0 {
		var pm []map[string]any
		for _, h := range p.HostPorts {
			pm = append(pm, map[string]any{"hostPort": h.Host, "containerPort": h.Pod, "protocol": h.Protocol})
		}
		capArgs = map[string]any{"portMappings": pm}
	}
	return &libcni.RuntimeConf{
		CapabilityArgs: capArgs,
		ContainerID:    p.ContainerID,
		NetNS:          nsPath(p.Namespace),
		IfName:         podIfName,
		Args: [][2]string{
			{"K8S_POD_NAMESPACE", "default"},
			{"K8S_POD_NAME", p.Name},
		},
	}
}

// inNode runs f in the node's namespace: libcni executes plugins in its caller's
// namespace, and weft-cni puts the host end of the pod veth there.
func inNode(n Node, f func() error) error { return inNamespace(n.Namespace, n.Name, f) }

// inNamespace runs f on a thread in the network namespace called name; what names it in
// the error when it cannot be opened.
func inNamespace(name, what string, f func() error) error {
	h, err := ns.GetNS(nsPath(name))
	if err != nil {
		return fmt.Errorf("opening namespace of %s: %w", what, err)
	}
	defer h.Close()
	return h.Do(func(ns.NetNS) error { return f() })
}

// AddPod creates pod name on node: a namespace wired by weft-cni through libcni, with the
// given host ports passed as a runtime passes a pod's hostPorts. It returns the pod with
// its address.
func (l *Lab) AddPod(ctx context.Context, node, name string, ports ...HostPort) (Pod, error) {
	var p Pod
	err := l.mutate(func() (err error) {
		l.ensureNeighCapacity(l.podsPerNode(node))
		p, err = l.addPod(ctx, node, name, ports...)
		return err
	})
	return p, err
}

func (l *Lab) addPod(ctx context.Context, node, name string, ports ...HostPort) (Pod, error) {
	if err := validPodName(name); err != nil {
		return Pod{}, err
	}
	n, err := l.node(node)
	if err != nil {
		return Pod{}, err
	}
	l.mu.Lock()
	lab := l.st.Name
	for _, p := range l.st.Pods {
		if p.Node == node && p.Name == name {
			l.mu.Unlock()
			return Pod{}, fmt.Errorf("pod %s/%s exists already (%s): delete it first or pick another name", node, name, p.Address)
		}
	}
	p := Pod{
		Node:        node,
		Name:        name,
		Namespace:   n.Namespace + "-" + name,
		ContainerID: lab + "-" + node + "-" + name,
		HostPorts:   ports,
	}
	// Record the pod before making anything, so Down finds a half-made pod.
	l.st.Pods = append(l.st.Pods, p)
	l.mu.Unlock()
	if err := l.save(); err != nil {
		l.forgetPod(node, name)
		return Pod{}, err
	}
	fail := func(err error) (Pod, error) {
		_ = deleteNS(p.Namespace)
		l.forgetPod(node, name)
		_ = l.save()
		return Pod{}, err
	}
	if err := createNS(p.Namespace); err != nil {
		return fail(err)
	}
	list, err := loadConflist(n)
	if err != nil {
		return fail(fmt.Errorf("reading the CNI config of %s (was the lab built completely?): %w", node, err))
	}
	cni := l.cniConfig()
	rt := l.runtimeConf(p)
	actx, cancel := context.WithTimeout(ctx, cniTimeout)
	defer cancel()
	var res *types100.Result
	err = inNode(n, func() error {
		r, err := cni.AddNetworkList(actx, list, rt)
		if err != nil {
			return err
		}
		res, err = types100.NewResultFromResult(r)
		return err
	})
	if err != nil {
		// As a runtime does: a failed ADD is followed by a DEL to release what was taken.
		dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), cniTimeout)
		_ = inNode(n, func() error { return cni.DelNetworkList(dctx, list, rt) })
		dcancel()
		return fail(fmt.Errorf("CNI ADD of pod %s/%s failed: %w (see %s)", node, name, err, filepath.Join(n.Dir, "agent.log")))
	}
	addr, err := podAddress(res)
	if err != nil {
		return fail(fmt.Errorf("CNI ADD of pod %s/%s: %w", node, name, err))
	}
	p.Address = addr
	l.mu.Lock()
	for i := range l.st.Pods {
		if l.st.Pods[i].Node == node && l.st.Pods[i].Name == name {
			l.st.Pods[i].Address = addr
		}
	}
	l.mu.Unlock()
	if err := l.save(); err != nil {
		return p, err
	}
	l.logf("%s: pod %s at %s", node, name, addr)
	return p, nil
}

// podAddress picks the pod's IPv4 address on eth0 from a CNI result.
func podAddress(r *types100.Result) (netip.Prefix, error) {
	var fallback netip.Prefix
	for _, ip := range r.IPs {
		a, ok := netip.AddrFromSlice(ip.Address.IP)
		if !ok {
			continue
		}
		a = a.Unmap()
		bits, _ := ip.Address.Mask.Size()
		pfx := netip.PrefixFrom(a, bits)
		if !a.Is4() {
			continue
		}
		if ip.Interface != nil && *ip.Interface >= 0 && *ip.Interface < len(r.Interfaces) {
			iface := r.Interfaces[*ip.Interface]
			if iface.Sandbox != "" && iface.Name == podIfName {
				return pfx, nil
			}
		}
		if !fallback.IsValid() {
			fallback = pfx
		}
	}
	if fallback.IsValid() {
		return fallback, nil
	}
	return netip.Prefix{}, fmt.Errorf("the CNI result has no IPv4 address (result: %v)", r.IPs)
}

func (l *Lab) forgetPod(node, name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.st.Pods = slices.DeleteFunc(l.st.Pods, func(p Pod) bool { return p.Node == node && p.Name == name })
}

// DelPod runs CNI DEL for the pod (inside the node's namespace) and deletes its
// namespace. If DEL fails, the pod is kept so the call can be retried.
func (l *Lab) DelPod(ctx context.Context, node, name string) error {
	return l.mutate(func() error {
		n, err := l.node(node)
		if err != nil {
			return err
		}
		var p Pod
		found := false
		l.mu.Lock()
		for _, q := range l.st.Pods {
			if q.Node == node && q.Name == name {
				p, found = q, true
			}
		}
		l.mu.Unlock()
		if !found {
			return fmt.Errorf("lab %s has no pod %s/%s (see %s)", l.Name(), node, name, l.cli("status"))
		}
		if err := l.cniDel(ctx, n, p); err != nil {
			return fmt.Errorf("CNI DEL of pod %s/%s failed, pod kept: %w (is the agent of %s running? %s removes it regardless)", node, name, err, node, l.cli("down"))
		}
		if err := deleteNS(p.Namespace); err != nil {
			return err
		}
		l.forgetPod(node, name)
		l.logf("%s: pod %s deleted", node, name)
		return l.save()
	})
}

func (l *Lab) cniDel(ctx context.Context, n Node, p Pod) error {
	list, err := loadConflist(n)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil // never got as far as CNI
		}
		return fmt.Errorf("reading the CNI config of %s: %w", n.Name, err)
	}
	cni := l.cniConfig()
	dctx, cancel := context.WithTimeout(ctx, cniTimeout)
	defer cancel()
	return inNode(n, func() error { return cni.DelNetworkList(dctx, list, l.runtimeConf(p)) })
}
