package cluster

import (
	"bytes"
	"compress/flate"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
)

// Node is one node's record.
type Node struct {
	Name     string         `json:"name"`
	Underlay netip.Addr     `json:"underlay"`
	VTEPMAC  string         `json:"vtepMAC"`
	Tunnel   netip.Addr     `json:"tunnel"`
	Blocks   []netip.Prefix `json:"blocks"`
	Version  string         `json:"version,omitempty"`
	// Seq orders a node's records: higher wins.
	Seq uint64 `json:"seq"`
}

// MAC parses VTEPMAC.
func (n Node) MAC() net.HardwareAddr {
	m, _ := net.ParseMAC(n.VTEPMAC)
	return m
}

// Validate checks that a record received from the network is usable.
func (n Node) Validate() error {
	switch {
	case n.Name == "" || len(n.Name) > 253:
		return errors.New("record without a valid node name")
	case !n.Underlay.Is4():
		return fmt.Errorf("record of %s: underlay %v is not IPv4", n.Name, n.Underlay)
	case !n.Tunnel.Is4():
		return fmt.Errorf("record of %s: tunnel %v is not IPv4", n.Name, n.Tunnel)
	case len(n.MAC()) != 6:
		return fmt.Errorf("record of %s: bad VTEP MAC %q", n.Name, n.VTEPMAC)
	case len(n.Blocks) > 4096:
		return fmt.Errorf("record of %s: %d blocks is too many", n.Name, len(n.Blocks))
	}
	for _, b := range n.Blocks {
		if !b.Addr().Is4() || b != b.Masked() {
			return fmt.Errorf("record of %s: bad block %v", n.Name, b)
		}
	}
	return nil
}

func (n Node) equalContent(o Node) bool {
	return n.Name == o.Name && n.Underlay == o.Underlay && n.VTEPMAC == o.VTEPMAC &&
		n.Tunnel == o.Tunnel && n.Version == o.Version && slices.Equal(n.Blocks, o.Blocks)
}

// Wire format: one kind byte, then JSON; a push/pull state is DEFLATE-compressed JSON.
// memberlist's own compression (LZW over every message) is off: it cost a joining node
// most of its CPU. DEFLATE at its fastest setting shrinks the records of a state about
// 5-fold for a fraction of that: at 1,000 nodes a state is the bulk of the steady gossip.
const (
	msgRecord       byte = 1 // one Node
	msgState        byte = 2 // []Node: the push/pull state (plain JSON, still accepted)
	msgStateDeflate byte = 3 // []Node: the push/pull state, DEFLATE-compressed
)

var deflaters = sync.Pool{New: func() any {
	w, _ := flate.NewWriter(nil, flate.BestSpeed)
	return w
}}

// encodeState encodes a push/pull state.
func encodeState(nodes []Node) []byte {
	var buf bytes.Buffer
	buf.WriteByte(msgStateDeflate)
	w := deflaters.Get().(*flate.Writer)
	defer deflaters.Put(w)
	w.Reset(&buf)
	if err := json.NewEncoder(w).Encode(nodes); err != nil {
		panic(err) // only our own plain structs get here, into memory
	}
	if err := w.Close(); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

// maxMsg bounds what a decoder accepts.
const maxMsg = 4 << 20

func encode(kind byte, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only our own plain structs get here
	}
	return append([]byte{kind}, b...)
}

// decodeRecords parses a gossip message or push/pull state into records. It rejects
// anything malformed; it never panics on hostile input.
func decodeRecords(msg []byte) ([]Node, error) {
	if len(msg) < 2 {
		return nil, errors.New("message too short")
	}
	if len(msg) > maxMsg {
		return nil, fmt.Errorf("message of %d bytes is too large", len(msg))
	}
	var nodes []Node
	switch msg[0] {
	case msgRecord:
		var n Node
		if err := json.Unmarshal(msg[1:], &n); err != nil {
			return nil, fmt.Errorf("decoding record: %w", err)
		}
		nodes = []Node{n}
	case msgState:
		if err := json.Unmarshal(msg[1:], &nodes); err != nil {
			return nil, fmt.Errorf("decoding state: %w", err)
		}
	case msgStateDeflate:
		// Bounded: a small hostile message must not inflate into gigabytes.
		b, err := io.ReadAll(io.LimitReader(flate.NewReader(bytes.NewReader(msg[1:])), maxMsg+1))
		if err != nil {
			return nil, fmt.Errorf("decompressing state: %w", err)
		}
		if len(b) > maxMsg {
			return nil, fmt.Errorf("state inflates to more than %d bytes", maxMsg)
		}
		if err := json.Unmarshal(b, &nodes); err != nil {
			return nil, fmt.Errorf("decoding state: %w", err)
		}
	default:
		return nil, fmt.Errorf("unknown message kind %d", msg[0])
	}
	for _, n := range nodes {
		if err := n.Validate(); err != nil {
			return nil, err
		}
	}
	return nodes, nil
}
