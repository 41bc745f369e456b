package lab

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// Endpoint is a row (source) or column (target) of a Matrix.
type Endpoint struct {
	Name  string     // "node1/pod2" for a pod, "node1" for a node
	Group string     // the node it is on; groups the columns in Matrix.String
	NS    string     // namespace name (sources)
	Addr  netip.Addr // address probed (targets)
}

// Cell is the outcome for one source -> target pair.
type Cell uint8

// Cells of a Matrix.
const (
	NotTested   Cell = iota // a source and itself
	Reachable               // an ICMP echo reply came back, and a UDP echo where the target runs a responder
	Unreachable             // no reply after every try
)

// Matrix is the result of a reachability check.
type Matrix struct {
	Sources []Endpoint
	Targets []Endpoint
	Cells   [][]Cell // [source][target]
	// Reasons explains failures: per pair, or per source (key target -1) when the source
	// could not probe at all.
	Reasons map[[2]int]string
	Elapsed time.Duration
}

// Failure is one unreachable pair.
type Failure struct {
	From, To string
	Addr     netip.Addr
	Reason   string
}

func (f Failure) String() string {
	return fmt.Sprintf("%s -> %s (%s): %s", f.From, f.To, f.Addr, f.Reason)
}

// Counts returns how many pairs were tested and how many of them were reachable.
func (m Matrix) Counts() (reachable, tested int) {
	for _, row := range m.Cells {
		for _, c := range row {
			switch c {
			case Reachable:
				reachable++
				tested++
			case Unreachable:
				tested++
			}
		}
	}
	return reachable, tested
}

// Failures lists the unreachable pairs, by source.
func (m Matrix) Failures() []Failure {
	var out []Failure
	for i, row := range m.Cells {
		for j, c := range row {
			if c != Unreachable {
				continue
			}
			r, ok := m.Reasons[[2]int{i, j}]
			if !ok {
				r, ok = m.Reasons[[2]int{i, -1}]
			}
			if !ok {
				r = "no echo reply"
			}
			out = append(out, Failure{From: m.Sources[i].Name, To: m.Targets[j].Name, Addr: m.Targets[j].Addr, Reason: r})
		}
	}
	return out
}

// String prints the matrix: one row per source, one column per target grouped by node,
// '.' reachable, 'X' unreachable, '-' not tested; then "N/M reachable".
func (m Matrix) String() string {
	var b strings.Builder
	type group struct {
		name       string
		start, end int
		width      int
	}
	var groups []group
	for j, t := range m.Targets {
		if len(groups) == 0 || groups[len(groups)-1].name != t.Group {
			groups = append(groups, group{name: t.Group, start: j})
		}
		groups[len(groups)-1].end = j + 1
	}
	for i := range groups {
		groups[i].width = max(len(groups[i].name), groups[i].end-groups[i].start)
	}
	label := len("from \\ to")
	for _, s := range m.Sources {
		label = max(label, len(s.Name))
	}
	fmt.Fprintf(&b, "%-*s", label, "from \\ to")
	for _, g := range groups {
		fmt.Fprintf(&b, " %-*s", g.width, g.name)
	}
	b.WriteString("\n")
	for i, s := range m.Sources {
		fmt.Fprintf(&b, "%-*s", label, s.Name)
		for _, g := range groups {
			b.WriteByte(' ')
			for j := g.start; j < g.end; j++ {
				switch m.Cells[i][j] {
				case Reachable:
					b.WriteByte('.')
				case Unreachable:
					b.WriteByte('X')
				default:
					b.WriteByte('-')
				}
			}
			b.WriteString(strings.Repeat(" ", g.width-(g.end-g.start)))
		}
		b.WriteString("\n")
	}
	ok, n := m.Counts()
	fmt.Fprintf(&b, "%d/%d reachable", ok, n)
	if n > ok {
		fmt.Fprintf(&b, ", %d unreachable", n-ok)
	}
	fmt.Fprintf(&b, " (%d sources x %d targets, %s; '.' ok, 'X' no reply, '-' self)\n",
		len(m.Sources), len(m.Targets), m.Elapsed.Round(time.Millisecond))
	return b.String()
}

