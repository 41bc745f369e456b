package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/weftnet/weft/internal/lab"
)

// nsPrefix starts the name of every namespace the harness creates itself.
const nsPrefix = "wbench-"

// env owns what the harness creates outside the lab: namespaces and processes. close
// removes all of it; it is safe to call more than once.
type env struct {
	id    string // random, so concurrent runs do not collide
	mu    sync.Mutex
	nss   []string
	procs []*exec.Cmd
}

func newEnv() *env {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return &env{id: hex.EncodeToString(b)}
}

// name returns a namespace name of this env: wbench-<id>-<s>.
func (e *env) name(s string) string { return nsPrefix + e.id + "-" + s }

// newNS creates the named namespace /run/netns/<name> with lo up.
func (e *env) newNS(short string) (string, error) {
	name := e.name(short)
	e.mu.Lock()
	e.nss = append(e.nss, name)
	e.mu.Unlock()
	errc := make(chan error, 1)
	go func() {
		// The thread moves into the new namespace and is never unlocked: the runtime
		// discards it when this goroutine ends.
		runtime.LockOSThread()
		h, err := netns.NewNamed(name)
		if err == nil {
			h.Close()
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		return "", fmt.Errorf("creating namespace %s: %w", name, err)
	}
	return name, inHandle(name, func(h *netlink.Handle) error {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		return h.LinkSetUp(lo)
	})
}

// start starts cmd inside namespace nsName (path or name); it is killed by close.
func (e *env) start(nsName string, cmd *exec.Cmd) error {
	h, err := ns.GetNS(nsFile(nsName))
	if err != nil {
		return err
	}
	defer h.Close()
	// Its own process group, killed with the group; and killed if we die.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := h.Do(func(ns.NetNS) error { return cmd.Start() }); err != nil {
		return fmt.Errorf("starting %s in %s: %w", cmd.Path, nsName, err)
	}
	e.mu.Lock()
	e.procs = append(e.procs, cmd)
	e.mu.Unlock()
	go func() { _ = cmd.Wait() }()
	return nil
}

// stop kills a process started by start.
func stop(cmd *exec.Cmd) {
	if cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
}

// close kills every process and deletes every namespace of the env.
func (e *env) close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, c := range e.procs {
		stop(c)
	}
	e.procs = nil
	var errs []error
	for i := len(e.nss) - 1; i >= 0; i-- {
		if err := netns.DeleteNamed(e.nss[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	e.nss = nil
	return errors.Join(errs...)
}

// labPrefix starts the name of every lab the harness builds.
const labPrefix = "wblab-"

// Leftovers lists namespaces of earlier harness runs that were killed before cleaning
// up: the harness's own ("wbench-...") and the underlays of its labs ("wblab-...").
func Leftovers() []string {
	ents, _ := os.ReadDir("/run/netns")
	var out []string
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, nsPrefix) || strings.HasPrefix(n, labPrefix) && strings.HasSuffix(n, "-underlay") {
			out = append(out, n)
		}
	}
	return out
}

// RemoveLeftovers removes what Leftovers lists: labs through lab.Teardown (agents,
// pods, nodes, files), the harness's own namespaces by deletion. Processes the harness
// started die with it (they are started with a parent-death signal).
func RemoveLeftovers(ctx context.Context, out io.Writer) error {
	var errs []error
	for _, n := range Leftovers() {
		if name, ok := strings.CutSuffix(n, "-underlay"); ok && strings.HasPrefix(n, labPrefix) {
			dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), name+"-*"))
			dir := filepath.Join(os.TempDir(), name+"-gone")
			if len(dirs) > 0 {
				dir = dirs[0]
			}
			if err := lab.Teardown(ctx, name, dir, out); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if err := netns.DeleteNamed(n); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func nsFile(name string) string {
	if strings.HasPrefix(name, "/") {
		return name
	}
	return filepath.Join("/run/netns", name)
}

// openHandle returns a netlink handle in namespace name, opened without moving a thread.
func openHandle(name string) (*netlink.Handle, error) {
	nh, err := netns.GetFromPath(nsFile(name))
	if err != nil {
		return nil, fmt.Errorf("opening namespace %s: %w", name, err)
	}
	defer nh.Close()
	h, err := netlink.NewHandleAt(nh)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", name, err)
	}
	return h, nil
}

// inHandle runs f with a netlink handle in namespace name.
func inHandle(name string, f func(h *netlink.Handle) error) error {
	h, err := openHandle(name)
	if err != nil {
		return err
	}
	defer h.Close()
	return f(h)
}

// inNS runs f on a thread inside namespace name.
func inNS(name string, f func() error) error {
	h, err := ns.GetNS(nsFile(name))
	if err != nil {
		return err
	}
	defer h.Close()
	return h.Do(func(ns.NetNS) error { return f() })
}

// sysctl writes a sysctl inside namespace name (/proc/sys/net is per namespace).
func sysctl(name, key, value string) error {
	return inNS(name, func() error {
		return os.WriteFile("/proc/sys/"+strings.ReplaceAll(key, ".", "/"), []byte(value), 0o644)
	})
}
