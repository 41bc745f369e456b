package cluster

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/hashicorp/memberlist"
)

// benchRecord is node i's record in a cluster of up to 65,536 nodes.
func benchRecord(i int, seq uint64) Node {
	t := netip.AddrFrom4([4]byte{10, byte(32 + i/1024), byte(i % 1024 / 4), byte(i % 4 * 64)})
	return Node{
		Name:     fmt.Sprintf("node%05d", i),
		Underlay: netip.AddrFrom4([4]byte{198, 18, byte(i / 256), byte(i % 256)}),
		VTEPMAC:  fmt.Sprintf("02:00:00:00:%02x:%02x", i/256, i%256),
		Tunnel:   t,
		Blocks:   []netip.Prefix{netip.PrefixFrom(t, 26)},
		Version:  "bench",
		Seq:      seq,
	}
}

// benchCluster is a Cluster without a network: what merging touches, nothing else.
func benchCluster() *Cluster {
	return &Cluster{
		onChange: func() {},
		self:     benchRecord(65535, 1),
		records:  map[string]Node{},
		members:  map[string]memberlist.NodeStateType{},
		addrs:    map[string]netip.Addr{},
		queue:    &memberlist.TransmitLimitedQueue{NumNodes: func() int { return 1000 }, RetransmitMult: 4},
	}
}

func benchState(n int, seq uint64) []byte {
	nodes := make([]Node, n)
	for i := range nodes {
		nodes[i] = benchRecord(i, seq)
	}
	return encode(msgState, nodes)
}

// BenchmarkMergeState1000Known is the steady state of a push/pull exchange in a cluster of
// 1,000 nodes: the remote state carries every record, and all are known already.
func BenchmarkMergeState1000Known(b *testing.B) {
	c := benchCluster()
	st := benchState(1000, 1)
	d := (*delegate)(c)
	d.MergeRemoteState(st, false)
	b.SetBytes(int64(len(st)))
	b.ReportAllocs()
	for b.Loop() {
		d.MergeRemoteState(st, false)
	}
}

// BenchmarkMergeState1000New merges a state of 1,000 records that are all new (a node
// joining a cluster of 1,000), including queueing their re-broadcasts.
func BenchmarkMergeState1000New(b *testing.B) {
	st := benchState(1000, 1)
	b.SetBytes(int64(len(st)))
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		c := benchCluster()
		b.StartTimer()
		(*delegate)(c).MergeRemoteState(st, false)
	}
}

// BenchmarkLocalState1000 encodes this node's side of a push/pull in a cluster of 1,000
// after a record changed.
func BenchmarkLocalState1000(b *testing.B) {
	c := benchCluster()
	(*delegate)(c).MergeRemoteState(benchState(1000, 1), false)
	b.ReportAllocs()
	for b.Loop() {
		c.mu.Lock()
		c.gen++
		c.mu.Unlock()
		_ = (*delegate)(c).LocalState(false)
	}
}

// BenchmarkLocalState1000Unchanged is the same with nothing changed since the last
// exchange: what each peer's side of a joining node's exchanges costs.
func BenchmarkLocalState1000Unchanged(b *testing.B) {
	c := benchCluster()
	(*delegate)(c).MergeRemoteState(benchState(1000, 1), false)
	b.ReportAllocs()
	for b.Loop() {
		_ = (*delegate)(c).LocalState(false)
	}
}
