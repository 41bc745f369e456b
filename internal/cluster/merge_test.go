package cluster

import "testing"

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
