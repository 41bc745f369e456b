package k8s

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/weftnet/weft/internal/ipam"
)

var (
	blk1 = netip.MustParsePrefix("10.32.0.64/26")
	blk2 = netip.MustParsePrefix("10.32.0.128/26")
)

// fakeClient serves the package's Client from client-go's fake clientset.
type fakeClient struct{ *fake.Clientset }

func (f fakeClient) Nodes() NodeAPI              { return f.CoreV1().Nodes() }
func (f fakeClient) Leases(ns string) LeaseAPI   { return f.CoordinationV1().Leases(ns) }
func (f fakeClient) Secrets(ns string) SecretAPI { return f.CoreV1().Secrets(ns) }

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil)) }

// enforcePreconditions makes the fake's Delete honour UID/resourceVersion preconditions
// the way the API server does, so the test sees what the store sends.
func enforcePreconditions(c *fake.Clientset) {
	c.PrependReactor("delete", "leases", func(a k8stesting.Action) (bool, runtime.Object, error) {
		d := a.(k8stesting.DeleteActionImpl)
		p := d.DeleteOptions.Preconditions
		if p == nil {
			return false, nil, nil
		}
		obj, err := c.Tracker().Get(d.GetResource(), d.GetNamespace(), d.GetName())
		if err != nil {
			return true, nil, err
		}
		l := obj.(*coordinationv1.Lease)
		if (p.UID != nil && *p.UID != l.UID) || (p.ResourceVersion != nil && *p.ResourceVersion != l.ResourceVersion) {
			return true, nil, apierrors.NewConflict(d.GetResource().GroupResource(), d.GetName(), errors.New("precondition failed"))
		}
		return false, nil, nil
	})
}

func TestLeaseName(t *testing.T) {
	if got := LeaseName(blk1); got != "weft-block-10-32-0-64-26" {
		t.Errorf("LeaseName(%s) = %s", blk1, got)
	}
}

// TestClaimRace: nodes racing for the same block — exactly one wins, every time.
func TestClaimRace(t *testing.T) {
	ctx := t.Context()
	for round := range 20 {
		c := fake.NewClientset()
		var wg sync.WaitGroup
		errs := make([]error, 5)
		for i := range errs {
			wg.Go(func() {
				s := &LeaseStore{Client: fakeClient{c}, Namespace: "kube-system"}
				errs[i] = s.Claim(ctx, blk1, fmt.Sprintf("node%d", i))
			})
		}
		wg.Wait()
		won := 0
		for _, err := range errs {
			switch {
			case err == nil:
				won++
			case !errors.Is(err, ipam.ErrClaimed):
				t.Fatalf("round %d: unexpected error %v", round, err)
			}
		}
		if won != 1 {
			t.Fatalf("round %d: %d nodes own %s (%v)", round, won, blk1, errs)
		}
	}
}

