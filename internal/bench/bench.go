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
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/weftnet/weft/internal/lab"
)

// Options configure Run.
type Options struct {
	// Quick runs fewer rounds, shorter, and smaller labs: a few minutes in all.
	Quick bool
	// Items selects what to run (1 datapath, 2 CNI, 3 convergence, 4 control plane,
	// 5 kernel state, 6 Go benchmarks); empty means all.
	Items []int
	// WeftBin is the weft binary for lab agents; CNIBinDir holds weft-cni (default: the
	// directory of WeftBin).
	WeftBin, CNIBinDir string
	// GoBench is the output of `go test -bench` to include as item 6 ("" skips it).
	GoBench string
	// SimSizes overrides the member counts of the simulated control-plane benchmark
	// (default 100 and 300; the last one is projected to 1,000 if below it).
	SimSizes []int
	// LabSizes overrides the node counts of the labs of items 3, 4 and 5 (default 10, 50
	// and 100; 10 in quick mode).
	LabSizes []int
	// Shared, if not empty, notes that the machine was shared while measuring.
	Shared string
	// Out receives progress lines.
	Out io.Writer
}

func (o Options) want(item int) bool { return len(o.Items) == 0 || slices.Contains(o.Items, item) }

// Run measures what o selects and returns the report. Failures of single items are
// recorded in Report.Errors; the error return is for a run that could not start.
func Run(ctx context.Context, o Options) (*Report, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the benchmarks need root: they create network namespaces")
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	r := &Report{Started: time.Now().UTC().Truncate(time.Second), Quick: o.Quick, Machine: DescribeMachine(o.Shared)}
	if out, err := exec.Command(o.WeftBin, "version").Output(); err == nil {
		r.Weft = strings.TrimSpace(string(out))
	}
	items := []struct {
		n    int
		name string
		f    func(context.Context, Options, *Report) error
	}{
		{6, "6 go bench", goBench},
		{1, "1 datapath", datapath},
		{2, "2 cni", cniLatency},
		{0, "3-5 lab scale: convergence, control plane, kernel state", labScale},
		{4, "4 control plane: simulated members", simControlPlane},
	}
	for _, it := range items {
		if it.n == 0 && !o.want(3) && !(o.want(4) && len(o.SimSizes) == 0) && !o.want(5) || it.n != 0 && !o.want(it.n) {
			continue
		}
		if ctx.Err() != nil {
			r.fail(it.name, ctx.Err())
			break
		}
		// The kernel tears down a removed lab's namespaces in the background, which for
		// a thousand pods takes CPU for a while: let it finish before measuring more.
		waitQuiet(ctx, o)
		t := time.Now()
		progress(o, "== %s", it.name)
		if err := it.f(ctx, o, r); err != nil {
			r.fail(it.name, err)
			progress(o, "%s failed: %v", it.name, err)
		}
		progress(o, "== %s done in %s", it.name, time.Since(t).Round(time.Second))
	}
	r.Elapsed = time.Since(r.Started).Round(time.Second).String()
	return r, nil
}

// waitQuiet waits, at most a minute, until the machine's CPUs are at least 80 % idle over
// half a second (/proc/stat), and says how long that took.
func waitQuiet(ctx context.Context, o Options) {
	start := time.Now()
	for time.Since(start) < time.Minute && ctx.Err() == nil {
		idle0, total0 := cpuTimes()
		time.Sleep(500 * time.Millisecond)
		idle1, total1 := cpuTimes()
		if total1 > total0 && float64(idle1-idle0)/float64(total1-total0) >= 0.8 {
			break
		}
	}
	if d := time.Since(start); d > time.Second {
		progress(o, "waited %s for the CPUs to be idle", d.Round(100*time.Millisecond))
	}
}

// cpuTimes returns the machine's idle (idle + iowait) and total CPU time in clock ticks.
func cpuTimes() (idle, total uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	for i, f := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseUint(f, 10, 64)
		total += v
		if i == 3 || i == 4 {
			idle += v
		}
	}
	return idle, total
}

func progress(o Options, format string, args ...any) {
	fmt.Fprintf(o.Out, time.Now().Format("15:04:05 ")+format+"\n", args...)
}

// withLab runs f on a fresh lab of nodes x pods and removes the lab afterwards, also
// when f fails or ctx is cancelled.
func withLab(ctx context.Context, o Options, nodes, pods int, f func(*lab.Lab) error) error {
	return withLabArgs(ctx, o, nodes, pods, nil, f)
}

// withLabArgs is withLab with agentArgs appended to every agent's command line.
func withLabArgs(ctx context.Context, o Options, nodes, pods int, agentArgs []string, f func(*lab.Lab) error) (err error) {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	name := labPrefix + hex.EncodeToString(b)
	dir, err := os.MkdirTemp("", name+"-")
	if err != nil {
		return err
	}
	defer os.Remove(dir)
	t := time.Now()
	l, err := lab.Up(ctx, lab.Options{Name: name, Dir: dir, Nodes: nodes, PodsPerNode: pods,
		WeftBin: o.WeftBin, CNIBinDir: o.CNIBinDir, AgentArgs: agentArgs})
	if err != nil {
		return fmt.Errorf("lab of %d nodes x %d pods: %w", nodes, pods, err)
	}
	progress(o, "lab %s: %d nodes x %d pods up in %s", name, nodes, pods, time.Since(t).Round(time.Second))
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
		defer cancel()
		if derr := l.Down(dctx); derr != nil {
			err = errors.Join(err, fmt.Errorf("removing lab %s: %w", name, derr))
		}
	}()
	return f(l)
}
