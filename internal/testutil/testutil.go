// Package testutil holds helpers shared by weft's tests: skipping when not root, and
// throwaway network namespaces that are removed when the test ends, pass or fail.
package testutil

import (
	"os"
	"runtime"
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
