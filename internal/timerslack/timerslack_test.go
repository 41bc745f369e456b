package timerslack

import (
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// threadSlack reads the slack of the calling thread.
func threadSlack() (time.Duration, error) {
	v, err := unix.PrctlRetInt(unix.PR_GET_TIMERSLACK, 0, 0, 0, 0)
	return time.Duration(v), err
}

func TestSetEveryThreadAndTheirChildren(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_SYS_NICE) to set other threads' timer slack; CI runs as root")
	}
	before, err := Get()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := Set(KernelDefault); err != nil {
			t.Errorf("restoring the default slack: %v", err)
		}
	})
	const want = 7 * time.Millisecond
	n, err := Set(want)
	if err != nil {
		t.Fatal(err)
	}
	if n < len(before)-1 {
		t.Errorf("Set changed %d threads, the process had %d", n, len(before))
	}
	got, err := Get()
	if err != nil {
		t.Fatal(err)
	}
	for id, d := range got {
		if d != want {
			t.Errorf("thread %d: slack %s, want %s", id, d, want)
		}
	}

	// Threads the runtime starts from now on inherit it: hold more threads than the
	// process had, each locked to its goroutine, and ask each.
	const extra = 4
	type answer struct {
		tid   int
		slack time.Duration
		err   error
	}
	answers := make(chan answer, len(got)+extra)
	release := make(chan struct{})
	defer close(release)
	for range len(got) + extra {
		go func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			d, err := threadSlack()
			answers <- answer{unix.Gettid(), d, err}
			<-release
		}()
	}
	seen := map[int]bool{}
	for range len(got) + extra {
		select {
		case a := <-answers:
			seen[a.tid] = true
			if a.err != nil {
				t.Fatalf("thread %d: reading its slack: %v", a.tid, a.err)
			}
			if a.slack != want {
				t.Errorf("thread %d: slack %s, want %s", a.tid, a.slack, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("locked goroutines did not start within 10s")
		}
	}
	var fresh int
	for id := range seen {
		if _, old := got[id]; !old {
			fresh++
		}
	}
	if fresh == 0 {
		t.Fatal("no new thread was started: the test checked nothing about inheritance")
	}
}

func TestSetRejectsNonPositive(t *testing.T) {
	for _, d := range []time.Duration{0, -time.Millisecond} {
		if _, err := Set(d); err == nil {
			t.Errorf("Set(%s): no error", d)
		}
	}
}
