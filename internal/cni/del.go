package cni

import (
	"context"
	"errors"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/utils"

	"github.com/weftnet/weft/internal/api"
)

// Del handles CNI DEL. It is idempotent: an attachment with no veth, no namespace (empty or
// gone CNI_NETNS) or no lease is simply already deleted.
//
// The veth goes first, by its host end: HostVethName is derived from the attachment, and
// deleting one end of a veth deletes both. So DEL needs neither the pod's namespace nor any
// state, and never touches a pod interface weft did not create (say, after an ADD that failed
// because another network already had CNI_IFNAME). Then the agent frees the lease; if it
// cannot be reached, DEL fails with code 11 so that the runtime tries again.
func Del(args *skel.CmdArgs) error {
	cfg, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if err := utils.ValidateInterfaceName(args.IfName); err != nil {
		return err
	}
	if err := deleteVeth(api.HostVethName(args.ContainerID, args.IfName)); err != nil {
		return internalError("deleting the pod's veth failed: the runtime will retry; check the node's kernel log if it keeps failing", err)
	}
	err = cfg.client().Del(context.Background(), api.Attachment{ContainerID: args.ContainerID, IfName: args.IfName})
	if err != nil && !errors.Is(err, api.ErrNotFound) {
		return agentError("DEL", cfg.Socket, err)
	}
	return nil
}
