package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"
)

func newAlloc(t *testing.T, store ClaimStore, dir, node, cidr string, bits int) *Allocator {
	t.Helper()
	a, err := New(context.Background(), Config{
		ClusterCIDR: netip.MustParsePrefix(cidr), BlockBits: bits, Node: node,
		StatePath: filepath.Join(dir, node+".json"), Store: store,
	})
	if err != nil {
		t.Fatalf("New(%s): %v", node, err)
	}
	return a
}

func key(i int) Key { return Key{ContainerID: fmt.Sprintf("c%d", i), IfName: "eth0"} }

func TestAllocateBasics(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	store := FileStore{Dir: filepath.Join(dir, "claims")}
	a := newAlloc(t, store, dir, "n1", "10.32.0.0/24", 26)

	home := a.Home()
	if home.Bits() != 26 || !netip.MustParsePrefix("10.32.0.0/24").Contains(home.Addr()) {
		t.Fatalf("home block %s not a /26 of the CIDR", home)
	}
	if a.Tunnel() != home.Addr() || a.Gateway() != home.Addr().Next() {
		t.Fatalf("tunnel %s gateway %s for home %s", a.Tunnel(), a.Gateway(), home)
	}
	l1, err := a.Allocate(ctx, key(1))
	if err != nil {
		t.Fatal(err)
	}
	if want := netip.PrefixFrom(home.Addr().Next().Next(), 26); l1.Address != want {
		t.Fatalf("first lease %s, want %s (after network and gateway)", l1.Address, want)
	}
	again, _ := a.Allocate(ctx, key(1))
	if !reflect.DeepEqual(again, l1) {
		t.Fatalf("second Allocate for the same key gave %v, want %v", again, l1)
	}
	if ok, err := a.Release(ctx, Key{ContainerID: "unknown", IfName: "eth0"}); ok || err != nil {
		t.Fatalf("Release(unknown) = %v, %v; want false, nil", ok, err)
	}
	// Round robin: a freed address is not handed out again at once.
	if _, err := a.Release(ctx, key(1)); err != nil {
		t.Fatal(err)
	}
	l2, _ := a.Allocate(ctx, key(2))
	if l2.Address == l1.Address {
		t.Fatalf("freed address %s reused immediately", l1.Address)
	}
}

func TestBlocksGrowAndShrink(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	store := FileStore{Dir: filepath.Join(dir, "claims")}
	changes := 0
	a, err := New(ctx, Config{
		ClusterCIDR: netip.MustParsePrefix("10.32.0.0/24"), BlockBits: 27, Node: "n1",
		StatePath: filepath.Join(dir, "n1.json"), Store: store,
		OnBlocksChanged: func() { changes++ },
	})
	if err != nil {
		t.Fatal(err)
	}
	// A /27 holds 30 usable addresses, 29 in the home block (gateway).
	seen := map[netip.Addr]bool{}
	for i := range 29 + 30 + 1 {
		l, err := a.Allocate(ctx, key(i))
		if err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
		ip := l.Address.Addr()
		if seen[ip] || ip == a.Gateway() || ip == a.Tunnel() {
			t.Fatalf("allocation %d: %s duplicate or reserved", i, ip)
		}
		seen[ip] = true
	}
	if got := len(a.Blocks()); got != 3 {
		t.Fatalf("blocks after 60 leases: %d, want 3", got)
	}
	if changes != 2 {
		t.Fatalf("OnBlocksChanged called %d times, want 2", changes)
	}
	claims, _ := store.List(ctx)
	if len(claims) != 3 {
		t.Fatalf("store has %d claims, want 3: %v", len(claims), claims)
	}
	// Free everything: non-home blocks go back, the home block stays.
	freed, err := a.GC(ctx, nil)
	if err != nil || len(freed) != 60 {
		t.Fatalf("GC freed %d (%v), want 60", len(freed), err)
	}
	if got := a.Blocks(); len(got) != 1 || got[0] != a.Home() {
		t.Fatalf("blocks after freeing all: %v", got)
	}
	claims, _ = store.List(ctx)
	if len(claims) != 1 {
		t.Fatalf("store has %d claims after shrink, want 1", len(claims))
	}
}

func TestExhausted(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	store := FileStore{Dir: filepath.Join(dir, "claims")}
	a := newAlloc(t, store, dir, "n1", "10.32.0.0/28", 29) // two /29 blocks: 5 + 6 addresses
	for i := range 11 {
		if _, err := a.Allocate(ctx, key(i)); err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
	}
	_, err := a.Allocate(ctx, key(99))
	if !errors.Is(err, ErrExhausted) {
		t.Fatalf("allocation past capacity: %v, want ErrExhausted", err)
	}
}

