package cluster

import (
	"bytes"
	"compress/flate"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// Tests gossip over real UDP/TCP on loopback: each node binds its own 127.77.0.x address
// on one port found free at start, so a crash (Shutdown) is a real silence.
var testPort = func() int {
	l, err := net.Listen("tcp", "127.77.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}()

func loopback(i int) netip.Addr { return netip.AddrFrom4([4]byte{127, 77, 0, byte(i)}) }

func record(i int) Node {
	return Node{
		Name:     fmt.Sprintf("node%d", i),
		Underlay: netip.AddrFrom4([4]byte{198, 18, 0, byte(i)}),
		VTEPMAC:  fmt.Sprintf("02:00:00:00:00:%02x", i),
		Tunnel:   netip.AddrFrom4([4]byte{10, 32, byte(i), 0}),
		Blocks:   []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 32, byte(i), 0}), 26)},
		Version:  "test",
	}
}

func start(t *testing.T, i int, key []byte) (*Cluster, string) {
	t.Helper()
	c, err := Start(Config{Self: record(i), BindAddr: loopback(i), Port: testPort, Key: key})
	if err != nil {
		t.Fatalf("start node%d: %v", i, err)
	}
	t.Cleanup(func() { _ = c.Shutdown() })
	return c, fmt.Sprintf("%s:%d", loopback(i), testPort)
}

// eventually polls cond every 50 ms for at most d.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func liveNames(c *Cluster) []string {
	var out []string
	for _, n := range c.Live() {
		out = append(out, n.Name)
	}
	return out
}

func TestRecordsSpreadAndUpdate(t *testing.T) {
	a, addrA := start(t, 1, nil)
	b, _ := start(t, 2, nil)
	c, _ := start(t, 3, nil)
	for _, x := range []*Cluster{b, c} {
		if n, err := x.Join([]string{addrA}); err != nil || n != 1 {
			t.Fatalf("join: %d %v", n, err)
		}
	}
	eventually(t, 5*time.Second, "every node holds both others' records", func() bool {
		return slices.Equal(liveNames(a), []string{"node2", "node3"}) &&
			slices.Equal(liveNames(b), []string{"node1", "node3"}) &&
			slices.Equal(liveNames(c), []string{"node1", "node2"})
	})
	// node3 learned node2 only through node1: records travel beyond direct contacts.
	upd := record(2)
	upd.Blocks = append(upd.Blocks, netip.MustParsePrefix("10.32.9.64/26"))
	if err := b.Update(upd); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "node3 sees node2's new block", func() bool {
		for _, n := range c.Live() {
			if n.Name == "node2" {
				return len(n.Blocks) == 2
			}
		}
		return false
	})
}

func TestDeadNodeStopsBeingLive(t *testing.T) {
	a, addrA := start(t, 1, nil)
	b, _ := start(t, 2, nil)
	c, _ := start(t, 3, nil)
	b.Join([]string{addrA})
	c.Join([]string{addrA})
	eventually(t, 5*time.Second, "all live", func() bool { return len(a.Live()) == 2 })
	c.Shutdown() // a crash: no leave message
	eventually(t, 20*time.Second, "node3 declared dead by node1", func() bool {
		return slices.Equal(liveNames(a), []string{"node2"})
	})
	found := false
	for _, m := range a.Members() {
		if m.Name == "node3" {
			found = m.State == "dead"
		}
	}
	if !found {
		t.Fatalf("node3 not listed as dead: %+v", a.Members())
	}
}

func TestRestartedNodeSupersedesOldRecord(t *testing.T) {
	a, addrA := start(t, 1, nil)
	b, _ := start(t, 2, nil)
	b.Join([]string{addrA})
	eventually(t, 5*time.Second, "node2 live", func() bool { return len(a.Live()) == 1 })
	b.Shutdown()

	// The same node comes back with another block, before anyone declared it dead.
	rec := record(2)
	rec.Blocks = []netip.Prefix{netip.MustParsePrefix("10.32.7.0/26")}
	b2, err := Start(Config{Self: rec, BindAddr: loopback(2), Port: testPort})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b2.Shutdown() })
	if _, err := b2.Join([]string{addrA}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "node1 holds the restarted node2's record", func() bool {
		l := a.Live()
		return len(l) == 1 && l[0].Blocks[0] == rec.Blocks[0]
	})
}

func TestKeyRequired(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	a, addrA := start(t, 1, key)
	b, _ := start(t, 2, key)
	if _, err := b.Join([]string{addrA}); err != nil {
		t.Fatalf("join with the key: %v", err)
	}
	intruder, _ := start(t, 9, nil)
	if n, err := intruder.Join([]string{addrA}); err == nil && n > 0 {
		t.Fatal("a node without the key joined")
	}
	wrong, _ := start(t, 8, []byte("another-key-of-32-bytes-length!!"))
	if n, err := wrong.Join([]string{addrA}); err == nil && n > 0 {
		t.Fatal("a node with the wrong key joined")
	}
	time.Sleep(500 * time.Millisecond)
	if got := liveNames(a); !slices.Equal(got, []string{"node2"}) {
		t.Fatalf("node1 live peers %v, want only node2", got)
	}
	if len(intruder.Live()) != 0 || len(wrong.Live()) != 0 {
		t.Fatal("an outsider learned records")
	}
}