func TestClaimReleaseList(t *testing.T) {
	ctx := t.Context()
	c := fake.NewClientset()
	enforcePreconditions(c)
	s := &LeaseStore{Client: fakeClient{c}, Namespace: "kube-system"}
	if err := s.Claim(ctx, blk1, "a"); err != nil {
		t.Fatal(err)
	}
	if err := s.Claim(ctx, blk1, "a"); err != nil {
		t.Fatalf("re-claiming an own block: %v", err)
	}
	if err := s.Claim(ctx, blk1, "b"); !errors.Is(err, ipam.ErrClaimed) {
		t.Fatalf("claiming a's block as b: %v, want ErrClaimed", err)
	}
	if err := s.Claim(ctx, blk2, "b"); err != nil {
		t.Fatal(err)
	}
	// Something that is not a claim, and a Lease with our label but a forged name.
	for _, l := range []*coordinationv1.Lease{
		{ObjectMeta: metav1.ObjectMeta{Name: "kube-scheduler", Namespace: "kube-system"}},
		{ObjectMeta: metav1.ObjectMeta{Name: "weft-block-x", Namespace: "kube-system", Labels: map[string]string{BlockLabel: "true"}, Annotations: map[string]string{BlockLabel: "10.32.1.0/26"}}},
	} {
		if _, err := c.CoordinationV1().Leases("kube-system").Create(ctx, l, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[blk1] != "a" || got[blk2] != "b" {
		t.Fatalf("List = %v", got)
	}
	if err := s.Release(ctx, blk1, "b"); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.List(ctx); got[blk1] != "a" {
		t.Fatal("b released a's block")
	}
	if err := s.Release(ctx, blk1, "a"); err != nil {
		t.Fatal(err)
	}
	if err := s.Release(ctx, blk1, "a"); err != nil {
		t.Fatalf("releasing twice: %v", err)
	}
	if got, _ := s.List(ctx); len(got) != 1 {
		t.Fatalf("after release: %v", got)
	}
	if err := s.Claim(ctx, blk1, "b"); err != nil {
		t.Fatalf("claiming a released block: %v", err)
	}
}

// TestReleasePrecondition: a Lease that changed hands between read and delete is not
// deleted.
func TestReleasePrecondition(t *testing.T) {
	ctx := t.Context()
	c := fake.NewClientset()
	enforcePreconditions(c)
	s := &LeaseStore{Client: fakeClient{c}, Namespace: "kube-system"}
	if err := s.Claim(ctx, blk1, "a"); err != nil {
		t.Fatal(err)
	}
	var deletes []metav1.DeleteOptions
	handedOver := false
	c.PrependReactor("delete", "leases", func(a k8stesting.Action) (bool, runtime.Object, error) {
		deletes = append(deletes, a.(k8stesting.DeleteActionImpl).DeleteOptions)
		if !handedOver { // between our Get and Delete, the Lease is recreated for node b
			handedOver = true
			// (The fake holds its lock while reactors run: go to the tracker directly.)
			_ = c.Tracker().Delete(a.GetResource(), "kube-system", LeaseName(blk1))
			b := "b"
			_ = c.Tracker().Create(a.GetResource(), &coordinationv1.Lease{
				ObjectMeta: metav1.ObjectMeta{Name: LeaseName(blk1), Namespace: "kube-system", UID: "uid-b", ResourceVersion: "7",
					Labels: map[string]string{BlockLabel: "true"}, Annotations: map[string]string{BlockLabel: blk1.String()}},
				Spec: coordinationv1.LeaseSpec{HolderIdentity: &b},
			}, "kube-system")
		}
		return false, nil, nil
	})
	if err := s.Release(ctx, blk1, "a"); err != nil {
		t.Fatal(err)
	}
	if len(deletes) == 0 || deletes[0].Preconditions == nil || deletes[0].Preconditions.UID == nil || deletes[0].Preconditions.ResourceVersion == nil {
		t.Fatalf("delete sent without UID+resourceVersion preconditions: %+v", deletes)
	}
	if got, _ := s.List(ctx); got[blk1] != "b" {
		t.Fatalf("b's claim was deleted by a's release: %v", got)
	}
}

// TestReleaseNodeAndOrphans: a deleted node's claims go (idempotently), and orphans older
// than the minimum age go, but never self's.
func TestReleaseNodeAndOrphans(t *testing.T) {
	ctx := t.Context()
	c := fake.NewClientset()
	enforcePreconditions(c)
	s := &LeaseStore{Client: fakeClient{c}, Namespace: "kube-system"}
	blk3 := netip.MustParsePrefix("10.32.0.192/26")
	for b, n := range map[netip.Prefix]string{blk1: "gone", blk2: "gone", blk3: "self"} {
		if err := s.Claim(ctx, b, n); err != nil {
			t.Fatal(err)
		}
	}
	freed, err := s.ReleaseNode(ctx, "gone")
	if err != nil || len(freed) != 2 {
		t.Fatalf("ReleaseNode = %v, %v", freed, err)
	}
	if freed, err := s.ReleaseNode(ctx, "gone"); err != nil || len(freed) != 0 {
		t.Fatalf("second ReleaseNode = %v, %v", freed, err)
	}
	if err := s.Claim(ctx, blk1, "ghost"); err != nil {
		t.Fatal(err)
	}
	none := func(string) bool { return false }
	// The fake leaves creationTimestamp zero: every claim is "old".
	freed, err = s.ReclaimOrphans(ctx, "self", none, time.Minute)
	if err != nil || !slices.Equal(freed, []netip.Prefix{blk1}) {
		t.Fatalf("ReclaimOrphans = %v, %v; want [%s] (never self's)", freed, err, blk1)
	}
}

func TestGossipKey(t *testing.T) {
	ctx := t.Context()
	c := fake.NewClientset()
	k1, err := GossipKey(ctx, fakeClient{c}, "kube-system", GossipKeySecret)
	if err != nil || len(k1) != 32 {
		t.Fatalf("creating: %x, %v", k1, err)
	}
	k2, err := GossipKey(ctx, fakeClient{c}, "kube-system", GossipKeySecret)
	if err != nil || !bytes.Equal(k1, k2) {
		t.Fatalf("reading: %x, %v; want %x", k2, err, k1)
	}

	// Many agents start at once on a fresh cluster: all end up with the same key.
	c = fake.NewClientset()
	keys := make([][]byte, 8)
	var wg sync.WaitGroup
	for i := range keys {
		wg.Go(func() {
			k, err := GossipKey(ctx, fakeClient{c}, "kube-system", GossipKeySecret)
			if err != nil {
				t.Error(err)
			}
			keys[i] = k
		})
	}
	wg.Wait()
	for _, k := range keys {
		if len(k) != 32 || !bytes.Equal(k, keys[0]) {
			t.Fatalf("racing agents got different keys: %x", keys)
		}
	}

	// A bad Secret is an error that says what to do.
	c = fake.NewClientset(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: GossipKeySecret, Namespace: "kube-system"}, Data: map[string][]byte{"key": []byte("short")}})
	if _, err := GossipKey(ctx, fakeClient{c}, "kube-system", GossipKeySecret); err == nil {
		t.Fatal("a 5-byte key was accepted")
	}
}

func node(name, ip string) *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeHostName, Address: name},
			{Type: corev1.NodeInternalIP, Address: ip},
		}},
	}
}

