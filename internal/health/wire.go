package health

import (
	"encoding/binary"
	"errors"
)

// DefaultPort is the UDP port of the echo responder, next to gossip (6783) and VXLAN (6784).
const DefaultPort = 6785

// Wire format. A probe is
//
//	"WFTQ" | version 1 | kind 1 | seq 8 | padding up to the probe size
//
// and the answer, padded to the probe's length so the way back carries as many bytes, is
//
//	"WFTA" | version 1 | kind 1 | seq 8 | mtu 2 | used 4 | capacity 4 | nameLen 1 | name
var (
	magicProbe  = [4]byte{'W', 'F', 'T', 'Q'}
	magicAnswer = [4]byte{'W', 'F', 'T', 'A'}
)

const (
	wireVersion = 1
	probeHeader = 14
	// minAnswer is the answer without the name.
	minAnswer = probeHeader + 2 + 4 + 4 + 1
	// MinProbeSize is the smallest probe; small probes use it.
	MinProbeSize = 64
)

// Info is what a responder tells the prober about its node.
type Info struct {
	Name          string
	MTU           int // overlay MTU
	AddrsUsed     int
	AddrsCapacity int
}

func encodeProbe(buf []byte, kind byte, seq uint64) []byte {
	buf = buf[:max(len(buf), probeHeader)]
	copy(buf, magicProbe[:])
	buf[4] = wireVersion
	buf[5] = kind
	binary.BigEndian.PutUint64(buf[6:], seq)
	return buf
}

func parseProbe(b []byte) (kind byte, seq uint64, ok bool) {
	if len(b) < probeHeader || [4]byte(b[:4]) != magicProbe || b[4] != wireVersion {
		return 0, 0, false
	}
	return b[5], binary.BigEndian.Uint64(b[6:]), true
}

// encodeAnswer writes the answer to a probe of length n into a buffer of at least n bytes.
func encodeAnswer(probe []byte, info Info) []byte {
	name := info.Name
	if len(name) > 255 {
		name = name[:255]
	}
	n := max(len(probe), minAnswer+len(name))
	out := make([]byte, n)
	copy(out, magicAnswer[:])
	copy(out[4:probeHeader], probe[4:probeHeader])
	binary.BigEndian.PutUint16(out[14:], uint16(min(max(info.MTU, 0), 65535)))
	binary.BigEndian.PutUint32(out[16:], uint32(max(info.AddrsUsed, 0)))
	binary.BigEndian.PutUint32(out[20:], uint32(max(info.AddrsCapacity, 0)))
	out[24] = byte(len(name))
	copy(out[25:], name)
	return out
}

var errBadAnswer = errors.New("malformed answer")

func parseAnswer(b []byte) (kind byte, seq uint64, info Info, err error) {
	if len(b) < minAnswer || [4]byte(b[:4]) != magicAnswer || b[4] != wireVersion {
		return 0, 0, Info{}, errBadAnswer
	}
	nl := int(b[24])
	if len(b) < minAnswer+nl {
		return 0, 0, Info{}, errBadAnswer
	}
	info = Info{
		MTU:           int(binary.BigEndian.Uint16(b[14:])),
		AddrsUsed:     int(binary.BigEndian.Uint32(b[16:])),
		AddrsCapacity: int(binary.BigEndian.Uint32(b[20:])),
		Name:          string(b[25 : 25+nl]),
	}
	return b[5], binary.BigEndian.Uint64(b[6:]), info, nil
}
