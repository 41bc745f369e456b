package agent

import "context"

// Changer is an optional interface of a Discovery whose peers can change while the agent
// runs (Kubernetes Node discovery): on every signal of Changed the agent joins the new
// peers at once and recomputes its desired state, which also re-applies Config.PeerFilter.
type Changer interface {
	Changed() <-chan struct{}
}

// watchDiscovery reacts to Changer signals; without a Changer the join loop's timer alone
// picks up new peers.
func (a *Agent) watchDiscovery(ctx context.Context) {
	c, ok := a.cfg.Discovery.(Changer)
	if !ok {
		return
	}
	ch := c.Changed()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ch:
			a.joinMissing(ctx)
			a.requestReconcile()
		}
	}
}

func (a *Agent) peerAllowed(name string) bool {
	return a.cfg.PeerFilter == nil || a.cfg.PeerFilter(name)
}

// becameReady runs Config.OnReady without holding up the reconcile loop: the hook may
// talk to the API server.
func (a *Agent) becameReady() {
	if a.cfg.OnReady != nil {
		go a.cfg.OnReady()
	}
}
