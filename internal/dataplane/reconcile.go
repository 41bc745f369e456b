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
	// Observed is the state the plan started from (zero if it could not be read): what
	// had drifted before this Reconcile repaired it. Read tells whether it was read from
	// the kernel (Reconcile) or is the model kept since the last read (Update).
	Observed Observed
	Read     bool
}

// Reconciler makes the kernel match a Desired: observe, plan, apply the difference.
// It is safe for concurrent use; reconciles run one at a time.
//
// Reading the kernel is most of a reconcile's cost at hundreds of peers (a dump of every
// route, neighbour and FDB entry), and every node reconciles on every membership change.
// So besides Reconcile, which reads the kernel, there is Update, which plans against the
// state the last read found, changed by the ops applied since (the same model as
// FakeKernel's). Update is for reacting to the cluster; the periodic Reconcile is what
// finds and repairs changes made by anyone else.
type Reconciler struct {
	mu sync.Mutex
	k  Kernel
	// model is the kernel state as last read plus the ops applied since; nil when it is
	// not known well enough (never read, a failed op, or a link op whose result the kernel
	// fills in), and the next Update reads the kernel.
	model *Observed
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
func (r *Reconciler) Reconcile(d Desired) (Result, error) { return r.run(d, true) }

// Update is Reconcile without reading the kernel, when the state of the last read is
// still known: it plans against that state as changed by the ops applied since. Entries
// someone else changed in the meantime are repaired by the next Reconcile. Its ops are
// idempotent, so planning against a slightly stale state does no harm.
func (r *Reconciler) Update(d Desired) (Result, error) { return r.run(d, false) }

func (r *Reconciler) run(d Desired, read bool) (Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := d.validateNode(); err != nil {
		return Result{}, fmt.Errorf("dataplane: not reconciling, fix the node's configuration: %w", err)
	}
	var res Result
	d.Peers, res.Ignored = d.usablePeers()
	if read || r.model == nil {
		o, err := r.k.Observe(d.Bridge.Name, d.VXLAN.Name)
		if err != nil {
			r.model = nil
			return res, fmt.Errorf("dataplane: reading kernel state: %w", err)
		}
		r.model = ptr(clone(o))
		res.Observed, res.Read = o, true
	} else {
		res.Observed = clone(*r.model)
	}
	ops := Plan(d, res.Observed)
	for i, op := range ops {
		if err := r.k.Apply(op); err != nil {
			r.model = nil
			return res, fmt.Errorf("dataplane: applying change %d of %d (%s): %w; the next reconcile retries from the current state", i+1, len(ops), op, err)
		}
		res.Ops = append(res.Ops, op)
		if r.model != nil && (!modelled(op) || r.model.apply(op) != nil) {
			r.model = nil
		}
	}
	return res, nil
}

// modelled reports whether op's effect on the kernel is exactly what Observed.apply
// makes of it. Link changes are not: the kernel fills in what the op leaves open.
func modelled(op Op) bool {
	switch op.(type) {
	case RouteAdd, RouteReplace, RouteDel, NeighSet, NeighDel, FDBSet, FDBDel, AddrAdd, AddrDel, SysctlSet, NFTTableSet:
		return true
	}
	return false
}
