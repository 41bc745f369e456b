package manifest

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"text/template"
)

// Options are the knobs of the rendered manifest.
type Options struct {
	ClusterCIDR string // the pods' address range
	BlockSize   int    // prefix length of the blocks nodes claim
	MTU         int    // 0: the agent derives it from the underlay
	Image       string
	LogLevel    string // debug, info, warn, error
}

// Defaults are the options deploy/weft.yaml is rendered with.
func Defaults() Options {
	return Options{ClusterCIDR: "10.32.0.0/12", BlockSize: 26, MTU: 0, Image: "weft:dev", LogLevel: "info"}
}

// Where the DaemonSet mounts things; the agent and install-cni get them as flags.
const (
	Namespace      = "kube-system"
	ConflistName   = "10-weft.conflist"
	CNIVersion     = "1.0.0" // of the conflist: the newest containerd 1.6 and 1.7 (libcni 1.1) accept
	GossipSecret   = "weft-gossip-key"
	HealthPort     = 6782
	hostCNIBinDir  = "/host/opt/cni/bin"
	hostCNIConfDir = "/host/etc/cni/net.d"
)

//go:embed weft.yaml.tmpl
var tmplText string

var tmpl = template.Must(template.New("weft.yaml").Funcs(template.FuncMap{
	// q quotes a string as a YAML (JSON) double-quoted scalar, so no value can break the
	// document's structure.
	"q": func(v any) string {
		b, _ := json.Marshal(fmt.Sprint(v))
		return string(b)
	},
}).Option("missingkey=error").Parse(tmplText))

// Render returns the manifest for o.
func Render(o Options) ([]byte, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	err := tmpl.Execute(&b, map[string]any{
		"O": o, "Namespace": Namespace, "Secret": GossipSecret, "HealthPort": HealthPort,
		"CNIBinDir": hostCNIBinDir, "CNIConfDir": hostCNIConfDir,
	})
	if err != nil {
		return nil, fmt.Errorf("rendering the manifest: %w", err)
	}
	return b.Bytes(), nil
}

func (o Options) validate() error {
	p, err := netip.ParsePrefix(o.ClusterCIDR)
	switch {
	case err != nil || !p.Addr().Is4():
		return fmt.Errorf("--cidr %q: need an IPv4 prefix such as 10.32.0.0/12", o.ClusterCIDR)
	case p != p.Masked():
		return fmt.Errorf("--cidr %s has host bits set: use %s", p, p.Masked())
	case o.BlockSize < p.Bits() || o.BlockSize > 29:
		return fmt.Errorf("--block-size %d: must be between %d (the CIDR's prefix length) and 29", o.BlockSize, p.Bits())
	case o.MTU != 0 && (o.MTU < 576 || o.MTU > 65000):
		return fmt.Errorf("--mtu %d: must be between 576 and 65000, or 0 to derive it from each node's underlay", o.MTU)
	case o.Image == "":
		return fmt.Errorf("--image is empty: name the weft image, e.g. weft:dev")
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(o.LogLevel)); err != nil {
		return fmt.Errorf("--log-level %q: use debug, info, warn or error", o.LogLevel)
	}
	return nil
}
