// Package timerslack sets how late the kernel may fire the timers of every thread of this
// process (the per-thread "timer slack", prctl PR_SET_TIMERSLACK), so that an idle agent
// wakes the CPU less often.
//
// Why the agent wants it: an idle agent's work is a handful of small timers a second
// (memberlist's gossip round and probe, the health probes, the periodic kernel read), and
// each wake-up sets Go's runtime monitor thread (sysmon) polling in sleeps of 20 µs until
// the process is idle again. With the kernel's default slack of 50 µs every one of those
// sleeps and timers is a timer interrupt of its own. On virtual machines, where a timer
// interrupt and a context switch cost a hypervisor exit, that was most of an idle agent's
// CPU: with a slack of 5 ms, an idle 100-node lab (100 agents on 2 vCPUs) went from
// 0.80 – 0.92 CPUs to 0.32 – 0.44, from about 17,000 context switches and 6,900 interrupts
// a second to 7,300 and 1,600 (BENCHMARKS.md). Nothing the agent times needs millisecond
// precision: its timers are 200 ms and longer, and everything latency-bound (a CNI
// request, a gossip packet, a probe's answer) is woken by its socket, which the slack does
// not delay.
//
// The slack is per thread and a new thread inherits its creator's, so Set changes every
// thread the process has, Go's sysmon included (started before main, so a prctl from main
// alone would miss it), and the threads started later inherit it. Changing another
// thread's slack needs CAP_SYS_NICE (root, or the agent's privileged pod, have it).
package timerslack

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Default is the agent's timer slack.
const Default = 5 * time.Millisecond

// KernelDefault is the slack a Linux process starts with (that of init, 50 µs).
const KernelDefault = 50 * time.Microsecond

// Set sets the timer slack of every thread of this process to d and returns how many
// threads it changed. d must be positive (the kernel reads 0 as "back to the default").
// On error some threads may have d and others not, which is harmless: the slack only
// decides how much the kernel may batch a thread's timers.
func Set(d time.Duration) (int, error) {
	if d <= 0 {
		return 0, fmt.Errorf("timer slack %s: must be positive", d)
	}
	changed := 0
	// Threads started while the list is walked may have copied an old value from their
	// creator: walk again until a pass changes nothing (the runtime starts few threads).
	for range 5 {
		n, err := setAll(d.Nanoseconds())
		changed += n
		if err != nil || n == 0 {
			return changed, err
		}
	}
	return changed, nil
}

// Get returns the timer slack of every thread of this process, by thread id.
func Get() (map[int]time.Duration, error) {
	ids, err := threads()
	if err != nil {
		return nil, err
	}
	out := make(map[int]time.Duration, len(ids))
	for _, id := range ids {
		b, err := os.ReadFile(slackFile(id))
		if errors.Is(err, os.ErrNotExist) {
			continue // the thread ended
		}
		if err != nil {
			return nil, err
		}
		ns, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", slackFile(id), err)
		}
		out[id] = time.Duration(ns)
	}
	return out, nil
}

func setAll(ns int64) (int, error) {
	// This thread first, through prctl: it needs no capability.
	if err := unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(ns), 0, 0, 0); err != nil {
		return 0, fmt.Errorf("setting this thread's timer slack: %w", err)
	}
	cur, err := Get()
	if err != nil {
		return 0, err
	}
	want := strconv.FormatInt(ns, 10)
	n := 0
	for id, d := range cur {
		if d.Nanoseconds() == ns {
			continue
		}
		if err := os.WriteFile(slackFile(id), []byte(want), 0); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // the thread ended
			}
			if errors.Is(err, os.ErrPermission) {
				return n, fmt.Errorf("setting the timer slack of thread %d: %w (needs CAP_SYS_NICE; without it the agent works, but wakes the CPU more often)", id, err)
			}
			return n, fmt.Errorf("setting the timer slack of thread %d: %w", id, err)
		}
		n++
	}
	return n, nil
}

// threads lists this process's thread ids.
func threads() ([]int, error) {
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return nil, fmt.Errorf("listing this process's threads: %w", err)
	}
	ids := make([]int, 0, len(ents))
	for _, e := range ents {
		if id, err := strconv.Atoi(e.Name()); err == nil {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// slackFile is a thread's timer slack file: /proc/<tid> (not /proc/self/task/<tid>,
// which has none) is the thread's own view.
func slackFile(tid int) string { return "/proc/" + strconv.Itoa(tid) + "/timerslack_ns" }
