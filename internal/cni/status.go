package cni

import (
	"context"
	"fmt"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/weftnet/weft/internal/api"
)

// Status handles CNI STATUS: the network is available when the agent answers and is ready.
func Status(args *skel.CmdArgs) error {
	cfg, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	st, err := cfg.client().Status(context.Background())
	if err != nil {
		return statusError(cfg.Socket, err)
	}
	if !st.Ready {
		if st.Reason == "" {
			st.Reason = "no reason given"
		}
		return types.NewError(types.ErrPluginNotAvailable,
			fmt.Sprintf("weft agent on node %q is not ready: %s; read the agent's log for why", st.Node, st.Reason), "")
	}
	return nil
}

// GC handles CNI GC: the agent frees every lease whose attachment is not in the runtime's
// list of valid attachments.
func GC(args *skel.CmdArgs) error {
	cfg, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	valid, err := gcAttachments(args.StdinData)
	if err != nil {
		return err
	}
	if _, err := cfg.client().GC(context.Background(), api.GCRequest{Valid: valid}); err != nil {
		return agentError("GC", cfg.Socket, err)
	}
	return nil
}
