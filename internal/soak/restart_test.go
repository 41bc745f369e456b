package soak

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/lab"
)

// TestHitlessRestart: a fixed-rate UDP stream (200 packets/s, numbered) and a continuous
// TCP stream run between pods on two nodes while both agents are killed with SIGKILL and
// restarted, and then stopped with SIGTERM and restarted. No datagram may be lost, the TCP
// stream may not stall for a second, and the agents must leave the kernel state as they
// found it (no flush, no recreated device).
func TestHitlessRestart(t *testing.T) {
	l := upLab(t, 2, 1)
	ctx := context.Background()
	var a, b lab.Pod
	for _, p := range l.Pods() {
		switch p.Node {
		case "node1":
			a = p
		case "node2":
			b = p
		}
	}
	rounds := size(1, 3)
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			before := map[string]kernelSnap{}
			for _, n := range []string{"node1", "node2"} {
				k, err := snapshot(l, n)
				if err != nil {
					t.Fatal(err)
				}
				before[n] = k
			}
			udp, err := startUDP(a.Namespace, b.Namespace, b.Address.Addr(), 200)
			if err != nil {
				t.Fatal(err)
			}
			tcp, err := startTCP(b.Namespace, a.Namespace, a.Address.Addr())
			if err != nil {
				udp.finish()
				t.Fatal(err)
			}
			t0 := time.Now()
			time.Sleep(time.Second)
			var down, restart time.Duration
			for range rounds {
				start := time.Now()
				t.Logf("stopping both agents at +%s", time.Since(t0).Round(time.Millisecond))
				for _, n := range []string{"node1", "node2"} {
					if err := l.StopAgent(n, sig); err != nil {
						t.Error(err)
					}
				}
				// Kernel state persists while no agent runs.
				for _, n := range []string{"node1", "node2"} {
					if k, err := snapshot(l, n); err != nil || !k.equal(before[n]) {
						t.Errorf("%s: kernel state changed while its agent was down (%v):\nbefore %s\nnow %s", n, err, before[n], k)
					}
				}
				down += time.Since(start)
				time.Sleep(500 * time.Millisecond)
				start = time.Now()
				t.Logf("starting both agents at +%s", time.Since(t0).Round(time.Millisecond))
				for _, n := range []string{"node1", "node2"} {
					if err := l.StartAgent(ctx, n); err != nil {
						t.Error(err)
					}
				}
				restart += time.Since(start)
				t.Logf("both agents restarted at +%s", time.Since(t0).Round(time.Millisecond))
				time.Sleep(2 * time.Second) // let the agents reconcile and resync
			}
			sent, lost, dups, serr := udp.finish()
			gap, got, terr := tcp.finish(ctx)
			t.Logf("FIGURE restart %s x%d: UDP %d sent, %d lost, %d duplicated, %d send errors; TCP %d bytes, max stall %s; stop %s, start+settle %s per round",
				sig, rounds, sent, lost, dups, serr, got, gap.Round(time.Millisecond), (down / time.Duration(rounds)).Round(time.Millisecond), (restart / time.Duration(rounds)).Round(time.Millisecond))
			if lost != 0 || serr != 0 {
				t.Errorf("UDP: %d of %d datagrams lost (%d send errors, first: %v) across the restarts, want 0; missing:%s", lost, sent, serr, udp.firstErr.Load(), udp.gaps())
			}
			if terr != nil {
				t.Errorf("TCP stream broke: %v", terr)
			}
			if gap >= time.Second {
				t.Errorf("TCP stream stalled for %s, want under 1s", gap)
			}
			for _, n := range []string{"node1", "node2"} {
				k, err := snapshot(l, n)
				if err != nil {
					t.Fatal(err)
				}
				if !k.equal(before[n]) {
					t.Errorf("%s: kernel state after the restart differs:\nbefore %s\nafter  %s", n, before[n], k)
				}
			}
			mustCheck(t, l, "after restart with "+sig.String())
		})
	}
}
