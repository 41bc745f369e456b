package k8s

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// InternalIP is the node's first IPv4 InternalIP address.
func InternalIP(n *corev1.Node) (netip.Addr, bool) {
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(a.Address); err == nil && ip.Is4() {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

// NodeInternalIP reads Node name from the API server and returns its InternalIP: the
// agent's underlay address.
func NodeInternalIP(ctx context.Context, c Client, name string) (netip.Addr, error) {
	n, err := c.Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return netip.Addr{}, fmt.Errorf("reading Node %s: %w", name, err)
	}
	ip, ok := InternalIP(n)
	if !ok {
		return netip.Addr{}, fmt.Errorf("Node %s has no IPv4 InternalIP (addresses %v): start the kubelet with --node-ip, or pass --underlay-ip", name, n.Status.Addresses)
	}
	return ip, nil
}

// Nodes watches the cluster's Node objects. It is the agent's Discovery (every Node's
// InternalIP), its agent.Changer (a signal on every relevant change) and, through
// Allowed, its PeerFilter (a deleted Node's routes go at once).
type Nodes struct {
	self     string
	log      *slog.Logger
	ctx      context.Context // of Start: the informer's list and watch calls
	informer cache.SharedIndexInformer
	lister   corelisters.NodeLister
	changed  chan struct{}
	onDelete func(name string)
}

// NewNodes prepares the watch; Start starts it. onDelete (optional) runs in its own
// goroutine for every Node deleted other than self.
func NewNodes(c Client, self string, log *slog.Logger, onDelete func(name string)) (*Nodes, error) {
	n := &Nodes{self: self, log: log, ctx: context.Background(), changed: make(chan struct{}, 1), onDelete: onDelete}
	lw := &cache.ListWatch{
		ListFunc: func(opts metav1.ListOptions) (runtime.Object, error) { return c.Nodes().List(n.ctx, opts) },
		WatchFunc: func(opts metav1.ListOptions) (watch.Interface, error) {
			return c.Nodes().Watch(n.ctx, opts)
		},
	}
	n.informer = cache.NewSharedIndexInformer(lw, &corev1.Node{}, 0, cache.Indexers{})
	n.lister = corelisters.NewNodeLister(n.informer.GetIndexer())
	_, err := n.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { n.signal() },
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := oldObj.(*corev1.Node)
			nn, ok2 := newObj.(*corev1.Node)
			if !ok1 || !ok2 || !slices.Equal(o.Status.Addresses, nn.Status.Addresses) {
				n.signal()
			}
		},
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			node, ok := obj.(*corev1.Node)
			if !ok {
				return
			}
			n.log.Info("Node deleted: dropping its routes and reclaiming its blocks", "node", node.Name)
			n.signal()
			if node.Name != n.self && n.onDelete != nil {
				go n.onDelete(node.Name)
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("watching Nodes: %w", err)
	}
	return n, nil
}

// Start runs the watch until ctx ends.
func (n *Nodes) Start(ctx context.Context) {
	n.ctx = ctx
	go n.informer.Run(ctx.Done())
}

// WaitSynced waits until the first list arrived or ctx ended.
func (n *Nodes) WaitSynced(ctx context.Context) bool {
	return cache.WaitForCacheSync(ctx.Done(), n.informer.HasSynced)
}

func (n *Nodes) signal() {
	select {
	case n.changed <- struct{}{}:
	default:
	}
}

// Changed implements agent.Changer.
func (n *Nodes) Changed() <-chan struct{} { return n.changed }

// ErrNotSynced means the Node list has not arrived yet.
var ErrNotSynced = errors.New("the Node list has not arrived from the API server yet")

// Peers implements agent.Discovery: the InternalIP of every Node but self, from the
// informer's cache, so it keeps answering while the API server is down.
func (n *Nodes) Peers(context.Context) ([]string, error) {
	if !n.informer.HasSynced() {
		return nil, ErrNotSynced
	}
	nodes, err := n.lister.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	var out []string
	for _, node := range nodes {
		if node.Name == n.self {
			continue
		}
		if ip, ok := InternalIP(node); ok {
			out = append(out, ip.String())
		}
	}
	slices.Sort(out)
	return out, nil
}

// Allowed is the agent's PeerFilter: false for a peer whose Node does not exist. Until the
// first list arrived every peer is allowed.
func (n *Nodes) Allowed(name string) bool {
	if !n.informer.HasSynced() {
		return true
	}
	_, err := n.lister.Get(name)
	return !apierrors.IsNotFound(err)
}

// Reclaimer reclaims the blocks of deleted Nodes: at once for each deletion it sees
// (Nodes' onDelete), and periodically for claims whose holder has no Node.
type Reclaimer struct {
	Store    *LeaseStore
	Self     string
	Log      *slog.Logger
	Interval time.Duration // how often to look for orphans; 0: 5 minutes
	MinAge   time.Duration // younger claims are never orphans; 0: 1 minute
}

// NodeDeleted reclaims node's blocks, retrying a few times while the API server fails.
func (r *Reclaimer) NodeDeleted(ctx context.Context, node string) {
	_ = Retry(ctx, r.Log, "reclaiming the blocks of deleted Node "+node, func(ctx context.Context) error {
		freed, err := r.Store.ReleaseNode(ctx, node)
		if len(freed) > 0 {
			r.Log.Info("reclaimed blocks of a deleted Node", "node", node, "blocks", freed)
		}
		return err
	})
}

// Run reclaims orphaned claims once the Node list has arrived and then every Interval,
// until ctx ends.
func (r *Reclaimer) Run(ctx context.Context, nodes *Nodes) {
	interval, minAge := r.Interval, r.MinAge
	if interval <= 0 {
		interval = 5 * time.Minute
	}
	if minAge <= 0 {
		minAge = time.Minute
	}
	if !nodes.WaitSynced(ctx) {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		freed, err := r.Store.ReclaimOrphans(cctx, r.Self, nodes.Allowed, minAge)
		cancel()
		if err != nil {
			r.Log.Warn("reclaiming blocks of nodes that no longer exist (will retry)", "err", err)
		}
		if len(freed) > 0 {
			r.Log.Info("reclaimed blocks whose node no longer exists", "blocks", freed)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
