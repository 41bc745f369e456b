package lab

// Observability end to end: each fault injected on purpose in a 3-node lab must be reported
// with the right cause by `weft status peers --json` and `weft doctor` within 10s, and
// clear within 10s of the repair. Then /metrics is scraped and parsed, and the status page
// is loaded in headless Chromium.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/weftnet/weft/internal/api"
)

const (
	faultBound = 10 * time.Second // detect and clear within this
	agentHTTP  = "127.0.0.1:6782" // the agent's HTTP port, as seen inside its node
)

// weftIn runs the real weft binary inside node's namespace; it returns stdout and the exit
// error (nil for status 0).
func weftIn(t *testing.T, l *Lab, node string, args ...string) ([]byte, error) {
	t.Helper()
	weft, _ := requireBins(t)
	n, err := l.node(node)
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	var runErr error
	err = inNodeNS(l, node, func() error {
		cmd := exec.Command(weft, append(args, "--socket", n.Socket)...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, runErr = cmd.Output()
		if runErr != nil {
			runErr = fmt.Errorf("%w: %s", runErr, stderr.String())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out, runErr
}

type peersJSON struct {
	Node  string     `json:"node"`
	Peers []api.Peer `json:"peers"`
}

// peerHealth is what `weft status peers --json` on from says about to.
func peerHealth(t *testing.T, l *Lab, from, to string) (api.Peer, error) {
	out, err := weftIn(t, l, from, "status", "peers", "--json")
	if err != nil {
		return api.Peer{}, err
	}
	var v peersJSON
	if err := json.Unmarshal(out, &v); err != nil {
		return api.Peer{}, fmt.Errorf("decoding %q: %w", out, err)
	}
	for _, p := range v.Peers {
		if p.Name == to {
			return p, nil
		}
	}
	return api.Peer{}, fmt.Errorf("%s does not list %s", from, to)
}

// waitHealth polls until from reports to's health as want, and returns how long it took.
func waitHealth(t *testing.T, l *Lab, from, to, want string) time.Duration {
	t.Helper()
	start := time.Now()
	var last string
	ok, _ := poll(faultBound, func() (bool, string) {
		p, err := peerHealth(t, l, from, to)
		if err != nil {
			last = err.Error()
			return false, last
		}
		last = p.Health + ": " + p.HealthDetail
		return p.Health == want, last
	})
	if !ok {
		t.Fatalf("%s did not report %s as %s within %s; last: %s", from, to, want, faultBound, last)
	}
	took := time.Since(start)
	t.Logf("%s sees %s %s after %s (%s)", from, to, want, took.Round(time.Millisecond), last)
	return took
}

type doctorJSON struct {
	Problems int `json:"problems"`
	Checks   []struct {
		Check, Problem, Fix string
		OK                  bool
	} `json:"checks"`
}

// wantDoctor runs `weft doctor --json` on node and requires a non-zero exit and a problem
// in check mentioning cause, with a fix.
func wantDoctor(t *testing.T, l *Lab, node, check, cause string) {
	t.Helper()
	out, err := weftIn(t, l, node, "doctor", "--json")
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("weft doctor on %s: want a non-zero exit, got %v\n%s", node, err, out)
	}
	var r doctorJSON
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("decoding doctor output %q: %v", out, err)
	}
	for _, c := range r.Checks {
		if c.Check == check && !c.OK && strings.Contains(c.Problem, cause) && c.Fix != "" {
			t.Logf("doctor on %s: %s: %s; fix: %s", node, c.Check, c.Problem, c.Fix)
			return
		}
	}
	t.Fatalf("weft doctor on %s does not report %s in %q:\n%s", node, cause, check, out)
}

func mustRun(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func nsOf(t *testing.T, l *Lab, node string) string {
	t.Helper()
	n, err := l.node(node)
	if err != nil {
		t.Fatal(err)
	}
	return n.Namespace
}

// fault is one injected fault: break, repair, and the cause node1 must report for node2.
type fault struct {
	name        string
	cause       string
	doctorCheck string
	inject, fix func(t *testing.T)
}

func TestObserveFaults(t *testing.T) {
	l := upReal(t, 3, 1)
	for _, to := range []string{"node2", "node3"} {
		waitHealth(t, l, "node1", to, api.HealthOK)
	}
	ns2 := nsOf(t, l, "node2")
	ns1 := nsOf(t, l, "node1")
	n2, _ := l.node("node2")

	var stopDeleting func()
	faults := []fault{
		{name: "vxlan-blocked", cause: api.HealthVXLANBlocked, doctorCheck: "peer node2",
			inject: func(t *testing.T) {
				mustRun(t, "ip", "netns", "exec", ns2, "nft",
					"add table inet wefttest; add chain inet wefttest in { type filter hook input priority 0; }; add rule inet wefttest in udp dport 6784 drop")
			},
			fix: func(t *testing.T) { mustRun(t, "ip", "netns", "exec", ns2, "nft", "delete table inet wefttest") }},
		{name: "mtu-blackhole", cause: api.HealthMTUBlackhole, doctorCheck: "peer node2",
			inject: func(t *testing.T) { mustRun(t, "ip", "-n", ns2, "link", "set", "eth0", "mtu", "1400") },
			fix:    func(t *testing.T) { mustRun(t, "ip", "-n", ns2, "link", "set", "eth0", "mtu", "1500") }},
		{name: "underlay-broken", cause: api.HealthUnderlayBroken, doctorCheck: "peer node2",
			inject: func(t *testing.T) {
				mustRun(t, "ip", "netns", "exec", ns2, "nft",
					"add table inet wefttest; add chain inet wefttest in { type filter hook input priority 0; }; add rule inet wefttest in ip daddr "+n2.Underlay.String()+" udp dport 6785 drop")
			},
			fix: func(t *testing.T) { mustRun(t, "ip", "netns", "exec", ns2, "nft", "delete table inet wefttest") }},
		{name: "missing-kernel-entry", cause: api.HealthMissingKernel, doctorCheck: "peer node2",
			// The reconciler puts a deleted route back within one resync (5s), so something
			// keeps deleting it, as a misbehaving script would; the repair is to stop.
			inject: func(t *testing.T) {
				st, err := api.NewClient(n2.Socket, 2*time.Second).Status(context.Background())
				if err != nil || len(st.Blocks) == 0 {
					t.Fatalf("node2's blocks: %v", err)
				}
				block := st.Blocks[0].Block.String()
				ctx, cancel := context.WithCancel(context.Background())
				var wg sync.WaitGroup
				wg.Go(func() {
					for ctx.Err() == nil {
						_ = exec.Command("ip", "-n", ns1, "route", "del", block).Run()
						time.Sleep(100 * time.Millisecond)
					}
				})
				stopDeleting = func() { cancel(); wg.Wait() }
				t.Cleanup(stopDeleting)
			},
			fix: func(t *testing.T) { stopDeleting() }},
		{name: "peer-down", cause: api.HealthPeerDown, doctorCheck: "peer node2",
			inject: func(t *testing.T) {
				if err := l.StopAgent("node2", syscall.SIGTERM); err != nil {
					t.Fatal(err)
				}
			},
			fix: func(t *testing.T) {
				if err := l.StartAgent(context.Background(), "node2"); err != nil {
					t.Fatal(err)
				}
			}},
	}
	for _, f := range faults {
		t.Run(f.name, func(t *testing.T) {
			before, _ := api.NewClient(mustNode(t, l, "node1").Socket, 2*time.Second).Status(context.Background())
			f.inject(t)
			detect := waitHealth(t, l, "node1", "node2", f.cause)
			wantDoctor(t, l, "node1", f.doctorCheck, f.cause)
			if f.cause == api.HealthMissingKernel {
				// The reconciler puts the route back on its next run (every 5 s) and
				// counts it as drift: wait for that, two resync periods at most.
				var after api.Status
				var err error
				for deadline := time.Now().Add(12 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
					after, err = api.NewClient(mustNode(t, l, "node1").Socket, 2*time.Second).Status(context.Background())
					if err == nil && after.Drift > before.Drift {
						break
					}
				}
				if err != nil || after.Drift <= before.Drift {
					t.Errorf("drift corrections did not grow within 12s: before %d, after %d (%v)", before.Drift, after.Drift, err)
				}
				out, _ := weftIn(t, l, "node1", "status", "routes")
				t.Logf("weft status routes on node1:\n%s", out)
			}
			fixAt := time.Now()
			f.fix(t)
			fixTook := time.Since(fixAt)
			clear := waitHealth(t, l, "node1", "node2", api.HealthOK)
			t.Logf("TIMING fault %s: detected in %s, cleared %s after the repair (the repair itself took %s)",
				f.name, detect.Round(time.Millisecond), clear.Round(time.Millisecond), fixTook.Round(time.Millisecond))
			if _, err := weftIn(t, l, "node1", "doctor"); err != nil {
				// The other direction may take a moment longer; give doctor the same bound.
				ok, note := poll(faultBound, func() (bool, string) {
					out, err := weftIn(t, l, "node1", "doctor")
					return err == nil, string(out)
				})
				if !ok {
					t.Fatalf("weft doctor on node1 still finds problems after the repair:\n%s", note)
				}
			}
		})
	}
}

func mustNode(t *testing.T, l *Lab, name string) Node {
	t.Helper()
	n, err := l.node(name)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// nodeDialer dials addr from inside node's namespace: the socket stays in the namespace it
// was created in, so the test talks to the agent's HTTP port over the node's loopback.
func nodeDialer(l *Lab, node string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, _ string) (net.Conn, error) {
		var c net.Conn
		err := inNodeNS(l, node, func() error {
			var err error
			c, err = (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, network, agentHTTP)
			return err
		})
		return c, err
	}
}

func TestObserveMetrics(t *testing.T) {
	l := upReal(t, 3, 1)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: nodeDialer(l, "node1")}}
	var fams map[string]*dtoFamily
	ok, note := poll(faultBound, func() (bool, string) {
		resp, err := client.Get("http://weft/metrics")
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		p := expfmt.NewTextParser(model.UTF8Validation)
		mf, err := p.TextToMetricFamilies(resp.Body)
		if err != nil {
			t.Fatalf("parsing /metrics: %v", err)
		}
		fams = map[string]*dtoFamily{}
		for k, v := range mf {
			fams[k] = &dtoFamily{v}
		}
		ok := fams["weft_peer_rtt_seconds"] != nil && len(fams["weft_peer_rtt_seconds"].Metric) == 4
		return ok, fmt.Sprintf("%d families", len(mf))
	})
	if !ok {
		t.Fatalf("no RTT for both peers and paths within %s: %s", faultBound, note)
	}
	for name, want := range map[string]func(*dtoFamily) error{
		"weft_peers":                             labelValue("state", "alive", 2),
		"weft_peers_health":                      labelValue("health", "ok", 2),
		"weft_ipam_addresses_used":               atLeast(1),
		"weft_ipam_addresses_capacity":           atLeast(1),
		"weft_ipam_blocks_owned":                 atLeast(1),
		"weft_reconcile_runs_total":              atLeast(1),
		"weft_reconcile_drift_corrections_total": atLeast(0),
		"weft_gossip_messages_total":             atLeast(1),
		"weft_gossip_bytes_total":                atLeast(1),
		"weft_cni_operation_duration_seconds":    histogram("ADD", "ok"),
		"weft_peer_rtt_seconds":                  atLeast(0),
	} {
		f := fams[name]
		if f == nil {
			t.Errorf("metric %s missing", name)
			continue
		}
		if err := want(f); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	for name := range fams {
		if !strings.HasPrefix(name, "weft_") && !strings.HasPrefix(name, "go_") && !strings.HasPrefix(name, "process_") && !strings.HasPrefix(name, "promhttp_") {
			t.Errorf("metric %s is not prefixed weft_", name)
		}
	}
	t.Logf("scraped %d metric families", len(fams))
}

func TestObserveStatusPageInChromium(t *testing.T) {
	chromium := chromiumPath(t)
	l := upReal(t, 3, 1)
	for _, to := range []string{"node2", "node3"} {
		waitHealth(t, l, "node1", to, api.HealthOK)
	}
	addr := forward(t, nodeDialer(l, "node1"))
	page := newBrowser(t, chromium, "http://"+addr+"/")

	// Every node and every link shows, all healthy.
	page.waitJS(t, `document.querySelectorAll('g.node[data-up="true"]').length === 3 &&
		document.querySelectorAll('g.link[data-health="ok"]').length === 3`, faultBound)

	// Break the overlay into node2: its two links turn vxlan-blocked on the page.
	ns2 := nsOf(t, l, "node2")
	mustRun(t, "ip", "netns", "exec", ns2, "nft",
		"add table inet wefttest; add chain inet wefttest in { type filter hook input priority 0; }; add rule inet wefttest in udp dport 6784 drop")
	start := time.Now()
	page.waitJS(t, `document.querySelectorAll('g.link[data-health="vxlan-blocked"]').length === 2 &&
		document.querySelector('g.link[data-a="node1"][data-b="node3"]').dataset.health === "ok"`, 2*faultBound)
	t.Logf("TIMING page shows the broken links %s after the fault", time.Since(start).Round(time.Millisecond))
	page.screenshot(t, "statuspage-vxlan-blocked.png")
	mustRun(t, "ip", "netns", "exec", ns2, "nft", "delete table inet wefttest")
	page.waitJS(t, `document.querySelectorAll('g.link[data-health="ok"]').length === 3`, 2*faultBound)
}

// forward listens on 127.0.0.1 in this namespace and relays every connection through dial.
func forward(t *testing.T, dial func(ctx context.Context, network, addr string) (net.Conn, error)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := dial(context.Background(), "tcp", "")
				if err != nil {
					return
				}
				defer up.Close()
				go func() { _, _ = io.Copy(up, c); up.Close() }()
				_, _ = io.Copy(c, up)
			}()
		}
	}()
	return ln.Addr().String()
}
