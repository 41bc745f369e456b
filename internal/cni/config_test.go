package cni

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/weftnet/weft/internal/api"
)

func TestParseConfig(t *testing.T) {
	long := "/" + strings.Repeat("s", maxSocketPath)
	tests := []struct {
		name    string
		conf    string
		socket  string
		timeout time.Duration
		errHas  string // empty: must parse
	}{
		{name: "minimal", conf: `{"cniVersion":"1.1.0","name":"weft","type":"weft-cni"}`,
			socket: api.DefaultSocket, timeout: DefaultTimeout},
		{name: "socket and timeout", conf: `{"type":"weft-cni","socket":"/run/x/a.sock","timeout":"1500ms"}`,
			socket: "/run/x/a.sock", timeout: 1500 * time.Millisecond},
		{name: "unknown fields are fine", conf: `{"type":"weft-cni","mtu":9000,"ipam":{"type":"x"},"whatever":{"a":[1,2]}}`,
			socket: api.DefaultSocket, timeout: DefaultTimeout},
		{name: "max timeout", conf: `{"type":"weft-cni","timeout":"2m"}`, socket: api.DefaultSocket, timeout: MaxTimeout},
		{name: "not JSON", conf: `{"type":"weft-cni"`, errHas: "not valid JSON"},
		{name: "empty input", conf: ``, errHas: "not valid JSON"},
		{name: "socket not a string", conf: `{"type":"weft-cni","socket":5}`, errHas: "not valid JSON"},
		{name: "missing type", conf: `{"name":"weft"}`, errHas: `no "type"`},
		{name: "relative socket", conf: `{"type":"weft-cni","socket":"weft.sock"}`, errHas: "absolute path"},
		{name: "socket too long", conf: fmt.Sprintf(`{"type":"weft-cni","socket":%q}`, long), errHas: "at most 107"},
		{name: "socket with NUL", conf: `{"type":"weft-cni","socket":"/run/a\u0000b"}`, errHas: "NUL"},
		{name: "timeout without unit", conf: `{"type":"weft-cni","timeout":"5"}`, errHas: `bad "timeout"`},
		{name: "timeout as number", conf: `{"type":"weft-cni","timeout":5}`, errHas: "not valid JSON"},
		{name: "zero timeout", conf: `{"type":"weft-cni","timeout":"0s"}`, errHas: "more than 0"},
		{name: "negative timeout", conf: `{"type":"weft-cni","timeout":"-1s"}`, errHas: "more than 0"},
		{name: "timeout too long", conf: `{"type":"weft-cni","timeout":"3m"}`, errHas: "at most 2m0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := ParseConfig([]byte(tt.conf))
			if tt.errHas != "" {
				e := asCNIError(t, err)
				if e.Code != types.ErrInvalidNetworkConfig {
					t.Errorf("code = %d, want %d (%v)", e.Code, types.ErrInvalidNetworkConfig, e)
				}
				if !strings.Contains(e.Error(), tt.errHas) || !strings.Contains(e.Error(), "fix weft-cni's entry") {
					t.Errorf("error %q does not say %q and what to fix", e, tt.errHas)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseConfig: %v", err)
			}
			if cfg.Socket != tt.socket || cfg.Timeout != tt.timeout || cfg.Type != "weft-cni" {
				t.Errorf("got socket %q timeout %v type %q, want %q %v weft-cni", cfg.Socket, cfg.Timeout, cfg.Type, tt.socket, tt.timeout)
			}
		})
	}
}

func FuzzParseConfig(f *testing.F) {
	for _, seed := range []string{
		`{"cniVersion":"1.1.0","name":"weft","type":"weft-cni"}`,
		`{"type":"weft-cni","socket":"/run/weft/weft.sock","timeout":"5s"}`,
		`{"type":"weft-cni","timeout":"-3h"}`,
		`{"type":"weft-cni","socket":"rel"}`,
		`{"type":"weft-cni","prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.32.0.2/26"}]}}`,
		`{"cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}],"type":"weft-cni"}`,
		`[]`, `null`, ``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := ParseConfig(data)
		if err != nil {
			var e *types.Error
			if !errors.As(err, &e) || e.Code != types.ErrInvalidNetworkConfig {
				t.Fatalf("error is not a code-7 *types.Error: %#v", err)
			}
			return
		}
		if !filepath.IsAbs(cfg.Socket) || len(cfg.Socket) > maxSocketPath || cfg.Timeout <= 0 || cfg.Timeout > MaxTimeout || cfg.Type == "" {
			t.Fatalf("accepted a config it should not have: %+v", cfg)
		}
		_, _ = gcAttachments(data) // must not panic either
	})
}

