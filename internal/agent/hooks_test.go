package agent

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/dataplane"
)

// changingPeers is a Discovery with a change signal that counts its Peers calls.
type changingPeers struct {
	calls atomic.Int32
	ch    chan struct{}
}

func (c *changingPeers) Peers(context.Context) ([]string, error) { c.calls.Add(1); return nil, nil }
func (c *changingPeers) Changed() <-chan struct{}                { return c.ch }

// TestHooks: OnReady runs once when the dataplane is first reconciled, a Changer's signal
// makes the agent look at its peers at once, and PeerFilter is consulted.
func TestHooks(t *testing.T) {
	ready := make(chan struct{}, 4)
	disc := &changingPeers{ch: make(chan struct{}, 1)}
	startAgentWith(t, t.TempDir(), &dataplane.FakeKernel{}, func(c *Config) {
		c.OnReady = func() { ready <- struct{}{} }
		c.Discovery = disc
		c.PeerFilter = func(string) bool { return true }
		c.Resync = time.Hour // only the signal may trigger a Peers call below
	})
	select {
	case <-ready:
	case <-time.After(5 * time.Second):
		t.Fatal("OnReady did not run")
	}
	before := disc.calls.Load()
	disc.ch <- struct{}{}
	deadline := time.Now().Add(5 * time.Second)
	for disc.calls.Load() == before {
		if time.Now().After(deadline) {
			t.Fatal("a Changed signal did not make the agent ask for peers")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	if len(ready) != 0 {
		t.Error("OnReady ran more than once")
	}
}
