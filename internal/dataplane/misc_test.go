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
		{"host ports", func(*Desired) {}, ""},
		{"host IP 0.0.0.0 is every address", func(d *Desired) { d.HostPorts[0].HostIP = ip("0.0.0.0") }, ""},
		{"host port protocol", func(d *Desired) { d.HostPorts[0].Protocol = "TCP" }, `protocol "TCP": must be "tcp", "udp" or "sctp"`},
		{"no host port protocol", func(d *Desired) { d.HostPorts[1].Protocol = "" }, `protocol ""`},
		{"host port 0", func(d *Desired) { d.HostPorts[0].HostPort = 0 }, "host port 0: must be 1 to 65535"},
		{"pod port 0", func(d *Desired) { d.HostPorts[2].PodPort = 0 }, "pod port 0: must be 1 to 65535"},
		{"no pod IP", func(d *Desired) { d.HostPorts[0].PodIP = netip.Addr{} }, "pod IP invalid IP: must be the pod's IPv4 address"},
		{"ipv6 pod IP", func(d *Desired) { d.HostPorts[0].PodIP = ip("2001:db8::5") }, "pod IP 2001:db8::5"},
		{"ipv6 host IP", func(d *Desired) { d.HostPorts[2].HostIP = ip("2001:db8::1") }, "host IP 2001:db8::1: must be an IPv4 unicast address of this node, or unset"},
		{"localhost host IP", func(d *Desired) { d.HostPorts[2].HostIP = ip("127.0.0.1") }, "CVE-2020-8558"},
		{"udp host port on the VXLAN port", func(d *Desired) { d.HostPorts[1].HostPort = VXLANPort }, "is weft's VXLAN port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := desiredHP(true)
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

// A bad host port stops the reconcile before anything changes, and an NFTTableSet that
// cannot be written is refused whole, by the real kernel (TestKernelNFTRuleForm) as by the
// fake.
func TestBadHostPortChangesNothing(t *testing.T) {
	k := &FakeKernel{}
	d := desiredHP(true)
	d.HostPorts[1].PodIP = ip("2001:db8::6")
	res, err := NewReconciler(k).Reconcile(d)
	if !errors.Is(err, ErrInvalidDesired) || !strings.Contains(err.Error(), "udp 15353 -> [2001:db8::6]:5353") {
		t.Fatalf("err = %v, want ErrInvalidDesired naming the mapping", err)
	}
	if len(res.Ops) != 0 || len(k.Applied) != 0 {
		t.Errorf("an invalid host port changed the kernel: %v", k.Applied)
	}

	k.State = converged(desiredA(true))
	op := wantTable(d)
	if err := k.Apply(op); err == nil || !strings.Contains(err.Error(), "pod IP 2001:db8::6") {
		t.Fatalf("fake kernel applied %s: err = %v", op, err)
	}
	if got := natJSON(k.State.NAT); got != natJSON(converged(desiredA(true)).NAT) {
		t.Errorf("a refused rebuild changed the table: %s", got)
	}
}

// The text of a mapping in a rule comment reads back as the same mapping, and only the
// canonical text does.
func TestHostPortText(t *testing.T) {
	for _, h := range desiredHP(true).HostPorts {
		text := hostPortText(h, " ")
		if got, ok := parseHostPort(text); !ok || got != h {
			t.Errorf("parseHostPort(%q) = %+v, %v; want %+v", text, got, ok, h)
		}
	}
	for _, text := range []string{"", "tcp 18080", "tcp 18080 10.32.0.5", "tcp x 10.32.0.5:80", "tcp 70000 10.32.0.5:80", "tcp 1 2 3"} {
		if got, ok := parseHostPort(text); ok {
			t.Errorf("parseHostPort(%q) = %+v, want no mapping", text, got)
		}
	}
}