func TestRestartKeepsLeases(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	store := FileStore{Dir: filepath.Join(dir, "claims")}
	a := newAlloc(t, store, dir, "n1", "10.32.0.0/16", 26)
	var leases []Lease
	for i := range 70 { // spills into a second block
		l, err := a.Allocate(ctx, key(i))
		if err != nil {
			t.Fatal(err)
		}
		leases = append(leases, l)
	}
	b := newAlloc(t, store, dir, "n1", "10.32.0.0/16", 26)
	if fmt.Sprint(b.Blocks()) != fmt.Sprint(a.Blocks()) {
		t.Fatalf("blocks after restart %v, want %v", b.Blocks(), a.Blocks())
	}
	for _, l := range leases {
		got, ok := b.Get(l.Key)
		if !ok || !reflect.DeepEqual(got, l) {
			t.Fatalf("lease of %v after restart: %v %v, want %v", l.Key, got, ok, l)
		}
	}
	n, err := b.Allocate(ctx, key(1000))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range leases {
		if l.Address == n.Address {
			t.Fatalf("after restart handed out %s, which %v holds", n.Address, l.Key)
		}
	}
}

// TestRebootDropsLeases: a restart in the same boot keeps every lease; after a reboot
// (another boot ID) the leases are gone, since their pods died with the old kernel, while
// the blocks stay the node's.
func TestRebootDropsLeases(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	store := FileStore{Dir: filepath.Join(dir, "claims")}
	open := func(boot string) *Allocator {
		t.Helper()
		a, err := New(ctx, Config{
			ClusterCIDR: netip.MustParsePrefix("10.32.0.0/16"), BlockBits: 26, Node: "n1",
			StatePath: filepath.Join(dir, "n1.json"), Store: store, BootID: boot,
		})
		if err != nil {
			t.Fatalf("New in boot %s: %v", boot, err)
		}
		return a
	}
	a := open("boot-1")
	for i := range 70 { // two blocks
		if _, err := a.Allocate(ctx, key(i)); err != nil {
			t.Fatal(err)
		}
	}
	blocks := fmt.Sprint(a.Blocks())
	for _, tc := range []struct {
		boot   string
		leases int
	}{{"boot-1", 70}, {"boot-2", 0}, {"boot-2", 0}} {
		b := open(tc.boot)
		if got := len(b.Leases()); got != tc.leases {
			t.Errorf("boot %s: %d leases, want %d", tc.boot, got, tc.leases)
		}
		if got := fmt.Sprint(b.Blocks()); got != blocks {
			t.Errorf("boot %s: blocks %s, want %s", tc.boot, got, blocks)
		}
	}
}

func TestStateMismatch(t *testing.T) {
	dir := t.TempDir()
	store := FileStore{Dir: filepath.Join(dir, "claims")}
	newAlloc(t, store, dir, "n1", "10.32.0.0/16", 26)
	_, err := New(context.Background(), Config{
		ClusterCIDR: netip.MustParsePrefix("10.40.0.0/16"), BlockBits: 26, Node: "n1",
		StatePath: filepath.Join(dir, "n1.json"), Store: store,
	})
	if err == nil {
		t.Fatal("New with another cluster CIDR over existing state succeeded")
	}
}