func TestSetNetworkAvailable(t *testing.T) {
	ctx := t.Context()
	n := node("n1", "192.0.2.1")
	n.Status.Conditions = []corev1.NodeCondition{
		{Type: corev1.NodeReady, Status: corev1.ConditionTrue},
		{Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionTrue, Reason: "NoRouteCreated"},
	}
	c := fake.NewClientset(n)
	if err := SetNetworkAvailable(ctx, fakeClient{c}, "n1"); err != nil {
		t.Fatal(err)
	}
	got, _ := c.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
	var found bool
	for _, cond := range got.Status.Conditions {
		if cond.Type == corev1.NodeNetworkUnavailable {
			found = true
			if cond.Status != corev1.ConditionFalse || cond.Reason != ReasonUp {
				t.Errorf("NetworkUnavailable = %s/%s", cond.Status, cond.Reason)
			}
		}
	}
	if !found || len(got.Status.Conditions) != 2 {
		t.Fatalf("conditions after patch: %+v", got.Status.Conditions)
	}
	patches := 0
	for _, a := range c.Actions() {
		if a.GetVerb() == "patch" && a.GetSubresource() == "status" {
			patches++
		}
	}
	if err := SetNetworkAvailable(ctx, fakeClient{c}, "n1"); err != nil {
		t.Fatal(err)
	}
	for _, a := range c.Actions() {
		if a.GetVerb() == "patch" && a.GetSubresource() == "status" {
			patches--
		}
	}
	if patches != 0 {
		t.Error("patched again although the condition already said WeftIsUp")
	}
	if err := SetNetworkAvailable(ctx, fakeClient{c}, "missing"); err == nil {
		t.Error("no error for a missing Node")
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestNodes: Node add/update/delete become peers, change signals, the filter and the
// reclaim of a deleted node's blocks.
func TestNodes(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	c := fake.NewClientset(node("self", "192.0.2.1"), node("n2", "192.0.2.2"))
	store := &LeaseStore{Client: fakeClient{c}, Namespace: "kube-system"}
	if err := store.Claim(ctx, blk1, "n2"); err != nil {
		t.Fatal(err)
	}
	rec := &Reclaimer{Store: store, Self: "self", Log: quiet()}
	var mu sync.Mutex
	var deleted []string
	nodes, err := NewNodes(fakeClient{c}, "self", quiet(), func(name string) {
		rec.NodeDeleted(ctx, name)
		mu.Lock()
		deleted = append(deleted, name)
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	if !nodes.Allowed("anyone") {
		t.Error("before the first list every peer must be allowed")
	}
	if _, err := nodes.Peers(ctx); !errors.Is(err, ErrNotSynced) {
		t.Errorf("Peers before sync: %v", err)
	}
	nodes.Start(ctx)
	if !nodes.WaitSynced(ctx) {
		t.Fatal("no sync")
	}
	peers := func() []string { p, _ := nodes.Peers(ctx); return p }
	if got := peers(); !slices.Equal(got, []string{"192.0.2.2"}) {
		t.Fatalf("peers %v", got)
	}
	drain := func() {
		for {
			select {
			case <-nodes.Changed():
			default:
				return
			}
		}
	}
	drain()

	// Add.
	if _, err := c.CoreV1().Nodes().Create(ctx, node("n3", "192.0.2.3"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	<-nodes.Changed()
	waitFor(t, "n3 as a peer", func() bool { return slices.Equal(peers(), []string{"192.0.2.2", "192.0.2.3"}) })

	// Update of the address.
	if _, err := c.CoreV1().Nodes().Update(ctx, node("n3", "192.0.2.33"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	<-nodes.Changed()
	waitFor(t, "n3's new address", func() bool { return slices.Equal(peers(), []string{"192.0.2.2", "192.0.2.33"}) })

	// Delete: filtered out, blocks reclaimed.
	if !nodes.Allowed("n2") {
		t.Fatal("n2 filtered while its Node exists")
	}
	if err := c.CoreV1().Nodes().Delete(ctx, "n2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	<-nodes.Changed()
	waitFor(t, "n2 filtered", func() bool { return !nodes.Allowed("n2") })
	if got := peers(); !slices.Equal(got, []string{"192.0.2.33"}) {
		t.Errorf("peers after delete %v", got)
	}
	waitFor(t, "n2's blocks reclaimed", func() bool {
		claims, _ := store.List(ctx)
		return len(claims) == 0
	})
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(deleted, []string{"n2"}) {
		t.Errorf("onDelete saw %v", deleted)
	}
}

func TestNodeInternalIP(t *testing.T) {
	ctx := t.Context()
	noIP := node("bare", "")
	noIP.Status.Addresses = noIP.Status.Addresses[:1]
	c := fake.NewClientset(node("n1", "192.0.2.1"), noIP)
	if ip, err := NodeInternalIP(ctx, fakeClient{c}, "n1"); err != nil || ip != netip.MustParseAddr("192.0.2.1") {
		t.Errorf("n1: %v %v", ip, err)
	}
	if _, err := NodeInternalIP(ctx, fakeClient{c}, "bare"); err == nil {
		t.Error("a Node without InternalIP gave an address")
	}
}
