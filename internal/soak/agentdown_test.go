package soak

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weftnet/weft/internal/lab"
	"github.com/weftnet/weft/internal/testutil"
)

// runtime drives weft-cni on one lab node through libcni, as a container runtime does:
// the plugin runs in the node's namespace with the node's conflist.
type runtime struct {
	t    *testing.T
	l    *lab.Lab
	node lab.Node
	list *libcni.NetworkConfigList
	cni  *libcni.CNIConfig
}

func newRuntime(t *testing.T, l *lab.Lab, node string) *runtime {
	t.Helper()
	n := nodeByName(t, l, node)
	b, err := os.ReadFile(filepath.Join(n.Dir, "weft.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	list, err := libcni.ConfListFromBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	return &runtime{t: t, l: l, node: n, list: list,
		cni: libcni.NewCNIConfigWithCacheDir([]string{bins.dir, "/usr/lib/cni"}, t.TempDir(), nil)}
}

func nodeByName(t *testing.T, l *lab.Lab, name string) lab.Node { return node(t, l, name) }

func (r *runtime) rt(pod ns.NetNS, id string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: id, NetNS: pod.Path(), IfName: "eth0",
		Args: [][2]string{{"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", id}}}
}

func (r *runtime) add(pod ns.NetNS, id string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return inNode(r.l, r.node.Name, func() error {
		_, err := r.cni.AddNetworkList(ctx, r.list, r.rt(pod, id))
		return err
	})
}

func (r *runtime) del(pod ns.NetNS, id string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return inNode(r.l, r.node.Name, func() error { return r.cni.DelNetworkList(ctx, r.list, r.rt(pod, id)) })
}

// leases returns the container IDs holding a lease in the node's IPAM state file.
func (r *runtime) leases() []string {
	r.t.Helper()
	st, err := readIPAM(r.node)
	if err != nil {
		r.t.Fatal(err)
	}
	var ids []string
	for _, l := range st.Leases {
		ids = append(ids, l.ContainerID)
	}
	return ids
}

func wantCNICode(t *testing.T, err error, code uint) {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("got %v, want a CNI error with code %d", err, code)
	}
	if e.Code != code {
		t.Fatalf("got code %d (%s), want %d", e.Code, e, code)
	}
	t.Logf("code %d: %s", e.Code, e.Msg)
}

// TestCNIWhileAgentDown: with the node's agent stopped, ADD fails at once with code 11
// (try again later) and leaves no veth and no lease; DEL fails with 11 too (so the runtime
// retries) but removes the veth; once the agent is back, both succeed.
func TestCNIWhileAgentDown(t *testing.T) {
	l := upLab(t, 2, 0)
	r := newRuntime(t, l, "node1")
	podA, podB := testutil.NewNS(t), testutil.NewNS(t)
	if err := r.add(podA, "down-a"); err != nil {
		t.Fatalf("ADD with the agent up: %v", err)
	}

	if err := l.StopAgent("node1", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err := r.add(podB, "down-b")
	took := time.Since(start)
	wantCNICode(t, err, uint(types.ErrTryAgainLater))
	t.Logf("FIGURE CNI ADD with the agent down failed in %s", took.Round(time.Millisecond))
	if took > 2*time.Second {
		t.Errorf("ADD with the agent down took %s, want it to fail at once", took)
	}
	v, err := veths(l, "node1")
	if err != nil {
		t.Fatal(err)
	}
	if len(v) != 1 { // podA's
		t.Errorf("veths in node1 after the failed ADD: %v, want only podA's", v)
	}
	if _, err := linkIn(podB, "eth0"); err == nil {
		t.Error("the failed ADD left eth0 in the pod")
	}
	if ids := r.leases(); slices.Contains(ids, "down-b") {
		t.Errorf("the failed ADD left a lease: %v", ids)
	}

	start = time.Now()
	err = r.del(podA, "down-a")
	wantCNICode(t, err, uint(types.ErrTryAgainLater))
	t.Logf("FIGURE CNI DEL with the agent down failed in %s", time.Since(start).Round(time.Millisecond))
	if v, _ := veths(l, "node1"); len(v) != 0 {
		t.Errorf("veths left after DEL with the agent down: %v", v)
	}

	if err := l.StartAgent(context.Background(), "node1"); err != nil {
		t.Fatal(err)
	}
	if ids := r.leases(); !slices.Contains(ids, "down-a") {
		t.Fatalf("the lease of down-a is gone before DEL succeeded: %v", ids)
	}
	if err := r.del(podA, "down-a"); err != nil {
		t.Fatalf("retried DEL with the agent back: %v", err)
	}
	if err := r.add(podB, "down-b"); err != nil {
		t.Fatalf("ADD with the agent back: %v", err)
	}
	if ids := r.leases(); !slices.Equal(ids, []string{"down-b"}) {
		t.Errorf("leases %v, want only down-b", ids)
	}
	if err := r.del(podB, "down-b"); err != nil {
		t.Fatal(err)
	}
	if ids := r.leases(); len(ids) != 0 {
		t.Errorf("leases left: %v", ids)
	}
	if v, _ := veths(l, "node1"); len(v) != 0 {
		t.Errorf("veths left: %v", v)
	}
}

func linkIn(n ns.NetNS, name string) (any, error) {
	var found any
	err := n.Do(func(ns.NetNS) error {
		l, err := netlinkByName(name)
		found = l
		return err
	})
	return found, err
}
