package cluster

import (
	"slices"
	"testing"
)

// A push/pull state spreads only its sender's own record (the first) further; gossip
// spreads every record it brings.
func TestMergeStateRebroadcastsSenderOnly(t *testing.T) {
	c := benchCluster()
	(*delegate)(c).MergeRemoteState(benchState(1000, 1), false)
	if n := len(c.records); n != 1000 {
		t.Fatalf("records merged: %d, want 1000", n)
	}
	if q := c.queue.NumQueued(); q != 1 {
		t.Fatalf("after merging a state of 1000 new records, %d broadcasts queued, want 1 (the sender's own)", q)
	}
	(*delegate)(c).NotifyMsg(encode(msgRecord, benchRecord(5, 2)))
	if q := c.queue.NumQueued(); q != 2 {
		t.Fatalf("after a gossiped newer record, %d broadcasts queued, want 2", q)
	}
}

// The push/pull state is encoded once per change of this node's records, and every
// change shows in the next one.
func TestLocalStateReencodesOnChange(t *testing.T) {
	c := benchCluster()
	d := (*delegate)(c)
	d.MergeRemoteState(benchState(10, 1), false)
	seqOf := func(st []byte, name string) uint64 {
		t.Helper()
		nodes, err := decodeRecords(st)
		if err != nil {
			t.Fatalf("decoding our own state: %v", err)
		}
		i := slices.IndexFunc(nodes, func(n Node) bool { return n.Name == name })
		if i < 0 {
			t.Fatalf("%s missing from the state", name)
		}
		return nodes[i].Seq
	}
	self := c.Self()
	upd := self
	upd.Version = "next"
	steps := []struct {
		name   string
		do     func()
		record string
		seq    uint64
		reenc  bool
	}{
		{"nothing changed", func() {}, "node00003", 1, false},
		{"an older record", func() { d.NotifyMsg(encode(msgRecord, benchRecord(3, 0))) }, "node00003", 1, false},
		{"a newer record by gossip", func() { d.NotifyMsg(encode(msgRecord, benchRecord(3, 5))) }, "node00003", 5, true},
		{"a new node in a state", func() { d.MergeRemoteState(benchState(12, 1), false) }, "node00011", 1, true},
		{"own record updated", func() {
			if err := c.Update(upd); err != nil {
				t.Fatal(err)
			}
		}, self.Name, 0, true},
	}
	prev := d.LocalState(false)
	for _, s := range steps {
		s.do()
		st := d.LocalState(false)
		if same := &st[0] == &prev[0]; same == s.reenc {
			t.Errorf("%s: re-encoded %v, want %v", s.name, !same, s.reenc)
		}
		want := s.seq
		if s.record == self.Name {
			want = c.Self().Seq
		}
		if got := seqOf(st, s.record); got != want {
			t.Errorf("%s: %s has seq %d in the state, want %d", s.name, s.record, got, want)
		}
		prev = st
	}
}
