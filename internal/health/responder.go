package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"syscall"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// Responder answers probes on one wildcard UDP socket, so it serves the underlay address
// and the tunnel address alike. It answers from the address the probe was sent to, so a
// prober's connected socket accepts the answer on a node with several addresses.
type Responder struct {
	conn *ipv4.PacketConn
	raw  net.PacketConn
	info func() Info
}

// Listen opens the responder's socket on port (all IPv4 addresses of this namespace).
func Listen(port int, info func() Info) (*Responder, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error { return setDF(c) }}
	pc, err := lc.ListenPacket(context.Background(), "udp4", net.JoinHostPort("0.0.0.0", strconv.Itoa(port)))
	if err != nil {
		return nil, fmt.Errorf("health probe responder on UDP %d: %w (is another agent running? choose another --probe-port, or 0 to disable probing)", port, err)
	}
	p := ipv4.NewPacketConn(pc)
	if err := p.SetControlMessage(ipv4.FlagDst, true); err != nil {
		pc.Close()
		return nil, fmt.Errorf("health probe responder: asking for destination addresses: %w", err)
	}
	return &Responder{conn: p, raw: pc, info: info}, nil
}

// Addr is the bound address (tests listen on port 0).
func (r *Responder) Addr() netip.AddrPort { return r.raw.LocalAddr().(*net.UDPAddr).AddrPort() }

// Serve answers probes until ctx ends; it closes the socket.
func (r *Responder) Serve(ctx context.Context) error {
	go func() {
		<-ctx.Done()
		r.raw.Close()
	}()
	buf := make([]byte, 65536)
	for {
		n, cm, src, err := r.conn.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			continue // e.g. a transient error from the kernel; keep serving
		}
		if _, _, ok := parseProbe(buf[:n]); !ok {
			continue
		}
		var wcm *ipv4.ControlMessage
		if cm != nil && cm.Dst != nil && !cm.Dst.IsMulticast() {
			wcm = &ipv4.ControlMessage{Src: cm.Dst}
		}
		_, _ = r.conn.WriteTo(encodeAnswer(buf[:n], r.info()), wcm, src)
	}
}

// setDF sets DF on every packet of the socket and ignores the path-MTU cache
// (IP_PMTUDISC_PROBE): a large probe is sent at the interface MTU whatever an earlier ICMP
// "fragmentation needed" taught the kernel, so it fails while the path is too small and
// passes as soon as it is repaired. (IP_PMTUDISC_DO would fail locally with EMSGSIZE for
// the ten minutes the kernel remembers a lowered path MTU.)
func setDF(c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_PROBE)
	})
	if err != nil {
		return err
	}
	return serr
}
