package cni

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/weftnet/weft/internal/api"
)

const (
	// DefaultTimeout bounds each call to the agent when the config sets no "timeout". An
	// agent that is down fails at once (nothing listens on the socket); the timeout only
	// matters for an agent that hangs.
	DefaultTimeout = 10 * time.Second
	// MaxTimeout is the longest "timeout" accepted: runtimes give a whole sandbox set-up
	// about two minutes, and a plugin that waits longer only hides a stuck agent.
	MaxTimeout = 2 * time.Minute
	// maxSocketPath is what fits in sun_path (108 bytes) with its terminating NUL.
	maxSocketPath = 107
)

// Config is weft-cni's network configuration: its entry in the runtime's conflist, e.g.
//
//	{"type": "weft-cni", "socket": "/run/weft/weft.sock", "timeout": "5s"}
//
// name and cniVersion come from the conflist. Unknown fields are ignored.
type Config struct {
	types.PluginConf
	// Socket is the agent's unix socket; api.DefaultSocket when not set.
	Socket string `json:"socket,omitempty"`
	// Timeout bounds each call to the agent; DefaultTimeout when not set. In the JSON it is
	// a Go duration string such as "5s".
	Timeout time.Duration `json:"-"`
	// RuntimeConfig carries the capabilities the conflist declares and the runtime fills:
	// weft-cni takes "portMappings" (Kubernetes' hostPort) and the agent forwards them, so
	// no portmap plugin is chained.
	RuntimeConfig struct {
		PortMappings []api.PortMapping `json:"portMappings,omitempty"`
	} `json:"runtimeConfig"`
}

// ParseConfig parses and checks the network configuration the runtime passes on stdin. Its
// errors are *types.Error with code 7 (invalid network configuration).
func ParseConfig(data []byte) (*Config, error) {
	var raw struct {
		Config
		Timeout string `json:"timeout,omitempty"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, configError("weft-cni network config is not valid JSON", err.Error())
	}
	cfg := raw.Config
	if cfg.Type == "" {
		return nil, configError(`weft-cni network config has no "type"`, `set "type": "weft-cni" in the plugin's entry`)
	}
	if cfg.Socket == "" {
		cfg.Socket = api.DefaultSocket
	}
	if err := checkSocket(cfg.Socket); err != nil {
		return nil, configError(fmt.Sprintf("weft-cni network config has a bad \"socket\" %q", cfg.Socket), err.Error())
	}
	cfg.Timeout = DefaultTimeout
	if raw.Timeout != "" {
		d, err := time.ParseDuration(raw.Timeout)
		if err == nil && (d <= 0 || d > MaxTimeout) {
			err = fmt.Errorf("must be more than 0 and at most %s", MaxTimeout)
		}
		if err != nil {
			return nil, configError(fmt.Sprintf("weft-cni network config has a bad \"timeout\" %q", raw.Timeout),
				fmt.Sprintf("%v; use a Go duration such as \"5s\", or leave it out for %s", err, DefaultTimeout))
		}
		cfg.Timeout = d
	}
	ports, err := portMappings(cfg.RuntimeConfig.PortMappings)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig,
			"weft-cni got a bad port mapping (runtimeConfig.portMappings): fix the pod's hostPort", err.Error())
	}
	cfg.RuntimeConfig.PortMappings = ports
	return &cfg, nil
}

// portMappings normalises the runtime's port mappings: protocol in lower case, tcp when
// unset (as Kubernetes means it), hostIP 0.0.0.0 as "every address". Mappings for an IPv6
// hostIP are left out, as the portmap plugin leaves out the family the pod has no address
// of: weft's pods are IPv4 only.
func portMappings(in []api.PortMapping) ([]api.PortMapping, error) {
	var out []api.PortMapping
	for _, m := range in {
		m.Protocol = strings.ToLower(m.Protocol)
		if m.Protocol == "" {
			m.Protocol = "tcp"
		}
		if m.HostIP.IsUnspecified() && m.HostIP.Is4() {
			m.HostIP = netip.Addr{}
		}
		if m.HostIP.Is6() && !m.HostIP.Is4In6() {
			continue
		}
		m.HostIP = m.HostIP.Unmap()
		if err := m.Validate(); err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

func checkSocket(path string) error {
	switch {
	case strings.ContainsRune(path, 0):
		return fmt.Errorf("it contains a NUL byte")
	case !filepath.IsAbs(path):
		return fmt.Errorf("it must be an absolute path, such as %s", api.DefaultSocket)
	case len(path) > maxSocketPath:
		return fmt.Errorf("it is %d bytes long; a unix socket path holds at most %d", len(path), maxSocketPath)
	}
	return nil
}

func configError(msg, details string) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig,
		msg+": fix weft-cni's entry in the node's CNI network config list", details)
}

// client returns an agent client for cfg.
func (cfg *Config) client() *api.Client { return api.NewClient(cfg.Socket, cfg.Timeout) }

// gcAttachments reads the attachments a GC request says are still valid: the spec's
// "cni.dev/valid-attachments", or "cni.dev/attachments", the key the 1.1.0 spec text first
// used (libcni sends both). A request with neither key is refused rather than read as "none
// is valid", which would free every address on the node.
func gcAttachments(data []byte) ([]api.Attachment, error) {
	var keys struct {
		Valid  json.RawMessage `json:"cni.dev/valid-attachments"`
		Legacy json.RawMessage `json:"cni.dev/attachments"`
	}
	if err := json.Unmarshal(data, &keys); err != nil {
		return nil, configError("weft-cni network config is not valid JSON", err.Error())
	}
	list := keys.Valid
	if list == nil {
		list = keys.Legacy
	}
	if list == nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig,
			`GC without "cni.dev/valid-attachments" would free every pod address on this node, so weft-cni refuses it: pass the list of attachments still in use (an empty list frees all)`, "")
	}
	var valid []types.GCAttachment
	if err := json.Unmarshal(list, &valid); err != nil {
		return nil, configError("GC's list of valid attachments is malformed", err.Error())
	}
	out := make([]api.Attachment, 0, len(valid))
	for _, a := range valid {
		out = append(out, api.Attachment{ContainerID: a.ContainerID, IfName: a.IfName})
	}
	return out, nil
}
