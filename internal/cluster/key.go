package cluster

import (
	"encoding/hex"
	"fmt"
	"os"
	"strings"
)

// LoadKey reads a gossip key file: 16, 24 or 32 bytes, hex-encoded.
func LoadKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading gossip key: %w", err)
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("gossip key %s is not hex (%v): write 32 random bytes hex-encoded, e.g. `head -c32 /dev/urandom | xxd -p -c64`", path, err)
	}
	switch len(key) {
	case 16, 24, 32:
		return key, nil
	}
	return nil, fmt.Errorf("gossip key %s has %d bytes: it must have 16, 24 or 32", path, len(key))
}
