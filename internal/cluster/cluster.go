package cluster

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"log"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// DefaultPort is the gossip port (TCP and UDP), as Weave Net's.
const DefaultPort = 6783

// Config configures a Cluster.
type Config struct {
	Self     Node // Seq is set by the cluster
	BindAddr netip.Addr
	Port     int    // DefaultPort if 0
	Key      []byte // 16, 24 or 32 bytes; nil disables encryption
	// OnChange is called whenever live peers or their records change. It must not block.
	OnChange func()
	// LogOutput receives memberlist's log; its debug lines only when Verbose.
	LogOutput io.Writer
	Verbose   bool
	// Transport, if set, replaces the UDP/TCP transport (tests use memberlist.MockNetwork).
	Transport memberlist.Transport
	// ProbeTimeout is how long to wait for a probe's direct ack; 0 is memberlist's 500 ms.
	// Only the benchmark's simulated members, hundreds of which share one process and its
	// scheduling delays, wait longer.
	ProbeTimeout time.Duration
	// TimeScale, if above 1, stretches every timer of the gossip protocol (probe interval
	// and timeout, gossip and push/pull intervals) by that factor, so that the protocol
	// sends the same messages per round, only fewer rounds a second. Benchmarks only: the
	// 1,000-member simulation runs in one process on a small machine this way, and
	// reports traffic and CPU multiplied back by the factor.
	TimeScale float64
	// RetransmitMult, if above 0, replaces memberlist's retransmit multiplier (4): each
	// broadcast is sent RetransmitMult x ceil(log10(n+1)) times. Benchmarks only: the
	// simulated members use 1, so that the bootstrap of 1,000 members in one process
	// drains in a quarter of the rounds. A cluster without membership changes broadcasts
	// nothing, so its steady-state traffic does not depend on it.
	RetransmitMult int
	// tune, if set, adjusts memberlist's configuration last (tests).
	tune func(*memberlist.Config)
}

// Cluster is this node's view of the cluster.
type Cluster struct {
	ml       *memberlist.Memberlist
	queue    *memberlist.TransmitLimitedQueue
	onChange func()

	mu      sync.Mutex
	self    Node
	records map[string]Node                     // every record heard, self excluded
	members map[string]memberlist.NodeStateType // memberlist's view; absent = unknown
	addrs   map[string]netip.Addr
	gen     uint64 // raised on every change of self or records

	// The last encoded push/pull state and the gen it was made at. A joining node
	// exchanges state with every peer at once; compressing the state afresh for each
	// exchange was three quarters of a peer's side of it (perf, 100-node lab).
	encMu  sync.Mutex
	enc    []byte
	encGen uint64

	stats Stats
}

// Stats counts gossip traffic carried by weft's delegate (records and state exchange).
type Stats struct {
	MsgsIn, MsgsOut, BytesIn, BytesOut atomic.Uint64
}

