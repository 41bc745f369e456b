package soak

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/api"
	"github.com/weftnet/weft/internal/lab"
)

// agentProc is what the leak test measures of the agent process.
type agentProc struct {
	fds, goroutines int
	rssKB           int
}

func measure(t *testing.T, n lab.Node) agentProc {
	t.Helper()
	var p agentProc
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", n.PID))
	if err != nil {
		t.Fatal(err)
	}
	p.fds = len(ents)
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", n.PID))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			p.rssKB, _ = strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		}
	}
	p.goroutines = status(t, n).Goroutines
	return p
}

// status asks n's agent for its status. Not with api.Client: its idle keep-alive
// connection would stay open in the agent and count as a leaked descriptor and goroutines.
func status(t *testing.T, n lab.Node) api.Status {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", n.Socket)
		},
	}}
	resp, err := c.Get("http://weft/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s api.Status
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// waitFastPath waits (at most 60 s) until n's agent has loaded its BPF fast path, or
// given up on it: the load comes after the join, in the background, and its objects and
// link watcher are descriptors and goroutines that stay.
func waitFastPath(t *testing.T, n lab.Node) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); ; {
		st := status(t, n).FastPath
		if st != "loading" {
			t.Logf("fast path: %s", st)
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the agent's fast path is still loading after 60s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestNoLeaks runs ADD/DEL cycles on one node and then requires that nothing is left:
// no veth in the node, no lease in the agent's state file, no extra file descriptor or
// goroutine in the agent, and a flat memory footprint.
func TestNoLeaks(t *testing.T) {
	cycles := size(100, 1000)
	l := upLab(t, 2, 0)
	ctx := context.Background()
	n := node(t, l, "node1")
	waitFastPath(t, n)
	// Warm up: the first pods grow pools and caches that then stay.
	for i := range 20 {
		name := "warm" + strconv.Itoa(i)
		if _, err := l.AddPod(ctx, "node1", name); err != nil {
			t.Fatal(err)
		}
		if err := l.DelPod(ctx, "node1", name); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(time.Second)
	before := measure(t, n)
	start := time.Now()
	var mid agentProc
	for i := range cycles {
		name := "c" + strconv.Itoa(i%4)
		if _, err := l.AddPod(ctx, "node1", name); err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		if err := l.DelPod(ctx, "node1", name); err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		if i == cycles/2 {
			mid = measure(t, n)
		}
	}
	took := time.Since(start)
	time.Sleep(2 * time.Second) // idle HTTP connections close, goroutines end
	after := measure(t, n)
	t.Logf("FIGURE leaks after %d ADD/DEL cycles in %s (%.1f cycles/s): fds %d -> %d, goroutines %d -> %d, VmRSS %d kB -> %d kB (half-way %d kB)",
		cycles, took.Round(time.Millisecond), float64(cycles)/took.Seconds(), before.fds, after.fds, before.goroutines, after.goroutines, before.rssKB, after.rssKB, mid.rssKB)
	if after.fds > before.fds {
		t.Errorf("file descriptors grew from %d to %d", before.fds, after.fds)
	}
	if after.goroutines > before.goroutines+2 {
		t.Errorf("goroutines grew from %d to %d", before.goroutines, after.goroutines)
	}
	// Flat: the second half of the run adds no more than a little (GC noise).
	if grow := after.rssKB - mid.rssKB; grow > 4096 {
		t.Errorf("VmRSS grew by %d kB in the second half of the run (%d -> %d kB)", grow, mid.rssKB, after.rssKB)
	}
	if v, err := veths(l, "node1"); err != nil || len(v) != 0 {
		t.Errorf("veths left in node1: %v (%v)", v, err)
	}
	st, err := readIPAM(n)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Leases) != 0 {
		t.Errorf("leases left in the state file: %+v", st.Leases)
	}
	if len(st.Blocks) != 1 {
		t.Errorf("blocks %v left, want only the home block", st.Blocks)
	}
	if len(l.Pods()) != 0 {
		t.Errorf("lab still lists pods: %v", l.Pods())
	}
}