func TestGCAttachments(t *testing.T) {
	a := api.Attachment{ContainerID: "a", IfName: "eth0"}
	b := api.Attachment{ContainerID: "b", IfName: "net1"}
	tests := []struct {
		name string
		conf string
		want []api.Attachment
		code uint // 0: no error
	}{
		{name: "valid-attachments", conf: `{"cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"},{"containerID":"b","ifname":"net1"}]}`, want: []api.Attachment{a, b}},
		{name: "older key", conf: `{"cni.dev/attachments":[{"containerID":"b","ifname":"net1"}]}`, want: []api.Attachment{b}},
		{name: "new key wins", conf: `{"cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}],"cni.dev/attachments":[{"containerID":"b","ifname":"net1"}]}`, want: []api.Attachment{a}},
		{name: "null means none valid", conf: `{"cni.dev/valid-attachments":null}`, want: []api.Attachment{}},
		{name: "empty list", conf: `{"cni.dev/valid-attachments":[]}`, want: []api.Attachment{}},
		{name: "no list at all", conf: `{"type":"weft-cni"}`, code: types.ErrInvalidNetworkConfig},
		{name: "malformed list", conf: `{"cni.dev/valid-attachments":{"containerID":"a"}}`, code: types.ErrInvalidNetworkConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := gcAttachments([]byte(tt.conf))
			if tt.code != 0 {
				if e := asCNIError(t, err); e.Code != tt.code {
					t.Errorf("code = %d, want %d", e.Code, tt.code)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) || got == nil {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestAgentErrorCodes(t *testing.T) {
	const sock = "/run/weft/weft.sock"
	agent := func(kind error) error { return &api.Error{Kind: kind, Message: "agent says no"} }
	tests := []struct {
		name   string
		err    error
		code   uint
		msgHas string
	}{
		{"unreachable", fmt.Errorf("%w at %s: dial unix: no such file", api.ErrUnreachable, sock), types.ErrTryAgainLater, "weft pod on this node is running"},
		{"not ready", agent(api.ErrNotReady), types.ErrTryAgainLater, "runtime will retry"},
		{"exhausted", agent(api.ErrExhausted), ErrCodeExhausted, "widen --cluster-cidr"},
		{"no lease", agent(api.ErrNotFound), ErrCodeCheckFailed, "delete the pod"},
		{"invalid request", agent(api.ErrInvalid), types.ErrInternal, "one release"},
		{"bad port mapping", agent(api.ErrBadPortMapping), types.ErrInvalidNetworkConfig, "fix the pod's hostPort"},
		{"unknown agent failure", &api.Error{Message: "agent answered 500"}, types.ErrInternal, "read its log"},
		{"CNI error passes through", types.NewError(types.ErrInvalidNetNS, "x", ""), types.ErrInvalidNetNS, "x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := agentError("ADD", sock, tt.err)
			if e.Code != tt.code {
				t.Errorf("code = %d, want %d (%v)", e.Code, tt.code, e)
			}
			if !strings.Contains(e.Error(), tt.msgHas) {
				t.Errorf("message %q does not say %q", e, tt.msgHas)
			}
		})
	}
	for _, tt := range []struct {
		name   string
		err    error
		msgHas string
	}{
		{"unreachable", fmt.Errorf("%w: refused", api.ErrUnreachable), "start the weft pod"},
		{"not ready", agent(api.ErrNotReady), "not ready"},
		{"other", errors.New("boom"), "read its log"},
	} {
		t.Run("status "+tt.name, func(t *testing.T) {
			e := statusError(sock, tt.err)
			if e.Code != types.ErrPluginNotAvailable || !strings.Contains(e.Error(), tt.msgHas) {
				t.Errorf("got %d %q, want code 50 saying %q", e.Code, e, tt.msgHas)
			}
		})
	}
}

func TestPodArgs(t *testing.T) {
	for _, tt := range []struct{ in, ns, name string }{
		{"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc", "default", "web-0"},
		{"", "", ""},
		{"K8S_POD_NAME=x;garbage;=;K8S_POD_NAMESPACE", "", "x"},
	} {
		if ns, name := podArgs(tt.in); ns != tt.ns || name != tt.name {
			t.Errorf("podArgs(%q) = %q, %q; want %q, %q", tt.in, ns, name, tt.ns, tt.name)
		}
	}
}

func TestCheckLease(t *testing.T) {
	att := api.Attachment{ContainerID: "c", IfName: "eth0"}
	good := api.Lease{Attachment: att, Address: netip.MustParsePrefix("10.32.0.5/26"), Gateway: fakeGateway,
		ClusterCIDR: fakeCluster, Bridge: "weft", MTU: 1450}
	if err := checkLease(good, att); err != nil {
		t.Fatalf("good lease rejected: %v", err)
	}
	for name, mutate := range map[string]func(*api.Lease){
		"other attachment": func(l *api.Lease) { l.IfName = "eth1" },
		"no address":       func(l *api.Lease) { l.Address = netip.Prefix{} },
		"IPv6 address":     func(l *api.Lease) { l.Address = netip.MustParsePrefix("fd00::5/64") },
		"gateway is pod":   func(l *api.Lease) { l.Gateway = l.Address.Addr() },
		"no gateway":       func(l *api.Lease) { l.Gateway = netip.Addr{} },
		"outside cluster":  func(l *api.Lease) { l.ClusterCIDR = netip.MustParsePrefix("10.64.0.0/12") },
		"MTU 0":            func(l *api.Lease) { l.MTU = 0 },
		"no bridge":        func(l *api.Lease) { l.Bridge = "" },
		"bridge too long":  func(l *api.Lease) { l.Bridge = "a-very-long-bridge-name" },
	} {
		l := good
		mutate(&l)
		if err := checkLease(l, att); err == nil {
			t.Errorf("%s: lease %+v accepted", name, l)
		}
	}
}

func asCNIError(t *testing.T, err error) *types.Error {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("got %v (%T), want a *types.Error", err, err)
	}
	return e
}

func TestParsePortMappings(t *testing.T) {
	conf := func(pm string) string {
		return `{"type":"weft-cni","capabilities":{"portMappings":true},"runtimeConfig":{"portMappings":` + pm + `}}`
	}
	tests := []struct {
		name   string
		conf   string
		want   []api.PortMapping
		errHas string
	}{
		{name: "none", conf: `{"type":"weft-cni"}`},
		{name: "kubelet's form", conf: conf(`[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]`),
			want: []api.PortMapping{{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}}},
		{name: "upper case, empty protocol, hostIP", conf: conf(`[{"hostPort":53,"containerPort":5353,"protocol":"UDP","hostIP":"198.18.0.1"},{"hostPort":1,"containerPort":2,"hostIP":"0.0.0.0"},{"hostPort":3,"containerPort":4,"protocol":"sctp","hostIP":""}]`),
			want: []api.PortMapping{
				{HostPort: 53, ContainerPort: 5353, Protocol: "udp", HostIP: netip.MustParseAddr("198.18.0.1")},
				{HostPort: 1, ContainerPort: 2, Protocol: "tcp"},
				{HostPort: 3, ContainerPort: 4, Protocol: "sctp"},
			}},
		{name: "IPv6 hostIP is left out", conf: conf(`[{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":"::"},{"hostPort":8081,"containerPort":81,"protocol":"tcp","hostIP":"fd00::1"}]`)},
		{name: "host port 0", conf: conf(`[{"hostPort":0,"containerPort":80,"protocol":"tcp"}]`), errHas: "hostPort 0 is not a port"},
		{name: "container port too big", conf: conf(`[{"hostPort":80,"containerPort":70000,"protocol":"tcp"}]`), errHas: "containerPort 70000"},
		{name: "unknown protocol", conf: conf(`[{"hostPort":80,"containerPort":80,"protocol":"icmp"}]`), errHas: `protocol "icmp"`},
		{name: "bad hostIP", conf: conf(`[{"hostPort":80,"containerPort":80,"hostIP":"nope"}]`), errHas: "not valid JSON"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := ParseConfig([]byte(tt.conf))
			if tt.errHas != "" {
				e := asCNIError(t, err)
				if e.Code != types.ErrInvalidNetworkConfig || !strings.Contains(e.Error(), tt.errHas) {
					t.Errorf("error %v (code %d), want code %d saying %q", e, e.Code, types.ErrInvalidNetworkConfig, tt.errHas)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseConfig: %v", err)
			}
			if got := cfg.RuntimeConfig.PortMappings; fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("port mappings %+v, want %+v", got, tt.want)
			}
		})
	}
}
