package ipam

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// flakyStore is a ClaimStore whose every call fails while down is set: the API server is
// unreachable.
type flakyStore struct {
	ClaimStore
	down atomic.Bool
}

var errDown = errors.New("claim store unreachable")

func (s *flakyStore) Claim(ctx context.Context, b netip.Prefix, n string) error {
	if s.down.Load() {
		return errDown
	}
	return s.ClaimStore.Claim(ctx, b, n)
}

func (s *flakyStore) Release(ctx context.Context, b netip.Prefix, n string) error {
	if s.down.Load() {
		return errDown
	}
	return s.ClaimStore.Release(ctx, b, n)
}

func (s *flakyStore) List(ctx context.Context) (map[netip.Prefix]string, error) {
	if s.down.Load() {
		return nil, errDown
	}
	return s.ClaimStore.List(ctx)
}

func waitBlocks(t *testing.T, a *Allocator, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(a.Blocks()) != want {
		if time.Now().After(deadline) {
			t.Fatalf("node holds %d blocks %v, want %d", len(a.Blocks()), a.Blocks(), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSpareBlock: a node keeps one empty block beyond those in use, claims the next one in
// the background when it starts using the spare, keeps handing out addresses while the
// store is down, and never gives the spare back.
func TestSpareBlock(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	store := &flakyStore{ClaimStore: FileStore{Dir: filepath.Join(dir, "claims")}}
	changes := atomic.Int32{}
	a, err := New(ctx, Config{
		ClusterCIDR: netip.MustParsePrefix("10.32.0.0/24"), BlockBits: 27, Node: "n1",
		StatePath: filepath.Join(dir, "n1.json"), Store: store, SpareBlocks: 1,
		OnBlocksChanged: func() { changes.Add(1) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := a.Blocks(); len(got) != 2 {
		t.Fatalf("a new node holds %v, want home + 1 spare", got)
	}
	claims, _ := store.List(ctx)
	if len(claims) != 2 {
		t.Fatalf("store holds %v, want 2 claims", claims)
	}
	spare := a.Blocks()[1]

	// Fill the home block (29 addresses of a /27 after the gateway): the spare stays empty.
	for i := range 29 {
		if _, err := a.Allocate(ctx, key(i)); err != nil {
			t.Fatal(err)
		}
	}
	if got := a.Blocks(); len(got) != 2 {
		t.Fatalf("after filling the home block: %v", got)
	}

	// The API server goes away. Pods still start, from the spare, without waiting.
	store.down.Store(true)
	start := time.Now()
	for i := 29; i < 29+30; i++ {
		l, err := a.Allocate(ctx, key(i))
		if err != nil {
			t.Fatalf("Allocate %d with the store down: %v", i, err)
		}
		if !spare.Contains(l.Address.Addr()) {
			t.Fatalf("lease %s not from the spare %s", l.Address, spare)
		}
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("30 allocations with the store down took %s: something waited for the store", d)
	}
	if _, err := a.Allocate(ctx, key(100)); !errors.Is(err, errDown) {
		t.Fatalf("Allocate with every block full and the store down: %v, want the store's error", err)
	}

	// The store is back: the background loop claims a new spare.
	store.down.Store(false)
	waitBlocks(t, a, 3)

	// Emptying the old spare leaves two empty blocks: one goes back, one stays.
	for i := 29; i < 29+30; i++ {
		if _, err := a.Release(ctx, key(i)); err != nil {
			t.Fatal(err)
		}
	}
	waitBlocks(t, a, 2)
	claims, _ = store.List(ctx)
	if len(claims) != 2 {
		t.Fatalf("store holds %v after the give-back, want 2", claims)
	}
	if changes.Load() < 2 {
		t.Errorf("OnBlocksChanged ran %d times", changes.Load())
	}

	// A restart keeps the spare.
	b, err := New(ctx, Config{
		ClusterCIDR: netip.MustParsePrefix("10.32.0.0/24"), BlockBits: 27, Node: "n1",
		StatePath: filepath.Join(dir, "n1.json"), Store: store, SpareBlocks: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Blocks()) != 2 {
		t.Errorf("after a restart: %v", b.Blocks())
	}
}

// TestNoSpareByDefault: without SpareBlocks a node claims its home block only.
func TestNoSpareByDefault(t *testing.T) {
	dir := t.TempDir()
	a := newAlloc(t, FileStore{Dir: filepath.Join(dir, "claims")}, dir, "n1", "10.32.0.0/24", 27)
	if len(a.Blocks()) != 1 {
		t.Fatalf("blocks %v", a.Blocks())
	}
}