// Start creates the memberlist and starts gossiping. Join peers with Join.
func Start(cfg Config) (*Cluster, error) {
	if err := cfg.Self.Validate(); err != nil {
		return nil, fmt.Errorf("own node record: %w", err)
	}
	c := &Cluster{
		onChange: cfg.OnChange,
		self:     cfg.Self,
		records:  map[string]Node{},
		members:  map[string]memberlist.NodeStateType{},
		addrs:    map[string]netip.Addr{},
	}
	if c.onChange == nil {
		c.onChange = func() {}
	}
	c.self.Seq = uint64(time.Now().UnixNano())

	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Self.Name
	port := cmp.Or(cfg.Port, DefaultPort)
	if cfg.BindAddr.IsValid() {
		mc.BindAddr = cfg.BindAddr.String()
		mc.AdvertiseAddr = cfg.BindAddr.String()
	}
	mc.BindPort, mc.AdvertisePort = port, port
	mc.ProbeInterval = probeInterval
	mc.SuspicionMult = suspicionMult
	mc.PushPullInterval = pushPullInterval
	// No LZW: at 100 nodes compressing each full-state exchange was most of what a
	// joining node's CPU did. weft's records in a state are compressed on their own
	// (encodeState), at a fraction of the cost.
	mc.EnableCompression = false
	mc.Delegate = (*delegate)(c)
	mc.Events = (*events)(c)
	mc.LogOutput = &logFilter{w: cmp.Or[io.Writer](cfg.LogOutput, io.Discard), verbose: cfg.Verbose}
	if cfg.Transport != nil {
		mc.Transport = cfg.Transport
	} else {
		if !cfg.BindAddr.IsValid() {
			return nil, errors.New("gossip needs this node's address to listen on (--underlay-ip)")
		}
		t, err := newTransport(netip.AddrPortFrom(cfg.BindAddr, uint16(port)), log.New(mc.LogOutput, "", log.LstdFlags))
		if err != nil {
			return nil, fmt.Errorf("%w (is another agent running, or the address not on this node?)", err)
		}
		mc.Transport = t
	}
	if cfg.Key != nil {
		switch len(cfg.Key) {
		case 16, 24, 32:
		default:
			return nil, fmt.Errorf("gossip key is %d bytes: it must be 16, 24 or 32", len(cfg.Key))
		}
		mc.SecretKey = cfg.Key
	}
	if cfg.ProbeTimeout > 0 {
		if cfg.ProbeTimeout >= probeInterval {
			return nil, fmt.Errorf("probe timeout %s: must be shorter than the probe interval %s", cfg.ProbeTimeout, probeInterval)
		}
		mc.ProbeTimeout = cfg.ProbeTimeout
	}
	if s := cfg.TimeScale; s > 1 {
		for _, d := range []*time.Duration{&mc.ProbeInterval, &mc.ProbeTimeout, &mc.GossipInterval,
			&mc.PushPullInterval, &mc.GossipToTheDeadTime} {
			*d = time.Duration(float64(*d) * s)
		}
	}
	if cfg.RetransmitMult > 0 {
		mc.RetransmitMult = cfg.RetransmitMult
	}
	if cfg.tune != nil {
		cfg.tune(mc)
	}
	c.queue = &memberlist.TransmitLimitedQueue{RetransmitMult: mc.RetransmitMult}
	ml, err := memberlist.Create(mc)
	if err != nil {
		if cfg.Transport == nil {
			_ = mc.Transport.Shutdown()
		}
		return nil, fmt.Errorf("starting gossip on %s:%d: %w (is another agent running, or the address not on this node?)", mc.BindAddr, port, err)
	}
	c.ml = ml
	c.queue.NumNodes = ml.NumMembers
	return c, nil
}

// The failure detector's settings (memberlist LAN defaults otherwise), and how often a
// node exchanges full state with a random peer in a cluster of up to 32 nodes.
const (
	probeInterval    = time.Second
	suspicionMult    = 4
	deadMarginSecs   = 7 // see DeadWithin
	pushPullInterval = 15 * time.Second
)

// PushPullPeriod is how often each node of an n-node cluster starts a full-state exchange
// with a random peer: memberlist stretches the interval by ceil(log2(n/32)) + 1 above 32
// nodes, to 45 s at 100 nodes and 90 s at 1,000. Over one period every node starts one
// exchange, so a traffic figure taken over a shorter window can miss them all.
func PushPullPeriod(n int) time.Duration {
	if n <= 32 {
		return pushPullInterval
	}
	return time.Duration(math.Ceil(math.Log2(float64(n)/32))+1) * pushPullInterval
}

