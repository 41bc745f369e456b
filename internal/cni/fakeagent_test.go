package cni

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/weftnet/weft/internal/api"
	"github.com/weftnet/weft/internal/api/apiserver"
)

// fakeAgent is an api.Backend handing out addresses from 10.32.0.0/26 (gateway 10.32.0.1) the
// way the agent promises to: Add is idempotent per attachment, Del of an unknown attachment
// succeeds. It can be switched to not-ready, exhausted, or off (socket gone).
type fakeAgent struct {
	socket string
	stop   func()

	mu       sync.Mutex
	leases   map[api.Attachment]api.Lease
	notReady bool
	exhaust  bool
	// delNotFound: Del of an unknown attachment answers ErrNotFound instead of succeeding.
	delNotFound bool
	bridge      string
	requests    []api.AddRequest
}

var (
	fakeBlock   = netip.MustParsePrefix("10.32.0.0/26")
	fakeGateway = netip.MustParseAddr("10.32.0.1")
	fakeCluster = netip.MustParsePrefix("10.32.0.0/12")
)

const fakeMTU = 1450

// startFakeAgent serves a fake agent on a socket in a fresh directory; it stops when t ends.
func startFakeAgent(t *testing.T) *fakeAgent {
	t.Helper()
	// Not t.TempDir: a subtest's name can push the path past what sun_path holds.
	dir, err := os.MkdirTemp("", "weft-cni-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	f := &fakeAgent{
		socket: filepath.Join(dir, "weft.sock"),
		leases: map[api.Attachment]api.Lease{},
		bridge: "weft",
	}
	l, err := apiserver.Listen(f.socket)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- apiserver.Serve(ctx, l, apiserver.NewHandler(f)) }()
	var once sync.Once
	f.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("fake agent: %v", err)
			}
		})
	}
	t.Cleanup(f.stop)
	return f
}

func (f *fakeAgent) set(fn func(f *fakeAgent)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// held returns the attachments that have a lease.
func (f *fakeAgent) held() map[api.Attachment]netip.Prefix {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[api.Attachment]netip.Prefix{}
	for a, l := range f.leases {
		out[a] = l.Address
	}
	return out
}

func (f *fakeAgent) Add(_ context.Context, req api.AddRequest) (api.Lease, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, req)
	switch {
	case f.notReady:
		return api.Lease{}, errors.Join(api.ErrNotReady, errors.New("fake: still joining the cluster"))
	case f.exhaust:
		return api.Lease{}, api.ErrExhausted
	}
	if l, ok := f.leases[req.Attachment]; ok {
		return l, nil
	}
	used := map[netip.Addr]bool{fakeGateway: true}
	for _, l := range f.leases {
		used[l.Address.Addr()] = true
	}
	for a := fakeBlock.Addr().Next(); fakeBlock.Contains(a); a = a.Next() {
		if used[a] || !fakeBlock.Contains(a.Next()) { // skip the broadcast address
			continue
		}
		l := api.Lease{
			Attachment:  req.Attachment,
			Address:     netip.PrefixFrom(a, fakeBlock.Bits()),
			Gateway:     fakeGateway,
			ClusterCIDR: fakeCluster,
			Bridge:      f.bridge,
			MTU:         fakeMTU,
		}
		f.leases[req.Attachment] = l
		return l, nil
	}
	return api.Lease{}, api.ErrExhausted
}

func (f *fakeAgent) Del(_ context.Context, a api.Attachment) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.leases[a]; !ok && f.delNotFound {
		return api.ErrNotFound
	}
	delete(f.leases, a)
	return nil
}

func (f *fakeAgent) Check(_ context.Context, a api.Attachment) (api.Lease, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, ok := f.leases[a]
	if !ok {
		return api.Lease{}, api.ErrNotFound
	}
	return l, nil
}

func (f *fakeAgent) GC(_ context.Context, req api.GCRequest) (api.GCResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	valid := map[api.Attachment]bool{}
	for _, a := range req.Valid {
		valid[a] = true
	}
	var resp api.GCResponse
	for a := range f.leases {
		if !valid[a] {
			delete(f.leases, a)
			resp.Released = append(resp.Released, a)
		}
	}
	return resp, nil
}

func (f *fakeAgent) Status(context.Context) (api.Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := api.Status{Node: "fake-node", Ready: !f.notReady, Gateway: fakeGateway, ClusterCIDR: fakeCluster, MTU: fakeMTU}
	if f.notReady {
		st.Reason = "fake: still joining the cluster"
	}
	return st, nil
}
