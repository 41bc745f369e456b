package cni

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/utils"
	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/api"
)

// Add handles CNI ADD: it asks the agent for a lease, creates the veth (CNI_IFNAME in the
// pod, HostVethName in the current namespace), wires both ends and prints the result. A
// failed ADD deletes the veth and releases the lease again.
func Add(args *skel.CmdArgs) error {
	cfg, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if err := utils.ValidateInterfaceName(args.IfName); err != nil {
		return err
	}
	podNS, err := openPodNS(args.Netns)
	if err != nil {
		return err
	}
	defer podNS.Close()

	pod, err := podHandle(podNS)
	if err != nil {
		return internalError("opening a netlink socket in the pod's network namespace", err)
	}
	defer pod.Close()

	// An interface of that name in the pod is either this attachment's, from an earlier ADD,
	// or someone else's: either way it is not ours to replace, and its lease (if any) stays.
	if _, err := pod.LinkByName(args.IfName); err == nil {
		return types.NewError(ErrCodeInterfaceExists,
			fmt.Sprintf("interface %q already exists in the pod's network namespace %s: this is a second ADD for the attachment, or another network owns the name; DEL this attachment first, or give this network another interface name", args.IfName, args.Netns), "")
	} else if !isNotFound(err) {
		return internalError(fmt.Sprintf("looking up %q in the pod's network namespace", args.IfName), err)
	}

	client := cfg.client()
	att := api.Attachment{ContainerID: args.ContainerID, IfName: args.IfName}
	podNamespace, podName := podArgs(args.Args)
	lease, err := client.Add(context.Background(), api.AddRequest{
		Attachment: att, Netns: args.Netns, PodNamespace: podNamespace, PodName: podName,
		PortMappings: cfg.RuntimeConfig.PortMappings,
	})
	if err != nil {
		return agentError("ADD", cfg.Socket, err)
	}

	hostName := api.HostVethName(args.ContainerID, args.IfName)
	success, vethMade := false, false
	defer func() {
		if success {
			return
		}
		// Best effort: the runtime answers a failed ADD with a DEL, which retries both.
		if vethMade {
			_ = deleteVeth(hostName)
		}
		_ = client.Del(context.Background(), att)
	}()

	if err := checkLease(lease, att); err != nil {
		return types.NewError(types.ErrInternal,
			"the weft agent handed out an unusable lease: this is a bug in the agent; report it with the agent's log", err.Error())
	}

	bridge, err := findBridge(lease.Bridge)
	if errors.Is(err, errNoBridge) {
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("bridge %q not found on this node: the weft agent has not set up the node's network yet; the runtime will retry, and the agent's log says why it is late", lease.Bridge),
			err.Error())
	}
	if err != nil {
		return internalError("finding the node's bridge failed: check the node's bridge and kernel log", err)
	}
	routes := podRoutes(lease.Gateway, lease.ClusterCIDR)
	hostIf, podIf, err := makeVeth(podNS, pod, hostName, args.IfName, lease.MTU, bridge)
	if err != nil {
		if errors.Is(err, errPodIfExists) {
			return types.NewError(ErrCodeInterfaceExists,
				fmt.Sprintf("interface %q appeared in the pod's network namespace %s while weft set it up: another plugin is configuring the same interface name; give one of the networks another name", args.IfName, args.Netns), err.Error())
		}
		return internalError("creating the pod's veth failed: the runtime will retry; if it keeps failing, check the node's kernel log", err)
	}
	vethMade = true
	if err := configurePod(pod, podIf, lease.Address, routes); err != nil {
		return internalError("setting up the pod's interface failed: the runtime will retry; if it keeps failing, check the node's kernel log", err)
	}
	gw := lease.Gateway.AsSlice()
	result := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: hostIf.Attrs().Name, Mac: hostIf.Attrs().HardwareAddr.String(), Mtu: hostIf.Attrs().MTU},
			{Name: podIf.Attrs().Name, Mac: podIf.Attrs().HardwareAddr.String(), Mtu: podIf.Attrs().MTU, Sandbox: args.Netns},
		},
		IPs: []*current.IPConfig{{Interface: current.Int(1), Address: *ipNet(lease.Address), Gateway: gw}},
	}
	for _, r := range routes[1:] { // the on-link gateway route is an implementation detail
		result.Routes = append(result.Routes, &types.Route{Dst: *ipNet(r.Dst), GW: gw})
	}
	if err := types.PrintResult(result, cfg.CNIVersion); err != nil {
		return internalError("printing the ADD result", err)
	}
	success = true
	return nil
}

// openPodNS opens the pod's network namespace and makes sure it is not the one weft-cni runs
// in: configuring "the pod" there would rewire the node.
func openPodNS(path string) (ns.NetNS, error) {
	podNS, err := ns.GetNS(path)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetNS,
			fmt.Sprintf("cannot open the pod's network namespace %q: the sandbox is gone or CNI_NETNS is wrong; the runtime should create the sandbox again", path),
			err.Error())
	}
	same, err := isCurrentNS(podNS)
	if err != nil {
		podNS.Close()
		return nil, internalError("comparing network namespaces", err)
	}
	if same {
		podNS.Close()
		return nil, types.NewError(types.ErrInvalidNetNS,
			fmt.Sprintf("CNI_NETNS %q is weft-cni's own network namespace, not a pod's: pass the pod sandbox's namespace", path), "")
	}
	return podNS, nil
}

func isCurrentNS(other ns.NetNS) (bool, error) {
	cur, err := ns.GetCurrentNS()
	if err != nil {
		return false, err
	}
	defer cur.Close()
	var a, b unix.Stat_t
	if err := unix.Fstat(int(cur.Fd()), &a); err != nil {
		return false, err
	}
	if err := unix.Fstat(int(other.Fd()), &b); err != nil {
		return false, err
	}
	return a.Dev == b.Dev && a.Ino == b.Ino, nil
}

// podArgs picks the pod's namespace and name out of CNI_ARGS ("K=V;K=V"). They only label
// the lease, so anything malformed is ignored rather than failing the pod.
func podArgs(cniArgs string) (namespace, name string) {
	for kv := range strings.SplitSeq(cniArgs, ";") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "K8S_POD_NAMESPACE":
			namespace = v
		case "K8S_POD_NAME":
			name = v
		}
	}
	return namespace, name
}

// checkLease rejects a lease weft-cni cannot wire: the pod would end up half connected.
func checkLease(l api.Lease, want api.Attachment) error {
	switch {
	case l.Attachment != (api.Attachment{}) && l.Attachment != want:
		return fmt.Errorf("lease is for %s/%s, asked for %s/%s", l.ContainerID, l.IfName, want.ContainerID, want.IfName)
	case !l.Address.IsValid() || !l.Address.Addr().Is4() || l.Address.Bits() == 0:
		return fmt.Errorf("address %s is not an IPv4 address with a prefix", l.Address)
	case !l.Gateway.IsValid() || !l.Gateway.Is4() || l.Gateway == l.Address.Addr():
		return fmt.Errorf("gateway %s is not an IPv4 address other than the pod's", l.Gateway)
	case !l.ClusterCIDR.IsValid() || !l.ClusterCIDR.Contains(l.Address.Addr()):
		return fmt.Errorf("cluster CIDR %s does not contain the pod address %s", l.ClusterCIDR, l.Address)
	case l.MTU < 68 || l.MTU > 65535:
		return fmt.Errorf("MTU %d is outside 68..65535", l.MTU)
	}
	if err := utils.ValidateInterfaceName(l.Bridge); err != nil {
		return fmt.Errorf("bridge name %q: %v", l.Bridge, err)
	}
	return nil
}