// DeadWithin is the documented bound on how long after a node stops answering its peers
// have removed its routes, in a cluster of n nodes:
//
//	probe interval x (7 + 4 x max(1, log10(n)))
//
// that is 11 s up to 10 nodes, 13.8 s at 50, 15 s at 100 and 19 s at 1,000, for 99 % of
// deaths. memberlist declares a suspect dead after a suspicion timeout of
// 4 x max(1, log10(n)) probe intervals, once two other nodes have confirmed the
// suspicion (before that the timeout is longer). The 7 intervals on top:
//   - the wait until some node probes the dead one: every node probes one member per
//     interval, in its own random order, so probes of a given node arrive about once an
//     interval, at random; the wait is exponential, and its 99th percentile is
//     ln(100) = 4.6 intervals;
//   - the failed direct and indirect probe: 1 interval;
//   - the death's gossip reaching every node, and their reconciles: 1 interval.
//
// The two confirmations usually arrive within the suspicion timeout. BENCHMARKS.md
// (item 3) measures it; with a margin of 5 intervals (13 s), 100 lab nodes sharing two
// CPUs took up to 15.8 s, in line with that tail.
func DeadWithin(n int) time.Duration {
	return time.Duration((deadMarginSecs + suspicionMult*max(1, math.Log10(float64(max(n, 1))))) * float64(probeInterval))
}

// joinParallel bounds how many peers Join exchanges state with at once, joinMax how many
// in all; joinFirst is how many it contacts before the rest (see Join).
const (
	joinMax       = 100
	joinParallel  = 64
	joinFirst     = 3
	joinFirstWait = time.Second
)

// Join contacts peers ("ip" or "ip:port"), at most joinMax of them picked at random, and
// exchanges full state with each one that answers, up to joinParallel at a time. It
// returns how many answered.
//
// Contacting every peer directly, rather than one and letting gossip spread the news, puts
// a joining node's record on every peer within one round trip; and in parallel, because
// memberlist waits up to its TCP timeout (10 s) for a peer that does not answer, which,
// one peer after another, held up a join behind a partition for minutes. Beyond joinMax
// peers, the ones contacted spread the news by gossip: at 1,000 nodes a full-state
// exchange is about 110 KB each way, and one with every node would move over 200 MB per
// restart. The peers not contacted this time that are still not live members at the
// agent's next join round (5 s) are contacted then.
//
// A node that comes back after its peers declared it dead (or saw it leave) starts with a
// lower incarnation number than the one they hold for it, so they ignore the "alive" an
// exchange carries until the node has learnt that number from a peer and refuted it
// (memberlist raises its incarnation while merging that peer's state). So Join first
// contacts joinFirst peers, in random order so that restarts do not all land on the same
// ones, and only once one of them has answered (or all have failed, or joinFirstWait has
// passed: unreachable peers must not hold up the rest) the rest, which then get the
// current incarnation at the first exchange. The first few may have got the old one: each
// of those is given the new one by a second exchange as soon as the refutation shows. memberlist does not expose the incarnation; a refutation shows as a rise of its
// health score, which also rises on a failed probe: then the second exchange is merely
// redundant.
func (c *Cluster) Join(peers []string) (int, error) {
	score := c.ml.GetHealthScore()
	var seen atomic.Bool // the score falls again as probes succeed: remember the rise
	refuted := func() bool {
		if !seen.Load() && c.ml.GetHealthScore() > score {
			seen.Store(true)
		}
		return seen.Load()
	}
	addrs := make([]string, len(peers))
	for i, p := range peers {
		if _, _, err := net.SplitHostPort(p); err != nil {
			p = net.JoinHostPort(p, strconv.Itoa(DefaultPort))
		}
		addrs[i] = p
	}
	rand.Shuffle(len(addrs), func(i, j int) { addrs[i], addrs[j] = addrs[j], addrs[i] })
	addrs = addrs[:min(len(addrs), joinMax)]
	var (
		answered atomic.Int64
		errs     = make([]error, len(addrs))
		sem      = make(chan struct{}, joinParallel)
		wg       sync.WaitGroup
		first    = min(joinFirst, len(addrs))
		heard    = make(chan struct{}, first) // one per first peer: answered or failed
	)
	// answeredOnce, if set, is called once the first exchange with the peer is over,
	// before a second one: the rest of the peers need not wait for that.
	join := func(i int, answeredOnce func()) {
		sem <- struct{}{}
		defer func() { <-sem }()
		stale := !refuted()
		n, err := c.ml.Join([]string{addrs[i]})
		answered.Add(int64(n))
		errs[i] = err
		if answeredOnce != nil {
			answeredOnce()
		}
		if n > 0 && stale && refuted() {
			_, _ = c.ml.Join([]string{addrs[i]}) // it got the old incarnation: give it the new one
		}
	}
	for i := range first {
		wg.Go(func() { join(i, func() { heard <- struct{}{} }) })
	}
	wait := time.After(joinFirstWait)
waiting:
	for range first {
		select {
		case <-heard:
			if answered.Load() > 0 {
				break waiting
			}
		case <-wait: // unreachable first peers must not hold up the rest for the TCP timeout
			break waiting
		}
	}
	for i := first; i < len(addrs); i++ {
		wg.Go(func() { join(i, nil) })
	}
	wg.Wait()
	return int(answered.Load()), errors.Join(errs...)
}