func TestDecodeRejectsBadInput(t *testing.T) {
	good := encode(msgRecord, record(1))
	bad := record(1)
	bad.VTEPMAC = "nope"
	for _, tc := range []struct {
		name string
		msg  []byte
		ok   bool
	}{
		{"record", good, true},
		{"state", encode(msgState, []Node{record(1), record(2)}), true},
		{"compressed state", encodeState([]Node{record(1), record(2)}), true},
		{"compressed garbage", []byte{msgStateDeflate, 1, 2, 3}, false},
		{"state that inflates past the bound", bomb(), false},
		{"empty", nil, false},
		{"kind only", []byte{msgRecord}, false},
		{"unknown kind", append([]byte{9}, good[1:]...), false},
		{"bad json", []byte{msgRecord, '{'}, false},
		{"bad mac", encode(msgRecord, bad), false},
		{"no name", encode(msgRecord, Node{Underlay: record(1).Underlay}), false},
		{"host bits in block", []byte(`` + "\x01" + `{"name":"x","underlay":"198.18.0.1","tunnel":"10.32.0.0","vtepMAC":"02:00:00:00:00:01","blocks":["10.32.0.1/26"]}`), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeRecords(tc.msg)
			if (err == nil) != tc.ok {
				t.Fatalf("decode err = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func FuzzDecodeRecords(f *testing.F) {
	f.Add(encode(msgRecord, record(1)))
	f.Add(encode(msgState, []Node{record(1), record(2)}))
	f.Add([]byte{msgState, '[', ']'})
	f.Add(encodeState([]Node{record(1), record(2)}))
	f.Fuzz(func(t *testing.T, msg []byte) {
		nodes, err := decodeRecords(msg)
		if err != nil {
			return
		}
		for _, n := range nodes {
			if n.Validate() != nil {
				t.Fatalf("decoded an invalid record %+v", n)
			}
		}
	})
}

func TestDeadWithin(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want time.Duration
	}{{1, 11 * time.Second}, {3, 11 * time.Second}, {10, 11 * time.Second}, {100, 15 * time.Second}, {1000, 19 * time.Second}} {
		if got := DeadWithin(tc.n).Round(time.Millisecond); got != tc.want {
			t.Errorf("DeadWithin(%d) = %s, want %s", tc.n, got, tc.want)
		}
	}
}

func TestPushPullPeriod(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want time.Duration
	}{{1, 15 * time.Second}, {32, 15 * time.Second}, {33, 30 * time.Second}, {64, 30 * time.Second}, {100, 45 * time.Second}, {1000, 90 * time.Second}} {
		if got := PushPullPeriod(tc.n); got != tc.want {
			t.Errorf("PushPullPeriod(%d) = %s, want %s", tc.n, got, tc.want)
		}
	}
}

// A node that comes back after it left (or was declared dead) is alive again on every
// peer it joined as soon as Join returns, without waiting for gossip. Only the leaving
// node gossips here (to spread its leave); the peers and the returning node neither gossip
// nor probe, so the returning node's Join is the only way its peers can learn the
// incarnation that beats the one they hold.
func TestRejoinAfterLeaveReachesEveryPeerDirectly(t *testing.T) {
	quiet := func(mc *memberlist.Config) {
		mc.GossipInterval, mc.ProbeInterval, mc.PushPullInterval = time.Hour, time.Hour, time.Hour
	}
	startWith := func(i int, tune func(*memberlist.Config)) (*Cluster, string) {
		c, err := Start(Config{Self: record(i), BindAddr: loopback(i), Port: testPort, tune: tune})
		if err != nil {
			t.Fatalf("start node%d: %v", i, err)
		}
		t.Cleanup(func() { _ = c.Shutdown() })
		return c, fmt.Sprintf("%s:%d", loopback(i), testPort)
	}
	a, addrA := startWith(1, quiet)
	b, addrB := startWith(2, quiet)
	c, _ := startWith(3, nil)
	for _, x := range []*Cluster{b, c} {
		if _, err := x.Join([]string{addrA, addrB}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 5*time.Second, "all live", func() bool { return len(a.Live()) == 2 && len(b.Live()) == 2 })
	if err := c.ml.Leave(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	c.Shutdown()
	eventually(t, 5*time.Second, "node3 gone from node1 and node2", func() bool {
		return slices.Equal(liveNames(a), []string{"node2"}) && slices.Equal(liveNames(b), []string{"node1"})
	})

	c2, _ := startWith(3, quiet)
	if n, err := c2.Join([]string{addrA, addrB}); err != nil || n != 2 {
		t.Fatalf("rejoin: %d answered, %v", n, err)
	}
	eventually(t, 5*time.Second, "node3 live again on node1 and node2", func() bool {
		return slices.Contains(liveNames(a), "node3") && slices.Contains(liveNames(b), "node3")
	})
}

// bomb is a compressed state of a few kilobytes that inflates to more than maxMsg.
func bomb() []byte {
	var buf bytes.Buffer
	buf.WriteByte(msgStateDeflate)
	w, _ := flate.NewWriter(&buf, flate.BestCompression)
	_, _ = w.Write([]byte("["))
	_, _ = w.Write(bytes.Repeat([]byte(" "), maxMsg+1))
	_ = w.Close()
	return buf.Bytes()
}

func TestStateRoundTripsCompressed(t *testing.T) {
	var nodes []Node
	for i := range 200 {
		nodes = append(nodes, record(i))
	}
	msg := encodeState(nodes)
	got, err := decodeRecords(msg)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(nodes) || got[199].Name != nodes[199].Name || got[199].Blocks[0] != nodes[199].Blocks[0] {
		t.Fatalf("decoded %d records, want %d equal ones", len(got), len(nodes))
	}
	if plain := len(encode(msgState, nodes)); len(msg)*3 > plain {
		t.Errorf("compressed state is %d bytes, plain %d: expected at least 3-fold smaller", len(msg), plain)
	}
}
