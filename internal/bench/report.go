package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"time"
)

// Figure is one reported number.
type Figure struct {
	Item  string `json:"item"`  // "1 datapath", "2 cni", ...
	Name  string `json:"name"`  // what was measured
	Unit  string `json:"unit"`  // "Gbit/s", "ms", "x", ...
	Value Sample `json:"value"` // median and spread over rounds
	// Goal is the target in words ("≥ 0.97"); empty if the figure has none.
	Goal string `json:"goal,omitempty"`
	// Pass is set when Goal is: whether the median met it.
	Pass *bool  `json:"pass,omitempty"`
	Note string `json:"note,omitempty"`
}

// Machine describes where a run happened.
type Machine struct {
	NProc    int    `json:"nproc"`
	CPU      string `json:"cpu"`
	Kernel   string `json:"kernel"`
	Go       string `json:"go"`
	Load1    string `json:"loadavgAtStart"`
	Shared   bool   `json:"shared"`
	SharedBy string `json:"sharedNote,omitempty"`
}

// Report is everything one run measured.
type Report struct {
	Started time.Time `json:"started"`
	Elapsed string    `json:"elapsed"`
	Quick   bool      `json:"quick"`
	Weft    string    `json:"weftVersion"` // `weft version` of the binary the lab ran
	Machine Machine   `json:"machine"`
	Figures []Figure  `json:"figures"`
	Errors  []string  `json:"errors,omitempty"`
	mu      sync.Mutex
}

func (r *Report) add(f Figure) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Figures = append(r.Figures, f)
}

func (r *Report) fail(item string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Errors = append(r.Errors, item+": "+err.Error())
}

// goalMin records f with a goal "value ≥ want".
func goalMin(f Figure, want float64) Figure {
	ok := f.Value.Median >= want
	f.Goal, f.Pass = fmt.Sprintf("≥ %g", want), &ok
	return f
}

// goalMax records f with a goal "value ≤ want".
func goalMax(f Figure, want float64) Figure {
	ok := f.Value.Median <= want
	f.Goal, f.Pass = fmt.Sprintf("≤ %g", want), &ok
	return f
}

// DescribeMachine reads nproc, CPU model, kernel and load.
func DescribeMachine(shared string) Machine {
	m := Machine{NProc: runtime.NumCPU(), Go: runtime.Version(), Shared: shared != "", SharedBy: shared}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if out, err := exec.Command("uname", "-r").Output(); err == nil {
		m.Kernel = strings.TrimSpace(string(out))
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		m.Load1 = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	return m
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(path string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// WriteTable prints the figures as a table (Markdown-compatible).
func (r *Report) WriteTable(w io.Writer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.Machine
	fmt.Fprintf(w, "machine: %d CPUs, %s, kernel %s, %s, load at start %s", m.NProc, m.CPU, m.Kernel, m.Go, m.Load1)
	if m.Shared {
		fmt.Fprintf(w, " — SHARED: %s", m.SharedBy)
	}
	fmt.Fprintf(w, "\nrun: %s, %s%s, weft %s\n\n", r.Started.Format(time.RFC3339), r.Elapsed, map[bool]string{true: " (quick)"}[r.Quick], r.Weft)
	fmt.Fprintln(w, "| item | figure | median | spread (min–max) | n | goal | result | note |")
	fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- | --- | --- |")
	for _, f := range r.Figures {
		res := ""
		if f.Pass != nil {
			res = map[bool]string{true: "pass", false: "**MISS**"}[*f.Pass]
		}
		fmt.Fprintf(w, "| %s | %s | %s %s | %s–%s | %d | %s | %s | %s |\n", f.Item, f.Name,
			num(f.Value.Median), f.Unit, num(f.Value.Min), num(f.Value.Max), f.Value.N, f.Goal, res, f.Note)
	}
	for _, e := range r.Errors {
		fmt.Fprintf(w, "error: %s\n", e)
	}
}

func num(v float64) string {
	switch {
	case math.IsNaN(v):
		return "n/a"
	case math.Abs(v) >= 100:
		return fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}