// Update publishes a new version of this node's record.
func (c *Cluster) Update(self Node) error {
	if err := self.Validate(); err != nil {
		return err
	}
	c.mu.Lock()
	self.Seq = max(c.self.Seq+1, uint64(time.Now().UnixNano()))
	c.self = self
	c.gen++
	c.mu.Unlock()
	c.broadcast(self)
	return nil
}

// Self returns this node's current record.
func (c *Cluster) Self() Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.self
}

// Member is a peer with its membership state.
type Member struct {
	Node
	State string // alive, suspect, dead, left
}

// Live returns the records of the other nodes memberlist considers alive or suspect,
// sorted by name. These are the nodes the dataplane routes to.
func (c *Cluster) Live() []Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Node
	for name, st := range c.members {
		r, ok := c.records[name]
		if ok && (st == memberlist.StateAlive || st == memberlist.StateSuspect) {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b Node) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// Members returns every other node heard of, with its state.
func (c *Cluster) Members() []Member {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Member
	for name, r := range c.records {
		st, ok := c.members[name]
		state := "unknown"
		if ok {
			state = stateName(st)
		}
		out = append(out, Member{Node: r, State: state})
	}
	slices.SortFunc(out, func(a, b Member) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// LiveAddrs returns the gossip addresses of the members memberlist considers alive.
func (c *Cluster) LiveAddrs() map[netip.Addr]bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[netip.Addr]bool{}
	for name, st := range c.members {
		if st == memberlist.StateAlive || st == memberlist.StateSuspect {
			out[c.addrs[name]] = true
		}
	}
	return out
}

// Stats returns the gossip counters.
func (c *Cluster) Stats() *Stats { return &c.stats }

// Shutdown stops gossiping without announcing a leave: peers keep this node's routes until
// failure detection declares it dead, so an agent restart does not drop traffic.
func (c *Cluster) Shutdown() error { return c.ml.Shutdown() }

// Leave announces that this node leaves for good, then stops.
func (c *Cluster) Leave(timeout time.Duration) error {
	if err := c.ml.Leave(timeout); err != nil {
		return err
	}
	return c.ml.Shutdown()
}

func stateName(s memberlist.NodeStateType) string {
	switch s {
	case memberlist.StateAlive:
		return "alive"
	case memberlist.StateSuspect:
		return "suspect"
	case memberlist.StateDead:
		return "dead"
	case memberlist.StateLeft:
		return "left"
	}
	return "unknown"
}

// merge takes in records heard from the network and reports whether anything changed.
// Newer records of other nodes are re-broadcast so they spread: all of them when they came
// as gossip (spreadAll), only the sender's own (the first) when they came in a push/pull
// state, whose other records the sender heard from elsewhere and so are spreading already.
// Re-broadcasting a whole state would make every join cost a broadcast per cluster member.
// A record of ourselves that claims to be newer than ours (left by our previous
// incarnation) makes us re-assert ours.
func (c *Cluster) merge(nodes []Node, spreadAll bool) bool {
	var rebroadcast []Node
	changed := false
	c.mu.Lock()
	for i, n := range nodes {
		if n.Name == c.self.Name {
			if n.Seq >= c.self.Seq && !n.equalContent(c.self) {
				c.self.Seq = n.Seq + 1
				c.gen++
				rebroadcast = append(rebroadcast, c.self)
			}
			continue
		}
		old, ok := c.records[n.Name]
		if ok && old.Seq >= n.Seq {
			continue
		}
		c.records[n.Name] = n
		c.gen++
		if spreadAll || i == 0 {
			rebroadcast = append(rebroadcast, n)
		}
		if !ok || !old.equalContent(n) {
			changed = true
		}
	}
	c.mu.Unlock()
	for _, n := range rebroadcast {
		c.broadcast(n)
	}
	return changed
}

func (c *Cluster) broadcast(n Node) {
	c.queue.QueueBroadcast(&recordBroadcast{name: n.Name, msg: encode(msgRecord, n)})
}

// recordBroadcast is one queued record; a newer record of the same node replaces it.
type recordBroadcast struct {
	name string
	msg  []byte
}

func (b *recordBroadcast) Invalidates(o memberlist.Broadcast) bool {
	ob, ok := o.(*recordBroadcast)
	return ok && ob.name == b.name
}
func (b *recordBroadcast) Message() []byte { return b.msg }
func (b *recordBroadcast) Finished()       {}

// delegate carries records on memberlist's gossip.
type delegate Cluster

func (d *delegate) NodeMeta(int) []byte { return nil }

func (d *delegate) NotifyMsg(msg []byte) { d.receive(msg, true) }

// receive merges a gossip message (gossip) or a push/pull state.
func (d *delegate) receive(msg []byte, gossip bool) {
	c := (*Cluster)(d)
	c.stats.MsgsIn.Add(1)
	c.stats.BytesIn.Add(uint64(len(msg)))
	nodes, err := decodeRecords(msg)
	if err != nil {
		return // malformed or hostile: ignore
	}
	if c.merge(nodes, gossip) {
		c.onChange()
	}
}

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	c := (*Cluster)(d)
	msgs := c.queue.GetBroadcasts(overhead, limit)
	for _, m := range msgs {
		c.stats.MsgsOut.Add(1)
		c.stats.BytesOut.Add(uint64(len(m)))
	}
	return msgs
}

func (d *delegate) LocalState(bool) []byte {
	c := (*Cluster)(d)
	c.encMu.Lock()
	defer c.encMu.Unlock()
	var all []Node // set when the records changed since the last encoding
	c.mu.Lock()
	if c.enc == nil || c.encGen != c.gen {
		all = make([]Node, 0, len(c.records)+1)
		all = append(all, c.self) // first: merge re-broadcasts a state's first record only
		for _, r := range c.records {
			all = append(all, r)
		}
		c.encGen = c.gen
	}
	c.mu.Unlock()
	if all != nil {
		c.enc = encodeState(all) // memberlist only reads it: callers may share it
	}
	c.stats.BytesOut.Add(uint64(len(c.enc)))
	return c.enc
}

func (d *delegate) MergeRemoteState(buf []byte, _ bool) {
	d.receive(buf, false)
}

// events tracks memberlist's view of each node.
type events Cluster

func (e *events) set(n *memberlist.Node) {
	c := (*Cluster)(e)
	addr, _ := netip.AddrFromSlice(n.Addr)
	c.mu.Lock()
	c.members[n.Name] = n.State
	c.addrs[n.Name] = addr.Unmap()
	c.mu.Unlock()
	c.onChange()
}

func (e *events) NotifyJoin(n *memberlist.Node)   { e.set(n) }
func (e *events) NotifyUpdate(n *memberlist.Node) { e.set(n) }
func (e *events) NotifyLeave(n *memberlist.Node) {
	// n.State is StateDead or StateLeft; memberlist may not have updated it yet for a
	// node that failed, so a leave always means "not live".
	if n.State != memberlist.StateLeft {
		n = &memberlist.Node{Name: n.Name, Addr: n.Addr, State: memberlist.StateDead}
	}
	e.set(n)
}

// logFilter drops memberlist's debug lines unless verbose.
type logFilter struct {
	w       io.Writer
	verbose bool
}

func (f *logFilter) Write(p []byte) (int, error) {
	if !f.verbose && bytes.Contains(p, []byte("[DEBUG]")) {
		return len(p), nil
	}
	return f.w.Write(p)
}
