package k8s

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ReasonUp is the reason weft gives when it clears NetworkUnavailable.
const ReasonUp = "WeftIsUp"

// SetNetworkAvailable sets node's NetworkUnavailable condition to False (reason WeftIsUp)
// with a strategic-merge patch of the status, unless it already says so.
func SetNetworkAvailable(ctx context.Context, c Client, node string) error {
	n, err := c.Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("reading Node %s: %w", node, err)
	}
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeNetworkUnavailable && cond.Status == corev1.ConditionFalse && cond.Reason == ReasonUp {
			return nil
		}
	}
	now := metav1.NewTime(time.Now())
	patch, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{{
		Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionFalse, Reason: ReasonUp,
		Message: "weft has set up this node's pod network", LastTransitionTime: now, LastHeartbeatTime: now,
	}}}})
	if err != nil {
		return err
	}
	if _, err := c.Nodes().PatchStatus(ctx, node, patch); err != nil {
		return fmt.Errorf("clearing NetworkUnavailable on Node %s: %w (does weft's ClusterRole allow patch on nodes/status?)", node, err)
	}
	return nil
}