// probeConfig tunes probe.
type probeConfig struct {
	tries   int           // echo requests per pair at most
	timeout time.Duration // wait for replies after each round of requests
	workers int           // sources probing at once
	total   time.Duration // bound on the whole check
}

var defaultProbe = probeConfig{tries: 3, timeout: time.Second, workers: 128, total: 2 * time.Minute}

// Check sends ICMP echo and a UDP datagram (echoed by a responder the check runs in each
// pod) from every pod to every other pod and from every node to every pod. Unreachable pairs are in the Matrix (see Failures); the error is for a check
// that could not run at all.
func (l *Lab) Check(ctx context.Context) (Matrix, error) {
	nodes := l.Nodes()
	pods := l.Pods()
	if len(nodes) == 0 {
		return Matrix{}, fmt.Errorf("lab %s has no nodes: is it up? (%s)", l.Name(), l.cli("up"))
	}
	var sources, targets []Endpoint
	for _, p := range pods {
		if !p.Address.IsValid() {
			continue // CNI ADD never finished
		}
		e := Endpoint{Name: p.Node + "/" + p.Name, Group: p.Node, NS: p.Namespace, Addr: p.Address.Addr()}
		sources = append(sources, e)
		targets = append(targets, e)
	}
	if len(targets) == 0 {
		return Matrix{}, fmt.Errorf("lab %s has no pods to check; add some with %s", l.Name(), l.cli("pod add NODE NAME"))
	}
	for _, n := range nodes {
		sources = append(sources, Endpoint{Name: n.Name, Group: n.Name, NS: n.Namespace})
	}
	return probe(ctx, sources, targets, defaultProbe)
}

// probe pings every target from every source, each source from inside its namespace, and
// then checks UDP to the targets that have a namespace (see echoPort).
func probe(ctx context.Context, sources, targets []Endpoint, cfg probeConfig) (Matrix, error) {
	if len(targets) > 1<<16 {
		return Matrix{}, fmt.Errorf("too many targets (%d): at most %d fit the ICMP sequence space", len(targets), 1<<16)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.total)
	defer cancel()
	start := time.Now()
	m := Matrix{
		Sources: sources,
		Targets: targets,
		Cells:   make([][]Cell, len(sources)),
		Reasons: map[[2]int]string{},
	}
	stop, err := startResponders(targets)
	if err != nil {
		return Matrix{}, err
	}
	defer stop()
	var mu sync.Mutex // guards m.Reasons
	var wg sync.WaitGroup
	sem := make(chan struct{}, max(cfg.workers, 1))
	for i := range sources {
		row := make([]Cell, len(targets))
		for j := range targets {
			if targets[j].Name != sources[i].Name {
				row[j] = Unreachable
			}
		}
		m.Cells[i] = row
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				mu.Lock()
				m.Reasons[[2]int{i, -1}] = "check cancelled or timed out before this source ran"
				mu.Unlock()
				return
			}
			defer func() { <-sem }()
			reasons, err := pingFrom(ctx, sources[i], targets, row, cfg)
			if err == nil {
				var udp map[int]string
				udp, err = udpFrom(ctx, sources[i], targets, row, cfg)
				for j, r := range udp {
					reasons[j] = r
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				m.Reasons[[2]int{i, -1}] = err.Error()
			}
			for j, r := range reasons {
				m.Reasons[[2]int{i, j}] = r
			}
		}()
	}
	wg.Wait()
	m.Elapsed = time.Since(start)
	if err := ctx.Err(); err != nil && errors.Is(context.Cause(ctx), context.Canceled) {
		return m, fmt.Errorf("check interrupted: %w", err)
	}
	return m, nil
}