func TestConfigValidation(t *testing.T) {
	store := FileStore{Dir: t.TempDir()}
	for _, tc := range []struct {
		name, cidr string
		bits       int
		node       string
	}{
		{"host bits", "10.32.0.1/12", 26, "n"},
		{"block wider than cidr", "10.32.0.0/16", 12, "n"},
		{"block too small", "10.32.0.0/16", 31, "n"},
		{"ipv6", "fd00::/64", 120, "n"},
		{"no node", "10.32.0.0/16", 26, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, _ := netip.ParsePrefix(tc.cidr)
			_, err := New(context.Background(), Config{ClusterCIDR: p, BlockBits: tc.bits, Node: tc.node, StatePath: filepath.Join(t.TempDir(), "s"), Store: store})
			if err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

// Many nodes sharing one store, allocating concurrently, never share a block or an address.
func TestConcurrentNodesNeverShare(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	store := FileStore{Dir: filepath.Join(dir, "claims")}
	const nodes, per = 8, 150
	allocs := make([]*Allocator, nodes)
	var wg sync.WaitGroup
	errs := make(chan error, nodes)
	for i := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, err := New(ctx, Config{
				ClusterCIDR: netip.MustParsePrefix("10.32.0.0/20"), BlockBits: 26,
				Node: fmt.Sprintf("n%d", i), StatePath: filepath.Join(dir, fmt.Sprintf("n%d.json", i)), Store: store,
			})
			if err != nil {
				errs <- err
				return
			}
			allocs[i] = a
			for j := range per {
				if _, err := a.Allocate(ctx, key(j)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	owner := map[netip.Prefix]int{}
	holder := map[netip.Addr]int{}
	for i, a := range allocs {
		for _, b := range a.Blocks() {
			if o, dup := owner[b]; dup {
				t.Fatalf("block %s owned by n%d and n%d", b, o, i)
			}
			owner[b] = i
		}
		for _, l := range a.Leases() {
			if o, dup := holder[l.Address.Addr()]; dup {
				t.Fatalf("address %s held on n%d and n%d", l.Address, o, i)
			}
			holder[l.Address.Addr()] = i
		}
	}
	if len(holder) != nodes*per {
		t.Fatalf("%d addresses, want %d", len(holder), nodes*per)
	}
}

func BenchmarkAllocateRelease(b *testing.B) {
	ctx := context.Background()
	dir := b.TempDir()
	a, err := New(ctx, Config{
		ClusterCIDR: netip.MustParsePrefix("10.32.0.0/12"), BlockBits: 26, Node: "n1",
		StatePath: filepath.Join(dir, "n1.json"), Store: FileStore{Dir: filepath.Join(dir, "claims")},
	})
	if err != nil {
		b.Fatal(err)
	}
	for i := range 100 { // a node with 100 pods
		if _, err := a.Allocate(ctx, key(i)); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := range b.N {
		k := key(1000 + i)
		if _, err := a.Allocate(ctx, k); err != nil {
			b.Fatal(err)
		}
		if _, err := a.Release(ctx, k); err != nil {
			b.Fatal(err)
		}
	}
}

// An agent restarting while the claim store is unreachable keeps serving its blocks and
// leases from its file, and confirms them once the store is back.
func TestRestartWhileStoreDown(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	store := &flakyStore{ClaimStore: FileStore{Dir: filepath.Join(dir, "claims")}}
	a := newAlloc(t, store, dir, "n1", "10.32.0.0/16", 26)
	l1, _ := a.Allocate(ctx, key(1))

	store.down.Store(true)
	b, err := New(ctx, Config{
		ClusterCIDR: netip.MustParsePrefix("10.32.0.0/16"), BlockBits: 26, Node: "n1",
		StatePath: filepath.Join(dir, "n1.json"), Store: store,
	})
	if err != nil {
		t.Fatalf("restart with the store down: %v", err)
	}
	if got, ok := b.Get(key(1)); !ok || !reflect.DeepEqual(got, l1) {
		t.Fatalf("lease after restart = %v %v, want %v", got, ok, l1)
	}
	l2, err := b.Allocate(ctx, key(2))
	if err != nil || l2.Address == l1.Address {
		t.Fatalf("allocation with the store down = %v, %v", l2, err)
	}
	store.down.Store(false)
	waitBlocks(t, b, 1) // confirmed, not dropped
	deadline := time.Now().Add(5 * time.Second)
	for {
		b.mu.Lock()
		pending := len(b.unconfirmed)
		b.mu.Unlock()
		if pending == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("blocks still unconfirmed 5 s after the store came back")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A node that outgrows its home block takes the block beside it, so its peers can route
// both with one /25 (and 4 blocks with one /24).
func TestGrowsIntoBuddyBlocks(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a := newAlloc(t, FileStore{Dir: filepath.Join(dir, "claims")}, dir, "n1", "10.32.0.0/16", 26)
	for i := range 4*62 - 1 { // fills four /26 blocks (the home block has the gateway)
		if _, err := a.Allocate(ctx, key(i)); err != nil {
			t.Fatal(err)
		}
	}
	blocks := a.Blocks()
	if len(blocks) != 4 {
		t.Fatalf("blocks %v, want 4", blocks)
	}
	group := netip.PrefixFrom(blocks[0].Addr(), 24).Masked()
	for _, b := range blocks {
		if !group.Contains(b.Addr()) {
			t.Fatalf("blocks %v do not fill one aligned /24 (%s)", blocks, group)
		}
	}
}

// A lease's port mappings are kept with it: across a restart, replaced by a later Allocate
// of the same key, and gone with the lease.
func TestPortMappingsLiveWithTheLease(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	store := FileStore{Dir: filepath.Join(dir, "claims")}
	a := newAlloc(t, store, dir, "n1", "10.32.0.0/24", 26)
	web := []PortMapping{{Protocol: "tcp", HostPort: 8080, PodPort: 80}}
	dns := []PortMapping{{Protocol: "udp", HostIP: netip.MustParseAddr("198.18.0.1"), HostPort: 53, PodPort: 5353}}

	l1, err := a.Allocate(ctx, key(1), web...)
	if err != nil || !reflect.DeepEqual(l1.Ports, web) {
		t.Fatalf("Allocate with ports = %+v, %v; want ports %+v", l1, err, web)
	}
	if _, err := a.Allocate(ctx, key(2)); err != nil {
		t.Fatal(err)
	}
	b := newAlloc(t, store, dir, "n1", "10.32.0.0/24", 26) // a restart
	if got, _ := b.Get(key(1)); !reflect.DeepEqual(got, l1) {
		t.Fatalf("after a restart: %+v, want %+v", got, l1)
	}
	if got, _ := b.Get(key(2)); got.Ports != nil {
		t.Fatalf("a lease without mappings came back with %+v", got.Ports)
	}
	again, err := b.Allocate(ctx, key(1), dns...)
	if err != nil || again.Address != l1.Address || !reflect.DeepEqual(again.Ports, dns) {
		t.Fatalf("Allocate again with other ports = %+v, %v; want %s with %+v", again, err, l1.Address, dns)
	}
	if _, err := b.Release(ctx, key(1)); err != nil {
		t.Fatal(err)
	}
	for _, l := range newAlloc(t, store, dir, "n1", "10.32.0.0/24", 26).Leases() {
		if l.Ports != nil {
			t.Fatalf("mappings of a released lease are still kept: %+v", l)
		}
	}
}
