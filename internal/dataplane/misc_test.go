package dataplane

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

func TestVTEPMAC(t *testing.T) {
	// Pinned: nodes of different versions must derive the same MAC for a node.
	for node, want := range map[string]string{
		"node-a": "66:57:0f:f0:5a:20",
		"node-b": "92:ef:37:c6:15:71",
	} {
		if got := VTEPMAC(node).String(); got != want {
			t.Errorf("VTEPMAC(%q) = %s, want %s (the derivation must never change)", node, got, want)
		}
	}
	seen := map[string]string{}
	for i := range 1000 {
		node := fmt.Sprintf("worker-%d", i)
		mac := VTEPMAC(node)
		if len(mac) != 6 || mac[0]&0x01 != 0 || mac[0]&0x02 == 0 {
			t.Fatalf("VTEPMAC(%q) = %s: want 6 bytes, unicast, locally administered", node, mac)
		}
		if other, dup := seen[mac.String()]; dup {
			t.Fatalf("VTEPMAC(%q) == VTEPMAC(%q) = %s", node, other, mac)
		}
		seen[mac.String()] = node
		if VTEPMAC(node).String() != mac.String() {
			t.Fatalf("VTEPMAC(%q) is not stable", node)
		}
	}
}

func TestMTUFor(t *testing.T) {
	for underlay, want := range map[int]int{1500: 1450, 9001: 8951, 1450: 1400} {
		if got := MTUFor(underlay); got != want {
			t.Errorf("MTUFor(%d) = %d, want %d", underlay, got, want)
		}
	}
}

func TestDumpRetriesInterruptedDumps(t *testing.T) {
	calls := 0
	got, err := dump("things", func() ([]int, error) {
		calls++
		if calls < 3 {
			return []int{-1}, netlink.ErrDumpInterrupted // partial result: must not be used
		}
		return []int{1, 2}, nil
	})
	if err != nil || len(got) != 2 || calls != 3 {
		t.Fatalf("got %v, %v after %d calls; want [1 2], nil after 3", got, err, calls)
	}

	calls = 0
	_, err = dump("things", func() ([]int, error) { calls++; return nil, netlink.ErrDumpInterrupted })
	if !errors.Is(err, netlink.ErrDumpInterrupted) || calls != dumpAttempts || !strings.Contains(err.Error(), "things") {
		t.Fatalf("always interrupted: err = %v after %d calls, want ErrDumpInterrupted after %d", err, calls, dumpAttempts)
	}

	calls = 0
	other := errors.New("permission denied")
	_, err = dump("things", func() ([]int, error) { calls++; return nil, other })
	if !errors.Is(err, other) || calls != 1 {
		t.Fatalf("other error: err = %v after %d calls, want it at once", err, calls)
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		modify func(*Desired)
		want   string // substring of the error; "" means valid
	}{
		{"valid", func(*Desired) {}, ""},
		{"no peers", func(d *Desired) { d.Peers = nil }, ""},
		{"bridge name too long", func(d *Desired) { d.Bridge.Name = "a-very-long-bridge" }, "bridge name"},
		{"same names", func(d *Desired) { d.VXLAN.Name = d.Bridge.Name }, "both named"},
		{"no underlay", func(d *Desired) { d.VXLAN.Underlay = "" }, "underlay interface"},
		{"vni 0", func(d *Desired) { d.VXLAN.VNI = 0 }, "VNI"},
		{"port", func(d *Desired) { d.VXLAN.Port = 70000 }, "port"},
		{"mtu", func(d *Desired) { d.MTU = 0 }, "MTU"},
		{"ipv6 underlay", func(d *Desired) { d.VXLAN.UnderlayIP = ip("2001:db8::1") }, "underlay IP"},
		{"multicast mac", func(d *Desired) { d.VXLAN.MAC = macMcast }, "VTEP MAC"},
		{"no cluster cidr", func(d *Desired) { d.ClusterCIDR = netip.Prefix{} }, "cluster CIDR"},
		{"unmasked block", func(d *Desired) { d.Bridge.Blocks[0] = cidr("10.32.0.5/26") }, "host bits"},
		{"block twice", func(d *Desired) { d.Peers[1].Blocks[0] = d.Peers[0].Blocks[0] }, "claims it too"},
		{"peer twice", func(d *Desired) { d.Peers[1].Name = d.Peers[0].Name }, "listed twice"},
		{"shared tunnel", func(d *Desired) { d.Peers[1].TunnelIP = d.VXLAN.TunnelIP }, "already has tunnel IP"},
		{"shared mac", func(d *Desired) { d.Peers[1].MAC = d.Peers[0].MAC }, "already has VTEP MAC"},
		{"peer with our underlay", func(d *Desired) { d.Peers[0].UnderlayIP = d.VXLAN.UnderlayIP }, "this node's underlay"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := desiredA(true)
			tc.modify(&d)
			err := d.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("err = %v, want one mentioning %q", err, tc.want)
			case tc.want != "" && !errors.Is(err, ErrInvalidDesired):
				t.Fatalf("err = %v does not wrap ErrInvalidDesired", err)
			}
		})
	}
}
