package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Install is what `weft install-cni` does on a node.
type Install struct {
	Plugin     string // the weft-cni binary to copy
	BinDir     string // the runtime's CNI binary directory (/opt/cni/bin)
	ConfDir    string // the runtime's CNI config directory (/etc/cni/net.d)
	Socket     string // the agent's socket, written into the conflist
	CNIVersion string // the conflist's cniVersion; CNIVersion when empty
}

// Conflist is the network configuration list weft installs: weft-cni alone. It declares
// the capability portMappings, so the runtime hands it the pods' hostPorts and the agent
// forwards them; no portmap plugin is chained.
func (in Install) Conflist() ([]byte, error) {
	v := in.CNIVersion
	if v == "" {
		v = CNIVersion
	}
	plugins := []map[string]any{{
		"type": "weft-cni", "socket": in.Socket, "capabilities": map[string]bool{"portMappings": true},
	}}
	b, err := json.MarshalIndent(map[string]any{"cniVersion": v, "name": "weft", "plugins": plugins}, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// Run installs the plugin binary and then the conflist, each by writing a temporary file
// and renaming it over the final name: a runtime never sees a half-written file, and the
// conflist (which makes the kubelet report the node's network ready) appears only after
// the binary it names is in place.
func (in Install) Run() error {
	conf, err := in.Conflist()
	if err != nil {
		return err
	}
	src, err := os.Open(in.Plugin)
	if err != nil {
		return fmt.Errorf("opening the plugin to install: %w (is this the weft image? pass --plugin)", err)
	}
	defer src.Close()
	if err := writeAtomic(filepath.Join(in.BinDir, "weft-cni"), src, 0o755); err != nil {
		return fmt.Errorf("installing weft-cni into %s: %w (is the host directory mounted writable?)", in.BinDir, err)
	}
	if err := writeAtomic(filepath.Join(in.ConfDir, ConflistName), bytes.NewReader(conf), 0o644); err != nil {
		return fmt.Errorf("writing %s into %s: %w (is the host directory mounted writable?)", ConflistName, in.ConfDir, err)
	}
	return nil
}

// writeAtomic writes r to path through a temporary file in the same directory whose name
// ends in neither .conf, .conflist nor .json, so a runtime scanning the directory never
// picks it up.
func writeAtomic(path string, r io.Reader, mode os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // a no-op after the rename
	_, err = io.Copy(f, r)
	err = errors.Join(err, f.Chmod(mode), f.Sync(), f.Close())
	if err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
