package cni

import (
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/weftnet/weft/internal/api"
)

// weft-cni's own error codes. The CNI spec leaves codes 100 and up to plugins.
const (
	// ErrCodeExhausted: the agent has no free address and no block left to claim.
	ErrCodeExhausted uint = 100
	// ErrCodeInterfaceExists: CNI_IFNAME already exists in the pod's network namespace.
	ErrCodeInterfaceExists uint = 101
	// ErrCodeCheckFailed: CHECK found the pod's network not as ADD left it.
	ErrCodeCheckFailed uint = 102
)

// agentError turns an error from the agent client into the CNI error the runtime gets, with
// what to do about it. op names the call ("ADD", ...) for the message.
func agentError(op, socket string, err error) *types.Error {
	var e *types.Error
	switch {
	case errors.As(err, &e):
		return e
	case errors.Is(err, api.ErrUnreachable):
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("%s: weft agent unreachable at %s: check that the weft pod on this node is running; the runtime will retry", op, socket),
			err.Error())
	case errors.Is(err, api.ErrNotReady):
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("%s: weft agent on this node is not ready yet: the runtime will retry; if it stays so, read the agent's log", op),
			err.Error())
	case errors.Is(err, api.ErrExhausted):
		return types.NewError(ErrCodeExhausted,
			fmt.Sprintf("%s: cluster CIDR exhausted: widen --cluster-cidr of the weft agents, or delete pods that are no longer needed", op),
			err.Error())
	case errors.Is(err, api.ErrNotFound):
		return types.NewError(ErrCodeCheckFailed,
			fmt.Sprintf("%s: the weft agent holds no address for this pod interface (freed by GC or lost): delete the pod so it is created again", op),
			err.Error())
	case errors.Is(err, api.ErrBadPortMapping):
		return types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("%s: the weft agent cannot forward one of the pod's hostPorts: fix the pod's hostPort", op),
			err.Error())
	case errors.Is(err, api.ErrInvalid):
		return types.NewError(types.ErrInternal,
			fmt.Sprintf("%s: the weft agent rejected weft-cni's request: weft-cni and the agent probably come from different releases; install one release of weft on the node", op),
			err.Error())
	default:
		return types.NewError(types.ErrInternal,
			fmt.Sprintf("%s: the weft agent failed: read its log on this node", op),
			err.Error())
	}
}

// statusError maps a failed STATUS to code 50 (plugin not available), which tells the
// runtime not to schedule pods onto this network yet.
func statusError(socket string, err error) *types.Error {
	msg := "weft agent failed to report its status: read its log on this node"
	switch {
	case errors.Is(err, api.ErrUnreachable):
		msg = fmt.Sprintf("weft agent unreachable at %s: start the weft pod on this node (is the weft DaemonSet installed and its pod running?)", socket)
	case errors.Is(err, api.ErrNotReady):
		msg = "weft agent on this node is not ready: read its log for why"
	}
	return types.NewError(types.ErrPluginNotAvailable, msg, err.Error())
}

// internalError is for failures weft-cni cannot classify further (netlink and the like).
func internalError(msg string, err error) *types.Error {
	return types.NewError(types.ErrInternal, msg, err.Error())
}
