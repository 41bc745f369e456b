package bench

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSummarize(t *testing.T) {
	s := summarize([]float64{5, 1, 3, 2, 4})
	if s.N != 5 || s.Median != 3 || s.Min != 1 || s.Max != 5 || math.Abs(s.P99-4.96) > 1e-9 {
		t.Fatalf("summarize: %+v", s)
	}
	if s := summarize(nil); !math.IsNaN(s.Median) {
		t.Fatalf("summarize(nil): %+v", s)
	}
	if r := ratios([]float64{2, 3, 4}, []float64{1, 0}); len(r) != 1 || r[0] != 2 {
		t.Fatalf("ratios: %v", r)
	}
}

func TestGoals(t *testing.T) {
	f := goalMin(Figure{Value: one(0.98)}, 0.97)
	if f.Pass == nil || !*f.Pass || f.Goal != "≥ 0.97" {
		t.Fatalf("goalMin: %+v", f)
	}
	f = goalMax(Figure{Value: one(41)}, 40)
	if f.Pass == nil || *f.Pass {
		t.Fatalf("goalMax: %+v", f)
	}
}

func TestGoBenchParse(t *testing.T) {
	out := `goos: linux
pkg: github.com/weftnet/weft/internal/ipam
BenchmarkAllocateRelease-2   	     200	   7674446 ns/op	    1234 B/op	      12 allocs/op
BenchmarkAllocateRelease-2   	     200	   7000000 ns/op	    1234 B/op	      12 allocs/op
pkg: github.com/weftnet/weft/internal/cluster
BenchmarkMergeState1000Known-2   	     100	   3433069 ns/op	  45.20 MB/s	  421677 B/op	    8018 allocs/op
PASS
`
	p := filepath.Join(t.TempDir(), "gobench.txt")
	if err := os.WriteFile(p, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	r := &Report{}
	if err := goBench(t.Context(), Options{GoBench: p}, r); err != nil {
		t.Fatal(err)
	}
	if len(r.Figures) != 2 {
		t.Fatalf("figures: %+v", r.Figures)
	}
	f := r.Figures[0]
	if f.Name != "ipam.AllocateRelease" || f.Value.N != 2 || f.Value.Min != 7000 || !strings.Contains(f.Note, "allocs/op") {
		t.Fatalf("first figure: %+v", f)
	}
	var b strings.Builder
	r.WriteTable(&b)
	if !strings.Contains(b.String(), "| 6 go bench | cluster.MergeState1000Known | 3433 µs/op |") {
		t.Fatalf("table:\n%s", b.String())
	}
}
