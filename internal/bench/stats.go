package bench

import (
	"math"
	"slices"
	"time"
)

// Sample summarises repeated measurements of one quantity.
type Sample struct {
	N      int     `json:"n"`
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	P99    float64 `json:"p99,omitempty"`
}

// summarize returns the median, extremes and p99 of xs (nearest rank).
func summarize(xs []float64) Sample {
	if len(xs) == 0 {
		return Sample{Median: math.NaN(), Min: math.NaN(), Max: math.NaN()}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return Sample{N: len(s), Median: quantile(s, 0.5), Min: s[0], Max: s[len(s)-1], P99: quantile(s, 0.99)}
}

// quantile of sorted xs, nearest-rank with linear interpolation between ranks.
func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	pos := q * float64(len(sorted)-1)
	lo := int(math.Floor(pos))
	hi := int(math.Ceil(pos))
	f := pos - float64(lo)
	return sorted[lo]*(1-f) + sorted[hi]*f
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func durationsMS(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = ms(d)
	}
	return out
}

// ratios returns a[i]/b[i] for paired rounds.
func ratios(a, b []float64) []float64 {
	n := min(len(a), len(b))
	out := make([]float64, 0, n)
	for i := range n {
		if b[i] != 0 {
			out = append(out, a[i]/b[i])
		}
	}
	return out
}
