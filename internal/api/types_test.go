package api_test

import (
	"strings"
	"testing"

	"github.com/weftnet/weft/internal/api"
)

func TestHostVethName(t *testing.T) {
	a := api.HostVethName("0123456789abcdef", "eth0")
	if len(a) != 15 || !strings.HasPrefix(a, "veth") {
		t.Errorf("HostVethName = %q, want veth + 11 characters", a)
	}
	if a != api.HostVethName("0123456789abcdef", "eth0") {
		t.Error("HostVethName is not deterministic")
	}
	for _, other := range []string{api.HostVethName("0123456789abcdef", "eth1"), api.HostVethName("0123456789abcdeF", "eth0")} {
		if other == a {
			t.Errorf("two attachments share veth name %q", a)
		}
	}
}
