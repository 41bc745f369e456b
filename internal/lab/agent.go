package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/api"
)

const (
	// agentReadyTimeout bounds the wait for an agent's socket to report Ready.
	agentReadyTimeout = 30 * time.Second
	// stopGrace is how long an agent gets after SIGTERM before SIGKILL.
	stopGrace = 5 * time.Second
)

// agentArgs is the agent's command line (without argv[0]).
func (l *Lab) agentArgs(n Node) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var peers []string
	for _, o := range l.st.Nodes {
		if o.Name != n.Name {
			peers = append(peers, o.Underlay.String())
		}
	}
	args := []string{"agent",
		"--node-name", n.Name,
		"--underlay-ip", n.Underlay.String(),
	}
	if len(peers) > 0 {
		args = append(args, "--peers", strings.Join(peers, ","))
	}
	args = append(args,
		"--socket", n.Socket,
		"--state-dir", filepath.Join(n.Dir, "state"),
		"--claims-dir", filepath.Join(l.st.Dir, claimsDir),
		"--gossip-key-file", l.st.GossipFile,
	)
	return append(args, l.st.AgentArgs...)
}

// startInNS starts cmd inside network namespace nsName: the fork happens on a thread
// that is in the namespace (ns.Do locks it there), and the child keeps the namespace.
func startInNS(nsName string, cmd *exec.Cmd) error {
	h, err := ns.GetNS(nsPath(nsName))
	if err != nil {
		return fmt.Errorf("opening namespace %s: %w", nsName, err)
	}
	defer h.Close()
	return h.Do(func(ns.NetNS) error { return cmd.Start() })
}

// startAgent starts node's agent in the node namespace and records its pid. It does
// not wait for readiness.
func (l *Lab) startAgent(node string) error {
	n, err := l.node(node)
	if err != nil {
		return err
	}
	l.mu.Lock()
	bin := l.st.WeftBin
	l.mu.Unlock()
	if err := os.MkdirAll(filepath.Join(n.Dir, "state"), 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", n.Dir, err)
	}
	logPath := filepath.Join(n.Dir, "agent.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("opening agent log: %w", err)
	}
	defer logf.Close()
	args := l.agentArgs(n)
	fmt.Fprintf(logf, "--- weft lab: %s starting in namespace %s: %s %s\n",
		time.Now().Format(time.RFC3339), n.Namespace, bin, strings.Join(args, " "))

	cmd := exec.Command(bin, args...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Dir = "/"
	// Own session: the agent outlives the CLI invocation that started it and does not
	// get the terminal's signals.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := startInNS(n.Namespace, cmd); err != nil {
		return fmt.Errorf("starting the agent of %s (%s): %w", n.Name, bin, err)
	}
	// Reap the child if this process lives long enough (tests, a long-lived caller) and
	// keep how it ended; otherwise init inherits it when the CLI exits.
	c := &child{done: make(chan struct{})}
	l.children.Store(cmd.Process.Pid, c)
	go func() {
		_ = cmd.Wait()
		c.how = cmd.ProcessState.String()
		close(c.done)
	}()
	l.mu.Lock()
	for i := range l.st.Nodes {
		if l.st.Nodes[i].Name == n.Name {
			l.st.Nodes[i].PID = cmd.Process.Pid
		}
	}
	l.mu.Unlock()
	l.logf("%s: agent started, pid %d, log %s", n.Name, cmd.Process.Pid, logPath)
	return nil
}

