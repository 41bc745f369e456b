package dataplane

import (
	"fmt"
	"sync"
)

// Kernel reads and changes kernel state of the current network namespace.
//
// NewKernel is the real one; FakeKernel keeps the state in memory for tests.
type Kernel interface {
	// Observe reads the state Plan needs, for the named bridge and VXLAN device.
	Observe(bridge, vxlan string) (Observed, error)
	// Apply makes one change. Adding what already exists as asked, or deleting what is
	// already gone, is not an error.
	Apply(Op) error
}

// Result is what one Reconcile applied.
type Result struct {
	// Ops are the applied changes in order; empty means the kernel had not drifted.
	// When Reconcile fails, Ops are the ones applied before the failing one.
	Ops []Op
	// Ignored says which peers, or blocks of peers, were left out of the plan and why:
	// malformed, or in conflict with this node or with a peer earlier by name (each wraps
	// ErrInvalidDesired). The rest was reconciled; log these, they are another node's
	// problem and clear up when that node is fixed.
	Ignored []error
	// Observed is the kernel state the plan started from (zero if it could not be read):
	// what had drifted before this Reconcile repaired it.
	Observed Observed
}

// Reconciler makes the kernel match a Desired: observe, plan, apply the difference.
// It is safe for concurrent use; reconciles run one at a time.
type Reconciler struct {
	mu sync.Mutex
	k  Kernel
}

// NewReconciler returns a Reconciler acting through k (NewKernel() in the agent).
func NewReconciler(k Kernel) *Reconciler {
	return &Reconciler{k: k}
}

// Reconcile reads the kernel, plans the difference to d (see Plan) and applies it in order.
// It stops at the first failing op, because later ops rely on earlier ones (a route needs
// its neighbour entry); the next Reconcile picks up from whatever state that left.
//
// If d's own part (everything but Peers) is invalid, it changes nothing and says why.
// Peers come from other nodes, so one bad peer must not stop this node: a malformed or
// conflicting peer, or a contested block, is left out and reported in Result.Ignored.
func (r *Reconciler) Reconcile(d Desired) (Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := d.validateNode(); err != nil {
		return Result{}, fmt.Errorf("dataplane: not reconciling, fix the node's configuration: %w", err)
	}
	var res Result
	d.Peers, res.Ignored = d.usablePeers()
	o, err := r.k.Observe(d.Bridge.Name, d.VXLAN.Name)
	if err != nil {
		return res, fmt.Errorf("dataplane: reading kernel state: %w", err)
	}
	res.Observed = o
	ops := Plan(d, o)
	for i, op := range ops {
		if err := r.k.Apply(op); err != nil {
			return res, fmt.Errorf("dataplane: applying change %d of %d (%s): %w; the next reconcile retries from the current state", i+1, len(ops), op, err)
		}
		res.Ops = append(res.Ops, op)
	}
	return res, nil
}
