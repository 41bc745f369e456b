// Command weft-bench runs weft's benchmarks (internal/bench) in lab clusters on this
// machine, prints a table and writes the results as JSON. It needs root.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/weftnet/weft/internal/bench"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "weft-bench:", err)
		os.Exit(1)
	}
}

func run() error {
	// The harness re-runs this binary inside a namespace to simulate gossip members.
	if len(os.Args) == 7 && os.Args[1] == bench.SimFlag && os.Args[3] == "-sim-key" && os.Args[5] == "-sim-time-scale" {
		n, err := strconv.Atoi(os.Args[2])
		if err != nil {
			return err
		}
		scale, err := strconv.ParseFloat(os.Args[6], 64)
		if err != nil {
			return err
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return bench.SimMembers(ctx, n, os.Args[4], scale, os.Stdout)
	}
	var (
		quick            = flag.Bool("quick", false, "fewer rounds and smaller labs (a few minutes)")
		items            = flag.String("items", "", "comma-separated items to run: 1 datapath, 2 cni, 3 convergence, 4 control plane, 5 kernel state, 6 go bench (default all)")
		weftBin          = flag.String("weft", "bin/weft", "the weft binary the lab agents run")
		cniDir           = flag.String("cni-bin-dir", "", "directory holding weft-cni (default: the weft binary's)")
		goBench          = flag.String("gobench", "", "output of `go test -bench` to include as item 6")
		out              = flag.String("o", "bench-results.json", "where to write the JSON results")
		shared           = flag.String("shared", "", "note that the machine was shared while measuring, and how")
		simSizes         = flag.String("sim-sizes", "", "member counts of the simulated control-plane benchmark, e.g. 100,300 (default 100,1000; below 1000 the largest two are projected to 1000); with -items 4, only the simulation runs")
		labSizes         = flag.String("lab-sizes", "", "node counts of the labs of items 3-5, e.g. 100 (default 10,50,100; 10 with -quick)")
		cleanupLeftovers = flag.Bool("cleanup", false, "only remove namespaces left by a killed run, then exit")
	)
	flag.Parse()
	if *cleanupLeftovers {
		return bench.RemoveLeftovers(context.Background(), os.Stderr)
	}
	if left := bench.Leftovers(); len(left) > 0 {
		return fmt.Errorf("namespaces of an interrupted run are left (%s): remove them with `weft-bench -cleanup` (after making sure no other run is going on)", strings.Join(left, ", "))
	}
	o := bench.Options{Quick: *quick, CNIBinDir: *cniDir, GoBench: *goBench, Shared: *shared, Out: os.Stderr}
	var err error
	if o.WeftBin, err = filepath.Abs(*weftBin); err != nil {
		return err
	}
	if o.Items, err = intList("-items", *items, 1, 6, "an item number 1..6"); err != nil {
		return err
	}
	if o.SimSizes, err = intList("-sim-sizes", *simSizes, 2, 4000, "a member count between 2 and 4000"); err != nil {
		return err
	}
	if o.LabSizes, err = intList("-lab-sizes", *labSizes, 2, 250, "a node count between 2 and 250"); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	r, err := bench.Run(ctx, o)
	if err != nil {
		return err
	}
	r.WriteTable(os.Stdout)
	if err := r.WriteJSON(*out); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "results written to %s\n", *out)
	if errors.Is(ctx.Err(), context.Canceled) {
		return errors.New("interrupted: the results are partial")
	}
	if len(r.Errors) > 0 {
		return fmt.Errorf("%d item(s) failed (see above)", len(r.Errors))
	}
	return nil
}

// intList parses a comma-separated list of integers in [lo, hi] given to flag name.
func intList(name, list string, lo, hi int, what string) ([]int, error) {
	var out []int
	for _, s := range strings.Split(list, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < lo || n > hi {
			return nil, fmt.Errorf("%s: %q is not %s", name, s, what)
		}
		out = append(out, n)
	}
	return out, nil
}
