package cni

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/utils"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/api"
)

// Check handles CNI CHECK: the agent must still hold the lease ADD got, with the address in
// prevResult, and the kernel must still have the pod interface up with that address and its
// routes, and the host end on the bridge.
func Check(args *skel.CmdArgs) error {
	cfg, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if err := utils.ValidateInterfaceName(args.IfName); err != nil {
		return err
	}
	if cfg.RawPrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig,
			"CHECK needs prevResult: the runtime must pass the result of this attachment's ADD", "")
	}
	if err := version.ParsePrevResult(&cfg.PluginConf); err != nil {
		return configError("CHECK's prevResult cannot be parsed", err.Error())
	}
	prev, err := current.NewResultFromResult(cfg.PrevResult)
	if err != nil {
		return configError("CHECK's prevResult cannot be read", err.Error())
	}
	addrs := podAddresses(prev, args.IfName)
	if len(addrs) == 0 {
		return checkFailed(fmt.Sprintf("prevResult has no address on %s", args.IfName))
	}

	lease, err := cfg.client().Check(context.Background(), api.Attachment{ContainerID: args.ContainerID, IfName: args.IfName})
	if err != nil {
		return agentError("CHECK", cfg.Socket, err)
	}
	if !slices.Contains(addrs, lease.Address) {
		return checkFailed(fmt.Sprintf("the weft agent's lease is for %s, but the pod got %v", lease.Address, addrs))
	}

	routes := podRoutes(lease.Gateway, lease.ClusterCIDR)
	for _, r := range prev.Routes {
		dst, ok := prefixOf(&r.Dst)
		gw, _ := netip.AddrFromSlice(r.GW)
		if ok && !slices.Contains(routes, podRoute{Dst: dst, GW: gw.Unmap()}) {
			routes = append(routes, podRoute{Dst: dst, GW: gw.Unmap()})
		}
	}

	podNS, err := openPodNS(args.Netns)
	if err != nil {
		return err
	}
	defer podNS.Close()
	if err := podNS.Do(func(ns.NetNS) error { return verifyPod(args.IfName, addrs, routes) }); err != nil {
		return checkFailed(err.Error())
	}
	if err := verifyHost(api.HostVethName(args.ContainerID, args.IfName), lease.Bridge); err != nil {
		return checkFailed(err.Error())
	}
	return nil
}

func checkFailed(what string) *types.Error {
	return types.NewError(ErrCodeCheckFailed,
		"CHECK: "+what+": the pod's network is not as weft set it up; delete the pod so it is created again", "")
}

// podAddresses are the addresses prevResult puts on the pod interface ifName.
func podAddresses(r *current.Result, ifName string) []netip.Prefix {
	var out []netip.Prefix
	for _, ipc := range r.IPs {
		if ipc.Interface == nil || *ipc.Interface < 0 || *ipc.Interface >= len(r.Interfaces) {
			continue
		}
		if iface := r.Interfaces[*ipc.Interface]; iface.Name != ifName || iface.Sandbox == "" {
			continue
		}
		if p, ok := prefixOf(&ipc.Address); ok {
			out = append(out, p)
		}
	}
	return out
}

// verifyPod runs in the pod's namespace.
func verifyPod(ifName string, addrs []netip.Prefix, routes []podRoute) error {
	link, err := netlinksafe.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("interface %s: %w", ifName, err)
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("interface %s is down", ifName)
	}
	have, err := netlinksafe.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("listing addresses of %s: %w", ifName, err)
	}
	for _, want := range addrs {
		if !slices.ContainsFunc(have, func(a netlink.Addr) bool { p, ok := prefixOf(a.IPNet); return ok && p == want }) {
			return fmt.Errorf("address %s is missing on %s", want, ifName)
		}
	}
	kernel, err := netlinksafe.RouteList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("listing routes of %s: %w", ifName, err)
	}
	for _, want := range routes {
		if !slices.ContainsFunc(kernel, func(r netlink.Route) bool { return routeIs(r, want) }) {
			return fmt.Errorf("route %s dev %s is missing", want, ifName)
		}
	}
	return nil
}

func routeIs(r netlink.Route, want podRoute) bool {
	dst, ok := prefixOf(r.Dst)
	if !ok || dst != want.Dst {
		return false
	}
	gw, _ := netip.AddrFromSlice(r.Gw)
	return gw.Unmap() == want.GW
}

// verifyHost runs in the namespace weft-cni was started in.
func verifyHost(hostVeth, bridge string) error {
	link, err := netlinksafe.LinkByName(hostVeth)
	if err != nil {
		return fmt.Errorf("host end %s of the pod's veth: %w", hostVeth, err)
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("host end %s of the pod's veth is down", hostVeth)
	}
	br, err := netlinksafe.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", bridge, err)
	}
	if link.Attrs().MasterIndex != br.Attrs().Index {
		return fmt.Errorf("host end %s of the pod's veth is not attached to bridge %s", hostVeth, bridge)
	}
	return nil
}
