// Package testutil holds helpers shared by weft's tests: skipping when not root, and
// throwaway network namespaces that are removed when the test ends, pass or fail.
package testutil

import (
	"net"
	"os"
	"runtime"
	"strconv"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
)

// RequireRoot skips t unless it runs as root: real-kernel tests create namespaces and links.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: it creates network namespaces and links (run `make test` as root; CI does)")
	}
	if runtime.GOOS != "linux" {
		t.Skip("needs Linux network namespaces")
	}
}

// NewNS creates a network namespace (with loopback up) that is deleted when t ends.
func NewNS(t testing.TB) ns.NetNS {
	t.Helper()
	RequireRoot(t)
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("creating network namespace: %v", err)
	}
	t.Cleanup(func() {
		_ = n.Close()
		_ = testutils.UnmountNS(n)
	})
	if err := n.Do(func(ns.NetNS) error { return setLoUp() }); err != nil {
		t.Fatalf("bringing up lo: %v", err)
	}
	return n
}

// FreePort returns a port that is free for both TCP and UDP on addr (gossip uses both), so
// tests running at the same time do not collide.
func FreePort(t testing.TB, addr string) int {
	t.Helper()
	for range 50 {
		tl, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
		if err != nil {
			t.Fatalf("finding a free port on %s: %v", addr, err)
		}
		port := tl.Addr().(*net.TCPAddr).Port
		ul, err := net.ListenPacket("udp", net.JoinHostPort(addr, strconv.Itoa(port)))
		tl.Close()
		if err == nil {
			ul.Close()
			return port
		}
	}
	t.Fatalf("no port free for both TCP and UDP on %s", addr)
	return 0
}