// pingFrom probes targets from src, marking row[j] Reachable on reply. It returns
// reasons for send errors by target index.
func pingFrom(ctx context.Context, src Endpoint, targets []Endpoint, row []Cell, cfg probeConfig) (map[int]string, error) {
	conn, err := listenICMP(src.NS)
	if err != nil {
		return nil, err
	}
	defer conn.Close()

	id := uint16(rand.UintN(1 << 16))
	pending := make([]int, 0, len(targets))
	for j := range targets {
		if row[j] == Unreachable {
			pending = append(pending, j)
		}
	}
	reasons := map[int]string{}
	buf := make([]byte, 1500)
	for try := 0; try < cfg.tries && len(pending) > 0; try++ {
		if ctx.Err() != nil {
			break
		}
		for _, j := range pending {
			msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: int(id), Seq: j, Data: []byte("weft-lab")}}
			b, _ := msg.Marshal(nil)
			if _, err := conn.WriteTo(b, &net.IPAddr{IP: targets[j].Addr.AsSlice()}); err != nil {
				reasons[j] = "sending echo: " + sendErr(err)
			}
		}
		deadline := time.Now().Add(cfg.timeout)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		_ = conn.SetReadDeadline(deadline)
		left := len(pending)
		for left > 0 {
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					break
				}
				return reasons, fmt.Errorf("reading echo replies in %s: %w", src.NS, err)
			}
			msg, err := icmp.ParseMessage(1, buf[:n])
			if err != nil || msg.Type != ipv4.ICMPTypeEchoReply {
				continue
			}
			echo, ok := msg.Body.(*icmp.Echo)
			if !ok || echo.ID != int(id) || echo.Seq < 0 || echo.Seq >= len(targets) {
				continue
			}
			ip, ok := from.(*net.IPAddr)
			if !ok {
				continue
			}
			a, _ := netip.AddrFromSlice(ip.IP)
			if a.Unmap() != targets[echo.Seq].Addr || row[echo.Seq] != Unreachable {
				continue
			}
			row[echo.Seq] = Reachable
			delete(reasons, echo.Seq)
			left--
		}
		next := pending[:0]
		for _, j := range pending {
			if row[j] == Unreachable {
				next = append(next, j)
			}
		}
		pending = next
	}
	for _, j := range pending {
		if _, ok := reasons[j]; !ok {
			reasons[j] = fmt.Sprintf("no echo reply to %d tries", cfg.tries)
		}
	}
	return reasons, nil
}

func sendErr(err error) string {
	var se *os.SyscallError
	if errors.As(err, &se) {
		return se.Err.Error()
	}
	return err.Error()
}

// listenICMP opens a raw ICMP socket inside namespace nsName. A socket belongs to the
// namespace it was created in for its whole life, so it is used outside Do.
func listenICMP(nsName string) (*net.IPConn, error) {
	h, err := ns.GetNS(nsPath(nsName))
	if err != nil {
		return nil, fmt.Errorf("opening namespace %s: %w", nsName, err)
	}
	defer h.Close()
	var conn *net.IPConn
	err = h.Do(func(ns.NetNS) error {
		c, err := net.ListenPacket("ip4:icmp", "0.0.0.0")
		if err != nil {
			return err
		}
		conn = c.(*net.IPConn)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("opening a raw ICMP socket in %s (needs root/CAP_NET_RAW): %w", nsName, err)
	}
	// Only echo replies, and room for a full round of them.
	var f ipv4.ICMPFilter
	f.SetAll(true)
	f.Accept(ipv4.ICMPTypeEchoReply)
	if err := ipv4.NewPacketConn(conn).SetICMPFilter(&f); err != nil {
		conn.Close()
		return nil, fmt.Errorf("setting ICMP filter in %s: %w", nsName, err)
	}
	if rc, err := conn.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) {
			_ = unix.SetsockoptInt(int(fd), syscall.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20)
		})
	}
	return conn, nil
}
