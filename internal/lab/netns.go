package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netnsDir is where iproute2 keeps named network namespaces.
const netnsDir = "/run/netns"

// nsMountMu serialises making netnsDir a shared mount point, so concurrent namespace
// creation does not stack bind mounts.
var nsMountMu sync.Mutex

func nsPath(name string) string { return filepath.Join(netnsDir, name) }

// prepareNetnsDir makes netnsDir a shared mount point, as `ip netns add` does, so the
// namespace mounts propagate to other mount namespaces.
func prepareNetnsDir() error {
	nsMountMu.Lock()
	defer nsMountMu.Unlock()
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", netnsDir, err)
	}
	err := unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("making %s a shared mount: %w", netnsDir, err)
	}
	// Not a mount point yet: bind it onto itself, then make it shared.
	if err := unix.Mount(netnsDir, netnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mounting %s onto itself: %w", netnsDir, err)
	}
	if err := unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("making %s a shared mount: %w", netnsDir, err)
	}
	return nil
}

// createNS creates the persistent network namespace /run/netns/<name> with lo up. It
// fails if the name exists already.
func createNS(name string) error {
	if err := prepareNetnsDir(); err != nil {
		return err
	}
	p := nsPath(name)
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("network namespace %s already exists (a leftover? remove it with `ip netns del %s`): %w", name, name, err)
		}
		return fmt.Errorf("creating %s: %w", p, err)
	}
	f.Close()

	errc := make(chan error, 1)
	go func() {
		// The thread is never unlocked: it moves to the new namespace and the runtime
		// discards it when this goroutine ends, so no other goroutine ever runs there.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare(CLONE_NEWNET): %w", err)
			return
		}
		self := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		if err := unix.Mount(self, p, "none", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind-mounting the new namespace on %s: %w", p, err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		_ = os.Remove(p)
		return fmt.Errorf("creating network namespace %s: %w", name, err)
	}
	return withHandle(name, func(h *netlink.Handle) error {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("finding lo: %w", err)
		}
		if err := h.LinkSetUp(lo); err != nil {
			return fmt.Errorf("bringing lo up: %w", err)
		}
		return nil
	})
}

// deleteNS removes the namespace's mount and file; the kernel frees the namespace, and
// every link in it, once nothing else holds it. A missing namespace is not an error.
func deleteNS(name string) error {
	p := nsPath(name)
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("unmounting %s: %w", p, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing %s: %w", p, err)
	}
	return nil
}

// nsExists reports whether /run/netns/<name> exists.
func nsExists(name string) bool {
	_, err := os.Lstat(nsPath(name))
	return err == nil
}

// nsInode returns the namespace inode of a mounted namespace, 0 if it is not mounted.
func nsInode(name string) uint64 {
	var st unix.Stat_t
	if err := unix.Stat(nsPath(name), &st); err != nil {
		return 0
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(nsPath(name), &fs); err != nil || fs.Type != unix.NSFS_MAGIC {
		return 0 // the placeholder file of a namespace that was never mounted
	}
	return st.Ino
}

// labNamespaces lists the existing namespaces that belong to lab name by construction:
// "<name>-underlay", "<name>-node<i>" and "<name>-node<i>-<pod>". Lab names cannot
// contain "-node<digit>", so no other lab's namespaces match.
func labNamespaces(name string) ([]string, error) {
	ents, err := os.ReadDir(netnsDir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("listing %s: %w", netnsDir, err)
	}
	re := labNSPattern(name)
	var out []string
	for _, e := range ents {
		if re.MatchString(e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

func labNSPattern(name string) *regexp.Regexp {
	q := regexp.QuoteMeta(name)
	return regexp.MustCompile(`^` + q + `-(underlay|node[0-9]+(-.+)?)$`)
}

// isPodNS reports whether a lab namespace name is a pod's (as opposed to a node's or the
// underlay's), so pods can be deleted before their nodes.
func isPodNS(lab, ns string) bool {
	rest, ok := strings.CutPrefix(ns, lab+"-node")
	return ok && strings.Contains(rest, "-")
}

// withHandle runs f with a netlink handle bound to namespace name, without moving any
// thread into it.
func withHandle(name string, f func(h *netlink.Handle) error) error {
	nsh, err := netns.GetFromPath(nsPath(name))
	if err != nil {
		return fmt.Errorf("opening network namespace %s: %w", name, err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return fmt.Errorf("opening netlink in namespace %s: %w", name, err)
	}
	defer h.Close()
	return f(h)
}
