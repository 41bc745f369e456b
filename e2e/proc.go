package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Daemon is one long-running process the cluster started, logging to a file.
type Daemon struct {
	Name string
	Log  string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // valid once done is closed
}

// StartDaemon starts argv with stdout and stderr appended to logPath. The process gets
// SIGKILL if the test process dies (Pdeathsig), so a killed test leaves fewer orphans.
func StartDaemon(name, logPath string, argv ...string) (*Daemon, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	track(cmd.Process.Pid)
	d := &Daemon{Name: name, Log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() { d.err = cmd.Wait(); close(d.done) }()
	return d, nil
}

// Pid is the daemon's process id.
func (d *Daemon) Pid() int { return d.cmd.Process.Pid }

// Exited reports whether the process has ended.
func (d *Daemon) Exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM, and SIGKILL after grace; it returns once the process has ended.
func (d *Daemon) Stop(grace time.Duration) {
	if d == nil || d.Exited() {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		return
	case <-time.After(grace):
	}
	d.cmd.Process.Kill()
	<-d.done
}

// Tail returns the last n lines of the daemon's log, for failure messages.
func (d *Daemon) Tail(n int) string { return tailFile(d.Log, n) }

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// run runs a short command and returns its stdout; the error carries stderr.
func run(ctx context.Context, argv ...string) (string, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(stderr.String()+" "+stdout.String()))
	}
	return stdout.String(), nil
}

// runShort is run with a one-minute bound.
func runShort(argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return run(ctx, argv...)
}

// poll calls f every interval until it returns nil or timeout passes; it returns f's last
// error, wrapped with what was awaited.
func poll(what string, timeout, interval time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not within %s: %w", what, timeout, err)
		}
		time.Sleep(interval)
	}
}

// The test process is a child subreaper: containerd's shims (which daemonize) and the
// containers whose shim died reparent to it instead of to init, so every process the
// cluster made is a descendant of the test, and Down finds them all. Orphans that exit
// stay zombies until KillAll reaps them at the end: a few dozen at most.
var subreaperOnce sync.Once

// BecomeSubreaper makes this process a child subreaper.
func BecomeSubreaper() error {
	var err error
	subreaperOnce.Do(func() { err = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) })
	return err
}

// started holds the pids of the daemons, whose exit status their Cmd.Wait collects; every
// other zombie child is an orphan that KillAll may reap.
var started = struct {
	sync.Mutex
	pids map[int]bool
}{pids: map[int]bool{}}

func track(pid int) {
	started.Lock()
	started.pids[pid] = true
	started.Unlock()
}

func tracked(pid int) bool {
	started.Lock()
	defer started.Unlock()
	return started.pids[pid]
}

type procInfo struct {
	pid, ppid int
	state     string
}

func readProcs() map[int]procInfo {
	ents, _ := os.ReadDir("/proc")
	procs := map[int]procInfo{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may contain spaces and parentheses.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		procs[pid] = procInfo{pid: pid, ppid: ppid, state: f[0]}
	}
	return procs
}

// descendants returns every process below the roots (not the roots themselves).
func descendants(procs map[int]procInfo, roots ...int) []int {
	kids := map[int][]int{}
	for _, p := range procs {
		kids[p.ppid] = append(kids[p.ppid], p.pid)
	}
	var out []int
	queue := slices.Clone(roots)
	seen := map[int]bool{}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, k := range kids[p] {
			if !seen[k] {
				seen[k] = true
				out = append(out, k)
				queue = append(queue, k)
			}
		}
	}
	return out
}

// KillAll sends SIGKILL to the given processes and all their descendants, repeatedly
// (bounded) until none is left, and reaps the ones that are our children. It returns an
// error naming what survived.
func KillAll(roots []int) error {
	self := os.Getpid()
	for i := 0; i < 50; i++ {
		procs := readProcs()
		var alive []int
		for _, pid := range append(slices.Clone(roots), descendants(procs, roots...)...) {
			if p, ok := procs[pid]; ok && pid != self {
				if p.state == "Z" {
					if p.ppid == self && !tracked(pid) {
						var ws unix.WaitStatus
						unix.Wait4(pid, &ws, unix.WNOHANG, nil)
					}
					continue
				}
				alive = append(alive, pid)
			}
		}
		if len(alive) == 0 {
			return nil
		}
		for _, pid := range alive {
			unix.Kill(pid, unix.SIGKILL)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return errors.New("processes survived SIGKILL for 10s")
}

// pidsInNetns returns the processes whose network namespace is the one at path.
func pidsInNetns(path string) []int {
	var want unix.Stat_t
	if err := unix.Stat(path, &want); err != nil {
		return nil
	}
	var out []int
	for pid := range readProcs() {
		var st unix.Stat_t
		if unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) == nil && st.Ino == want.Ino && st.Dev == want.Dev {
			out = append(out, pid)
		}
	}
	return out
}

// runShortStdin is runShort with stdin.
func runShortStdin(stdin string, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stdout, stderr bytes.Buffer
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}
