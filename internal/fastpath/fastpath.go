package fastpath

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"net/netip"
	"runtime/debug"

	"github.com/cilium/ebpf"
)

// object is fastpath.c compiled by `make bpf` (clang -target bpf); it is committed, so
// building weft needs no clang.
//
//go:embed fastpath.o
var object []byte

// ErrUnsupported wraps every reason the kernel cannot run the fast path: no BPF, no BTF, no
// connection-tracking kfuncs, not enough privilege. The caller runs without it.
var ErrUnsupported = errors.New("the kernel cannot run weft's BPF fast path")

// Program is the loaded fast path: two tc programs and their two maps. It is not bound to
// a network namespace; Attach works in the caller's.
type Program struct {
	coll       *ebpf.Collection
	fromPod    *ebpf.Program
	fromTunnel *ebpf.Program
	pods       *ebpf.Map
	config     *ebpf.Map
	counts     *ebpf.Map
}

// Load loads the fast path into the kernel. Its error wraps ErrUnsupported when the kernel
// lacks what it needs.
func Load() (*Program, error) {
	spec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(object))
	if err != nil {
		return nil, fmt.Errorf("reading the embedded fast-path object: %w", err)
	}
	coll, err := ebpf.NewCollection(spec)
	// Loading parsed the kernel's BTF (several MB, mapped and decoded) to resolve the
	// kfuncs and nf_conn's layout; nothing needs it afterwards: hand the memory back now
	// rather than whenever the runtime would.
	debug.FreeOSMemory()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	return &Program{
		coll:       coll,
		fromPod:    coll.Programs["from_pod"],
		fromTunnel: coll.Programs["from_tunnel"],
		pods:       coll.Maps["pods"],
		config:     coll.Maps["config"],
		counts:     coll.Maps["counts"],
	}, nil
}

// Close unloads what the kernel holds only for this Program; programs still attached to
// devices stay there until replaced or detached.
func (p *Program) Close() error {
	p.coll.Close()
	return nil
}

// program is from_tunnel for the VXLAN device, from_pod for a pod's veth.
func (p *Program) program(tunnel bool) *ebpf.Program {
	if tunnel {
		return p.fromTunnel
	}
	return p.fromPod
}

// config mirrors struct config in fastpath.c.
type config struct {
	BridgeIfindex uint32
	VXLANIfindex  uint32
	BridgeMAC     [6]byte
	_             [2]byte
}

// syncPods makes the pods map hold exactly want: each local pod's address and the ifindex
// of its veth's host end. It changes only the entries that differ and returns how many.
func (p *Program) syncPods(want map[netip.Addr]int) (int, error) {
	have := map[[4]byte]uint32{}
	var k [4]byte
	var v uint32
	it := p.pods.Iterate()
	for it.Next(&k, &v) {
		have[k] = v
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("reading the fast path's pod map: %w", err)
	}
	changes := 0
	for a, idx := range want {
		if !a.Is4() {
			continue
		}
		key := a.As4()
		old, ok := have[key]
		delete(have, key)
		if ok && old == uint32(idx) {
			continue
		}
		if err := p.pods.Put(key, uint32(idx)); err != nil {
			return changes, fmt.Errorf("adding pod %s to the fast path: %w", a, err)
		}
		changes++
	}
	for key := range have {
		if err := p.pods.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return changes, fmt.Errorf("removing pod %s from the fast path: %w", netip.AddrFrom4(key), err)
		}
		changes++
	}
	return changes, nil
}

// Verdicts name what the programs did with packets, in the order of enum verdict in
// fastpath.c: handed to a local pod, handed to the VXLAN device, or left to the normal
// path because the packet is not plain IPv4 TCP/UDP, is not for a known pod, has no
// resolved next hop, or belongs to a connection netfilter translates.
var Verdicts = []string{"to_pod", "to_tunnel", "other", "not_pod", "no_route", "translated"}

// Carried reports whether verdict (one of Verdicts) is one where the fast path handed the
// packet on itself.
func Carried(verdict string) bool { return verdict == "to_pod" || verdict == "to_tunnel" }

// Counts returns how many packets got each verdict since the program was loaded.
func (p *Program) Counts() (map[string]uint64, error) {
	out := make(map[string]uint64, len(Verdicts))
	for i, v := range Verdicts {
		var perCPU []uint64
		if err := p.counts.Lookup(uint32(i), &perCPU); err != nil {
			return nil, fmt.Errorf("reading the fast path's counters: %w", err)
		}
		var sum uint64
		for _, c := range perCPU {
			sum += c
		}
		out[v] = sum
	}
	return out, nil
}