// waitReady polls node's agent socket until it reports Ready, the agent exits, or
// agentReadyTimeout passes.
func (l *Lab) waitReady(ctx context.Context, node string) error {
	n, err := l.node(node)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, agentReadyTimeout)
	defer cancel()
	c := api.NewClient(n.Socket, 2*time.Second)
	start := time.Now()
	last := "socket not answering yet"
	for {
		if !l.agentAlive(n) {
			how := "exited"
			if c, ok := l.child(n.PID); ok {
				select {
				case <-c.done:
					how = "ended (" + c.how + ")"
				case <-time.After(time.Second):
				}
			}
			return fmt.Errorf("the agent of %s (pid %d) %s before becoming ready; see %s:\n%s",
				n.Name, n.PID, how, filepath.Join(n.Dir, "agent.log"), logTail(n, 20))
		}
		s, err := c.Status(ctx)
		switch {
		case err == nil && s.Ready:
			l.logf("%s: agent ready in %s", n.Name, time.Since(start).Round(time.Millisecond))
			return nil
		case err == nil:
			last = "not ready: " + s.Reason
		default:
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the agent of %s (pid %d) was not ready after %s (%s); see %s, which ends:\n%s",
				n.Name, n.PID, time.Since(start).Round(time.Second), last, filepath.Join(n.Dir, "agent.log"), logTail(n, 20))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func logTail(n Node, lines int) string {
	b, err := os.ReadFile(filepath.Join(n.Dir, "agent.log"))
	if err != nil {
		return "  (no log: " + err.Error() + ")"
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return "  | " + strings.Join(all, "\n  | ")
}

// child is an agent process this Lab started and reaps.
type child struct {
	done chan struct{} // closed once the process is reaped
	how  string        // how it ended; set before done is closed
}

func (l *Lab) child(pid int) (*child, bool) {
	c, ok := l.children.Load(pid)
	if !ok {
		return nil, false
	}
	return c.(*child), true
}

// agentAlive reports whether n.PID is still this lab's agent of n. An agent this Lab
// started is alive until its reaper has seen it exit: its pid cannot be reused before
// that, and /proc is not consulted (a fresh process's cmdline can read empty for a
// moment). Agents of an earlier invocation are verified through /proc.
func (l *Lab) agentAlive(n Node) bool {
	if c, ok := l.child(n.PID); ok {
		select {
		case <-c.done:
			return false
		default:
			return true
		}
	}
	l.mu.Lock()
	bin := l.st.WeftBin
	l.mu.Unlock()
	return n.PID > 0 && isAgent(n.PID, bin, n.Socket)
}

// isAgent reports whether pid is a running (not zombie) `weft agent`; with socket set,
// it must be the agent serving that socket, which protects against pid reuse.
func isAgent(pid int, bin, socket string) bool {
	if !running(pid) {
		return false
	}
	argv := cmdline(pid)
	if len(argv) < 2 || argv[1] != "agent" {
		return false
	}
	if argv[0] != bin && !strings.Contains(filepath.Base(argv[0]), "weft") {
		return false
	}
	if socket == "" {
		return true
	}
	for i, a := range argv {
		if a == "--socket="+socket || (a == "--socket" && i+1 < len(argv) && argv[i+1] == socket) {
			return true
		}
	}
	return false
}

// cmdline returns pid's argv, or nil if pid is gone. A live process's cmdline can read
// empty for a moment (seen right after exec), so an empty read is retried a few times.
func cmdline(pid int) []string {
	for try := 0; try < 5; try++ {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		if err != nil {
			return nil
		}
		if len(b) > 0 {
			return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// running reports whether pid exists and is not a zombie.
func running(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	st := b[i+2]
	return st != 'Z' && st != 'X'
}

// waitGone waits up to d for pid to exit; it reports whether it did.
func waitGone(pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		if !running(pid) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// signalAgent signals the agent's process group (it is a session leader), falling back
// to the process alone.
func signalAgent(pid int, sig syscall.Signal) error {
	if err := syscall.Kill(-pid, sig); err == nil {
		return nil
	}
	return syscall.Kill(pid, sig)
}

// stopPID stops a verified agent: SIGTERM, then SIGKILL after stopGrace.
func stopPID(pid int) error {
	if err := signalAgent(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signalling agent pid %d: %w", pid, err)
	}
	if waitGone(pid, stopGrace) {
		return nil
	}
	if err := signalAgent(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("killing agent pid %d: %w", pid, err)
	}
	if !waitGone(pid, 5*time.Second) {
		return fmt.Errorf("agent pid %d survived SIGKILL for 5s (stuck in the kernel?); check `cat /proc/%d/stack`", pid, pid)
	}
	return nil
}

// StopAgent sends sig to node's agent. For SIGTERM and SIGKILL it waits (bounded) until
// the agent is gone and forgets its pid; other signals are only delivered.
func (l *Lab) StopAgent(node string, sig os.Signal) error {
	s, ok := sig.(syscall.Signal)
	if !ok {
		return fmt.Errorf("unsupported signal %v: pass a syscall.Signal", sig)
	}
	return l.mutate(func() error {
		n, err := l.node(node)
		if err != nil {
			return err
		}
		if !l.agentAlive(n) {
			return fmt.Errorf("the agent of %s is not running (pid %d); start it with StartAgent", node, n.PID)
		}
		if err := signalAgent(n.PID, s); err != nil {
			return fmt.Errorf("signalling the agent of %s (pid %d): %w", node, n.PID, err)
		}
		if s != syscall.SIGTERM && s != syscall.SIGKILL {
			return nil
		}
		if !waitGone(n.PID, 10*time.Second) {
			return fmt.Errorf("the agent of %s (pid %d) is still running 10s after %v; try SIGKILL", node, n.PID, s)
		}
		l.logf("%s: agent pid %d stopped with %s", node, n.PID, unix.SignalName(s))
		l.setPID(node, 0)
		return l.save()
	})
}

// StartAgent starts node's agent (it must not be running), waits until it is ready, and
// then (bounded, warning only) until the cluster has converged again.
func (l *Lab) StartAgent(ctx context.Context, node string) error {
	if err := l.LaunchAgent(ctx, node); err != nil {
		return err
	}
	// With another agent stopped the cluster cannot converge: waiting would only hold
	// the caller for settleTimeout, e.g. between the restarts of two stopped agents.
	for _, o := range l.Nodes() {
		if !l.agentAlive(o) {
			l.logf("%s: not waiting for the cluster to converge: the agent of %s is not running", node, o.Name)
			return nil
		}
	}
	if err := l.WaitSettled(ctx); err != nil {
		l.logf("warning: %v; %s shows each agent's view", err, l.cli("status"))
	}
	return nil
}

// LaunchAgent starts node's agent (it must not be running) and waits until that agent is
// ready, but not for the cluster to converge. Waiting for convergence asks every agent for
// its status 20 times a second; a benchmark that times convergence itself must not load
// the agents it measures that way.
func (l *Lab) LaunchAgent(ctx context.Context, node string) error {
	return l.mutate(func() error {
		n, err := l.node(node)
		if err != nil {
			return err
		}
		if l.agentAlive(n) {
			return fmt.Errorf("the agent of %s is already running (pid %d); stop it first", node, n.PID)
		}
		if err := l.startAgent(node); err != nil {
			return err
		}
		if err := l.save(); err != nil {
			return err
		}
		return l.waitReady(ctx, node)
	})
}

func (l *Lab) setPID(node string, pid int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := range l.st.Nodes {
		if l.st.Nodes[i].Name == node {
			l.st.Nodes[i].PID = pid
		}
	}
}
