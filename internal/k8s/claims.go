package k8s

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftnet/weft/internal/ipam"
)

// The claim objects' markers.
const (
	BlockLabel      = "weft.dev/block" // label, value "true"; and annotation, value the block
	blockNamePrefix = "weft-block-"
)

// LeaseStore is an ipam.ClaimStore that keeps one Lease per claimed block (see the
// package comment).
type LeaseStore struct {
	Client    Client
	Namespace string
}

var _ ipam.ClaimStore = (*LeaseStore)(nil)

// LeaseName is the name of block's claim: weft-block-10-32-0-64-26.
func LeaseName(block netip.Prefix) string {
	return blockNamePrefix + strings.NewReplacer(".", "-", "/", "-").Replace(block.String())
}

func (s *LeaseStore) leases() LeaseAPI {
	return s.Client.Leases(s.Namespace)
}

func holder(l *coordinationv1.Lease) string {
	if l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

// Claim implements ipam.ClaimStore: Create, and on AlreadyExists read who holds it.
func (s *LeaseStore) Claim(ctx context.Context, block netip.Prefix, node string) error {
	name := LeaseName(block)
	l := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: s.Namespace,
			Labels:      map[string]string{BlockLabel: "true", "app.kubernetes.io/name": "weft"},
			Annotations: map[string]string{BlockLabel: block.String()},
		},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &node},
	}
	for range 3 {
		_, err := s.leases().Create(ctx, l, metav1.CreateOptions{})
		if err == nil {
			return nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("claiming block %s (Lease %s/%s): %w", block, s.Namespace, name, err)
		}
		cur, err := s.leases().Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue // released in between: try again
		}
		if err != nil {
			return fmt.Errorf("reading the claim of block %s (Lease %s/%s): %w", block, s.Namespace, name, err)
		}
		if h := holder(cur); h != node {
			return fmt.Errorf("%s: %w (%s)", block, ipam.ErrClaimed, h)
		}
		return nil
	}
	return fmt.Errorf("%s: %w (its Lease keeps changing hands)", block, ipam.ErrClaimed)
}

// Release implements ipam.ClaimStore: delete the Lease if node holds it, on the condition
// that it is still the object just read.
func (s *LeaseStore) Release(ctx context.Context, block netip.Prefix, node string) error {
	name := LeaseName(block)
	for range 3 {
		cur, err := s.leases().Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading the claim of block %s (Lease %s/%s): %w", block, s.Namespace, name, err)
		}
		if holder(cur) != node {
			return nil
		}
		err = s.deleteExact(ctx, cur)
		if err == nil || apierrors.IsNotFound(err) {
			return nil
		}
		if !apierrors.IsConflict(err) {
			return fmt.Errorf("releasing block %s (Lease %s/%s): %w", block, s.Namespace, name, err)
		}
		// Changed since we read it: read again.
	}
	return fmt.Errorf("releasing block %s: its Lease %s/%s keeps changing; try again", block, s.Namespace, name)
}

// deleteExact deletes l only if the stored object is still l (same UID and version).
func (s *LeaseStore) deleteExact(ctx context.Context, l *coordinationv1.Lease) error {
	return s.leases().Delete(ctx, l.Name, metav1.DeleteOptions{
		Preconditions: &metav1.Preconditions{UID: &l.UID, ResourceVersion: &l.ResourceVersion},
	})
}

// Claim is one claimed block.
type Claim struct {
	Block   netip.Prefix
	Node    string
	Created time.Time
	lease   *coordinationv1.Lease
}

// Claims lists every block claim.
func (s *LeaseStore) Claims(ctx context.Context) ([]Claim, error) {
	list, err := s.leases().List(ctx, metav1.ListOptions{LabelSelector: BlockLabel + "=true"})
	if err != nil {
		return nil, fmt.Errorf("listing block claims (Leases in %s labelled %s=true): %w", s.Namespace, BlockLabel, err)
	}
	out := make([]Claim, 0, len(list.Items))
	for i := range list.Items {
		l := &list.Items[i]
		block, err := netip.ParsePrefix(l.Annotations[BlockLabel])
		if err != nil || LeaseName(block) != l.Name {
			continue // not one of ours, or tampered with: its name is what guards the block
		}
		out = append(out, Claim{Block: block, Node: holder(l), Created: l.CreationTimestamp.Time, lease: l})
	}
	return out, nil
}

// List implements ipam.ClaimStore.
func (s *LeaseStore) List(ctx context.Context) (map[netip.Prefix]string, error) {
	claims, err := s.Claims(ctx)
	if err != nil {
		return nil, err
	}
	out := make(map[netip.Prefix]string, len(claims))
	for _, c := range claims {
		out[c.Block] = c.Node
	}
	return out, nil
}

// ReleaseNode deletes every claim node holds (a deleted Node's blocks), each with the
// UID/resourceVersion precondition. Idempotent: many agents may do it at once.
func (s *LeaseStore) ReleaseNode(ctx context.Context, node string) ([]netip.Prefix, error) {
	return s.releaseWhere(ctx, func(c Claim) bool { return c.Node == node })
}

// ReclaimOrphans deletes the claims older than minAge whose holder is not a known node
// (known(name) false) and is not self.
func (s *LeaseStore) ReclaimOrphans(ctx context.Context, self string, known func(string) bool, minAge time.Duration) ([]netip.Prefix, error) {
	return s.releaseWhere(ctx, func(c Claim) bool {
		return c.Node != self && !known(c.Node) && time.Since(c.Created) >= minAge
	})
}

func (s *LeaseStore) releaseWhere(ctx context.Context, match func(Claim) bool) ([]netip.Prefix, error) {
	claims, err := s.Claims(ctx)
	if err != nil {
		return nil, err
	}
	var freed []netip.Prefix
	for _, c := range claims {
		if !match(c) {
			continue
		}
		err := s.deleteExact(ctx, c.lease)
		switch {
		case err == nil:
			freed = append(freed, c.Block)
		case apierrors.IsNotFound(err), apierrors.IsConflict(err):
			// Someone else reclaimed it first, or it changed hands: leave it.
		default:
			return freed, fmt.Errorf("reclaiming block %s of node %s: %w", c.Block, c.Node, err)
		}
	}
	return freed, nil
}
