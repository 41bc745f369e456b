package bench

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
)

// benchLine matches a result line of `go test -bench -benchmem`.
var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(-\d+)?\s+\d+\s+([\d.]+) ns/op(.*)$`)

// goBench is item 6: it reads `go test -bench` output (repeated with -count for a
// spread) and reports each benchmark's time per operation.
func goBench(_ context.Context, o Options, r *Report) error {
	if o.GoBench == "" {
		return nil
	}
	f, err := os.Open(o.GoBench)
	if err != nil {
		return fmt.Errorf("reading the go test -bench output: %w", err)
	}
	defer f.Close()
	var order []string
	ns := map[string][]float64{}
	extra := map[string]string{}
	pkg := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = p[strings.LastIndex(p, "/")+1:]
		}
		m := benchLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		name := pkg + "." + strings.TrimPrefix(m[1], "Benchmark")
		v, _ := strconv.ParseFloat(m[3], 64)
		if _, ok := ns[name]; !ok {
			order = append(order, name)
		}
		ns[name] = append(ns[name], v/1e3)
		extra[name] = strings.Join(strings.Fields(m[4]), " ")
	}
	if len(order) == 0 {
		return fmt.Errorf("no benchmark results in %s", o.GoBench)
	}
	for _, name := range order {
		r.add(Figure{Item: "6 go bench", Name: name, Unit: "µs/op", Value: summarize(ns[name]), Note: extra[name]})
	}
	return sc.Err()
}
