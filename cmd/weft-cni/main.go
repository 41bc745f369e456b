// Command weft-cni is weft's CNI plugin. The container runtime runs it for each pod
// interface; it asks the weft agent on the node for an address and wires the pod to the
// node's bridge. All logic lives in package internal/cni.
package main

import (
	"runtime"

	"github.com/containernetworking/cni/pkg/skel"
	cniversion "github.com/containernetworking/cni/pkg/version"

	"github.com/weftnet/weft/internal/cni"
	"github.com/weftnet/weft/internal/version"
)

func main() {
	// One ADD is one thread's work; with a hundred pods starting at once, idle Ps of a
	// hundred plugin processes only add threads for the kernel to schedule.
	runtime.GOMAXPROCS(1)
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    cni.Add,
		Del:    cni.Del,
		Check:  cni.Check,
		Status: cni.Status,
		GC:     cni.GC,
	}, cniversion.PluginSupports("0.3.1", "0.4.0", "1.0.0", "1.1.0"),
		"CNI plugin weft-cni "+version.Version+": pod networking for the weft overlay, through the weft agent on the node")
}
