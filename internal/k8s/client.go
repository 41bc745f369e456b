package k8s

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/weftnet/weft/internal/version"
)

// DefaultNamespace holds weft's Leases and Secret.
const DefaultNamespace = "kube-system"

// NewClient connects with kubeconfig, or with the pod's service account when kubeconfig
// is "".
func NewClient(kubeconfig string) (kubernetes.Interface, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster API config: %w (outside a pod, pass --kubeconfig)", err)
		}
	} else if cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig); err != nil {
		return nil, fmt.Errorf("reading --kubeconfig %s: %w", kubeconfig, err)
	}
	cfg.UserAgent = "weft/" + version.Version
	cfg.QPS, cfg.Burst = 20, 40
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("API client: %w", err)
	}
	return c, nil
}

// callTimeout bounds each single API call, so a hung API server shows up as an error.
const callTimeout = 15 * time.Second

// Retry runs fn until it succeeds or ctx ends, with backoff from 1 s to 30 s, logging each
// failure: start-up steps wait out an API server that is not there yet.
func Retry(ctx context.Context, log *slog.Logger, what string, fn func(context.Context) error) error {
	wait := time.Second
	for {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		err := fn(cctx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		log.Warn(what+" (will retry)", "err", err, "retry", wait)
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, err)
		case <-time.After(wait):
		}
		wait = min(2*wait, 30*time.Second)
	}
}
