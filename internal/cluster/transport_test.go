package cluster

import (
	"io"
	"log"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestTransportHandsOnPacketsInBuffersOfTheirSize(t *testing.T) {
	addr := netip.AddrPortFrom(loopback(7), uint16(testPort))
	tr, err := newTransport(addr, log.New(io.Discard, "", 0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Shutdown() })

	for _, size := range []int{1, 100, 1400} {
		sent := make([]byte, size)
		for i := range sent {
			sent[i] = byte(i)
		}
		if _, err := tr.WriteTo(sent, addr.String()); err != nil {
			t.Fatal(err)
		}
		select {
		case p := <-tr.PacketCh():
			if string(p.Buf) != string(sent) {
				t.Fatalf("%d bytes sent, got %d different ones", size, len(p.Buf))
			}
			if cap(p.Buf) > size+64 {
				t.Errorf("a %d-byte packet holds a %d-byte buffer", size, cap(p.Buf))
			}
			if got := p.From.String(); got != addr.String() {
				t.Errorf("packet from %s, want %s", got, addr)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("the %d-byte packet did not arrive", size)
		}
	}

	// Streams: a dialled connection is handed to memberlist.
	c, err := tr.DialTimeout(addr.String(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case s := <-tr.StreamCh():
		s.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("the TCP connection was not handed on")
	}

	ip, port, err := tr.FinalAdvertiseAddr("", 0)
	if err != nil || !ip.Equal(net.IP(loopback(7).AsSlice())) || port != testPort {
		t.Errorf("advertise address %v:%d (%v), want %s", ip, port, err, addr)
	}

	// Shutdown stops both listeners and is safe to repeat.
	if err := tr.Shutdown(); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	if err := tr.Shutdown(); err != nil {
		t.Errorf("second shutdown: %v", err)
	}
	if _, err := net.DialTimeout("tcp", addr.String(), time.Second); err == nil {
		t.Error("the TCP listener still accepts after shutdown")
	}
}

func TestJoinContactsAtMostJoinMaxPeers(t *testing.T) {
	c, _ := start(t, 1, nil)
	// Nobody listens on these: each contact fails at once with "connection refused".
	var peers []string
	for i := range joinMax + 50 {
		peers = append(peers, netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 78, byte(i / 250), byte(1 + i%250)}), uint16(testPort)).String())
	}
	n, err := c.Join(peers)
	if n != 0 || err == nil {
		t.Fatalf("Join with nobody listening: %d answered, err %v", n, err)
	}
	if got := strings.Count(err.Error(), "connection refused"); got != joinMax {
		t.Errorf("Join contacted %d of %d peers, want joinMax = %d", got, len(peers), joinMax)
	}
}
