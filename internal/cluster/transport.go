package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"log"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// transport carries memberlist's packets (UDP) and streams (TCP) on one address, like
// memberlist's NetTransport, but reads packets into one reused buffer and hands each on
// in a copy of its own size. NetTransport allocates a fresh 64 KB buffer for every packet
// it reads: an idle agent's garbage was mostly those buffers, and a thousand simulated
// members in one process allocated gigabytes a second, which the collector, counting
// whatever was allocated while it marked as live, let grow past 10 GB.
type transport struct {
	addr    netip.AddrPort
	udp     *net.UDPConn
	tcp     *net.TCPListener
	logger  *log.Logger
	packets chan *memberlist.Packet
	streams chan net.Conn
	done    chan struct{}
	closed  atomic.Bool
	wg      sync.WaitGroup
}

var _ memberlist.NodeAwareTransport = (*transport)(nil)

// udpRecvBuf is the socket receive buffer asked for, as NetTransport does: bursts of
// gossip must not be dropped while memberlist is busy.
const udpRecvBuf = 2 << 20

func newTransport(addr netip.AddrPort, logger *log.Logger) (*transport, error) {
	tcp, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(addr))
	if err != nil {
		return nil, fmt.Errorf("gossip: listening on TCP %s: %w", addr, err)
	}
	udp, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
	if err != nil {
		tcp.Close()
		return nil, fmt.Errorf("gossip: listening on UDP %s: %w", addr, err)
	}
	for size := udpRecvBuf; size > 0; size /= 2 {
		if udp.SetReadBuffer(size) == nil {
			break
		}
	}
	t := &transport{
		addr: addr, udp: udp, tcp: tcp, logger: logger,
		packets: make(chan *memberlist.Packet), streams: make(chan net.Conn), done: make(chan struct{}),
	}
	t.wg.Go(t.readPackets)
	t.wg.Go(t.accept)
	return t, nil
}

func (t *transport) readPackets() {
	buf := make([]byte, 65536)
	for {
		n, from, err := t.udp.ReadFromUDPAddrPort(buf)
		ts := time.Now()
		if err != nil {
			if t.closed.Load() {
				return
			}
			t.logger.Printf("[ERR] memberlist: reading a UDP packet: %v", err)
			continue
		}
		if n < 1 {
			continue
		}
		p := &memberlist.Packet{Buf: bytes.Clone(buf[:n]), From: net.UDPAddrFromAddrPort(from), Timestamp: ts}
		select {
		case t.packets <- p:
		case <-t.done:
			return
		}
	}
}

func (t *transport) accept() {
	var delay time.Duration
	for {
		c, err := t.tcp.AcceptTCP()
		if err != nil {
			if t.closed.Load() {
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			t.logger.Printf("[ERR] memberlist: accepting a TCP connection: %v", err)
			select {
			case <-time.After(delay):
			case <-t.done:
				return
			}
			continue
		}
		delay = 0
		select {
		case t.streams <- c:
		case <-t.done:
			c.Close()
			return
		}
	}
}

// FinalAdvertiseAddr implements memberlist.Transport.
func (t *transport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	if ip == "" {
		return t.addr.Addr().AsSlice(), int(t.addr.Port()), nil
	}
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return nil, 0, fmt.Errorf("advertise address %q: %w", ip, err)
	}
	return a.Unmap().AsSlice(), port, nil
}

// WriteTo implements memberlist.Transport.
func (t *transport) WriteTo(b []byte, addr string) (time.Time, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return time.Time{}, fmt.Errorf("gossip peer address %q: %w", addr, err)
	}
	_, err = t.udp.WriteToUDPAddrPort(b, ap)
	return time.Now(), err
}

// WriteToAddress implements memberlist.NodeAwareTransport.
func (t *transport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	return t.WriteTo(b, a.Addr)
}

// PacketCh implements memberlist.Transport.
func (t *transport) PacketCh() <-chan *memberlist.Packet { return t.packets }

// DialTimeout implements memberlist.Transport.
func (t *transport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	return d.Dial("tcp", addr)
}

// DialAddressTimeout implements memberlist.NodeAwareTransport.
func (t *transport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	return t.DialTimeout(a.Addr, timeout)
}

// StreamCh implements memberlist.Transport.
func (t *transport) StreamCh() <-chan net.Conn { return t.streams }

// Shutdown implements memberlist.Transport.
func (t *transport) Shutdown() error {
	if t.closed.Swap(true) {
		return nil
	}
	close(t.done)
	err := errors.Join(t.udp.Close(), t.tcp.Close())
	t.wg.Wait()
	return err
}
