package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/weftnet/weft/internal/dataplane"
	"github.com/weftnet/weft/internal/ipam"
)

// Config is everything the agent needs.
type Config struct {
	NodeName   string
	UnderlayIP netip.Addr // the node's address on the underlay network
	GossipPort int
	GossipKey  []byte // nil: no gossip encryption
	// GossipTimeScale stretches every gossip timer (cluster.Config.TimeScale); benchmarks only.
	GossipTimeScale float64
	Discovery       Discovery
	Socket          string
	HTTPAddr        string // health probes (and metrics); "" disables
	ProbePort       int    // UDP port of the peer health probes and their responder (weft: 6785); 0 disables
	StatePath       string // IPAM lease file
	Claims          ipam.ClaimStore
	ClusterCIDR     netip.Prefix
	BlockBits       int
	MTU             int // 0: underlay MTU minus the VXLAN overhead
	Resync          time.Duration
	// SyncGrace is how long the agent waits for a first successful join before it allows
	// itself to delete kernel entries of nodes it has not heard of.
	SyncGrace time.Duration
	Logger    *slog.Logger
	Verbose   bool
	// Kernel is where the dataplane is reconciled; nil means this network namespace's
	// kernel (tests pass dataplane.FakeKernel).
	Kernel dataplane.Kernel
	// FastPath loads weft's BPF fast path for pod-to-pod traffic where the kernel can run
	// it (package fastpath); off, an agent takes off any fast path an earlier one left.
	// Only with the real kernel: tests with a fake Kernel leave it off.
	FastPath bool
	// realKernel: Kernel is this namespace's (set by validate), so the fast path, or the
	// removal of an earlier agent's, acts on the same kernel.
	realKernel bool

	// Integration hooks (Kubernetes mode; see hooks.go). All optional.

	// PeerFilter drops the peers it returns false for from the desired state even while
	// gossip reports them alive (Kubernetes: a Node that was deleted). nil keeps every peer.
	PeerFilter func(name string) bool
	// OnReady runs once, in a goroutine of its own, when the dataplane is first reconciled.
	OnReady func()
	// SpareBlocks is how many empty address blocks IPAM keeps claimed beyond those in use,
	// so pods still start while the claim store is unreachable.
	SpareBlocks int
}

func (c *Config) validate() error {
	switch {
	case c.NodeName == "":
		return errors.New("no node name: pass --node-name")
	case !c.UnderlayIP.Is4():
		return fmt.Errorf("underlay address %v: pass --underlay-ip with this node's IPv4 address", c.UnderlayIP)
	case c.Socket == "":
		return errors.New("no socket path: pass --socket")
	case c.Claims == nil:
		return errors.New("no block claim store configured")
	case c.ClusterCIDR.Contains(c.UnderlayIP):
		return fmt.Errorf("the underlay address %s lies inside the cluster CIDR %s: choose a --cluster-cidr that does not overlap the node network", c.UnderlayIP, c.ClusterCIDR)
	case c.MTU != 0 && (c.MTU < 576 || c.MTU > 65000):
		return fmt.Errorf("--mtu %d: must be between 576 and 65000, or 0 to derive it from the underlay", c.MTU)
	}
	if c.Resync <= 0 {
		c.Resync = 5 * time.Second
	}
	if c.SyncGrace <= 0 {
		c.SyncGrace = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Kernel == nil {
		c.Kernel = dataplane.NewKernel()
		c.realKernel = true
	}
	if c.Discovery == nil {
		c.Discovery = StaticPeers(nil)
	}
	return nil
}

// Discovery tells the agent which peers to join. The static list comes from --peers;
// Kubernetes Node discovery plugs in here too.
type Discovery interface {
	Peers(ctx context.Context) ([]string, error)
}

// StaticPeers is a fixed list of peer addresses ("ip" or "ip:port").
type StaticPeers []string

// Peers implements Discovery.
func (s StaticPeers) Peers(context.Context) ([]string, error) { return s, nil }
