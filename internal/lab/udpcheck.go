package lab

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
)

// echoPort is the UDP port of the responders a check runs in every target namespace. A
// pair counts as reachable only when both ICMP and UDP get through: between pods, TCP and
// UDP take the BPF fast path where the agents run it, and ICMP takes the normal path.
const echoPort = 6790

// startResponders opens a UDP echo responder on echoPort in every target namespace and
// returns the function that closes them. SO_REUSEPORT lets two checks run at once.
func startResponders(targets []Endpoint) (stop func(), err error) {
	var conns []net.PacketConn
	stop = func() {
		for _, c := range conns {
			c.Close()
		}
	}
	for _, t := range targets {
		if t.NS == "" {
			continue
		}
		c, err := listenUDP(t.NS, echoPort)
		if err != nil {
			stop()
			return nil, err
		}
		conns = append(conns, c)
		go func() {
			buf := make([]byte, 128)
			for {
				n, from, err := c.ReadFrom(buf)
				if err != nil {
					return // closed
				}
				_, _ = c.WriteTo(buf[:n], from)
			}
		}()
	}
	return stop, nil
}

// listenUDP opens a UDP socket on port (0: any) in the named namespace.
func listenUDP(nsName string, port int) (net.PacketConn, error) {
	h, err := ns.GetNS(nsPath(nsName))
	if err != nil {
		return nil, fmt.Errorf("opening namespace %s: %w", nsName, err)
	}
	defer h.Close()
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
		return errors.Join(err, serr)
	}}
	var conn net.PacketConn
	err = h.Do(func(ns.NetNS) error {
		conn, err = lc.ListenPacket(context.Background(), "udp4", "0.0.0.0:"+strconv.Itoa(port))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("opening UDP port %d in %s: %w", port, nsName, err)
	}
	return conn, nil
}

// udpFrom sends a datagram from src to every target that answered ICMP and has a
// responder, and turns those whose echo never comes back into Unreachable. It returns
// the reasons for them by target index.
func udpFrom(ctx context.Context, src Endpoint, targets []Endpoint, row []Cell, cfg probeConfig) (map[int]string, error) {
	var pending []int
	for j := range targets {
		if row[j] == Reachable && targets[j].NS != "" {
			pending = append(pending, j)
		}
	}
	if len(pending) == 0 {
		return nil, nil
	}
	conn, err := listenUDP(src.NS, 0)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	id := strconv.FormatUint(rand.Uint64(), 16)
	answered := make([]bool, len(targets))
	buf := make([]byte, 128)
	for try := 0; try < cfg.tries && len(pending) > 0; try++ {
		if ctx.Err() != nil {
			break
		}
		for _, j := range pending {
			dst := &net.UDPAddr{IP: targets[j].Addr.AsSlice(), Port: echoPort}
			_, _ = conn.WriteTo([]byte("weft-lab "+id+" "+strconv.Itoa(j)), dst) // a failure shows as no answer
		}
		deadline := time.Now().Add(cfg.timeout)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		_ = conn.SetReadDeadline(deadline)
		for left := len(pending); left > 0; {
			n, _, err := conn.ReadFrom(buf)
			if err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					break
				}
				return nil, fmt.Errorf("reading UDP echoes in %s: %w", src.NS, err)
			}
			f := strings.Fields(string(buf[:n]))
			if len(f) != 3 || f[0] != "weft-lab" || f[1] != id {
				continue
			}
			if j, err := strconv.Atoi(f[2]); err == nil && j >= 0 && j < len(targets) && !answered[j] {
				answered[j] = true
				left--
			}
		}
		next := pending[:0]
		for _, j := range pending {
			if !answered[j] {
				next = append(next, j)
			}
		}
		pending = next
	}
	reasons := map[int]string{}
	for _, j := range pending {
		row[j] = Unreachable
		reasons[j] = fmt.Sprintf("answers ICMP echo but not UDP to port %d in %d tries: between pods UDP and TCP take the BPF fast path; compare `weft status` (fast path) on both nodes", echoPort, cfg.tries)
	}
	return reasons, nil
}
