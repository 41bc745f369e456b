package lab

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	dto "github.com/prometheus/client_model/go"
)

// dtoFamily wraps a parsed metric family for the checks below.
type dtoFamily struct{ *dto.MetricFamily }

func value(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Untyped != nil:
		return m.Untyped.GetValue()
	}
	return 0
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.Label {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// atLeast: every sample of the family is >= min.
func atLeast(min float64) func(*dtoFamily) error {
	return func(f *dtoFamily) error {
		for _, m := range f.Metric {
			if v := value(m); v < min {
				return fmt.Errorf("sample %v = %v, want >= %v", m.Label, v, min)
			}
		}
		return nil
	}
}

// labelValue: the sample with label name=val has value want.
func labelValue(name, val string, want float64) func(*dtoFamily) error {
	return func(f *dtoFamily) error {
		for _, m := range f.Metric {
			if label(m, name) == val {
				if v := value(m); v != want {
					return fmt.Errorf("%s=%q is %v, want %v", name, val, v, want)
				}
				return nil
			}
		}
		return fmt.Errorf("no sample with %s=%q", name, val)
	}
}

// histogram: the histogram has observations for verb and result.
func histogram(verb, result string) func(*dtoFamily) error {
	return func(f *dtoFamily) error {
		for _, m := range f.Metric {
			if label(m, "verb") == verb && label(m, "result") == result && m.Histogram != nil {
				if m.Histogram.GetSampleCount() == 0 {
					return fmt.Errorf("%s/%s has no observations", verb, result)
				}
				return nil
			}
		}
		return fmt.Errorf("no %s/%s histogram", verb, result)
	}
}

// chromiumPath finds Chromium, or skips: CI installs it (apt-get install chromium).
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("Chromium not installed: apt-get install chromium (the status page test needs a headless browser)")
	return ""
}

type browser struct{ ctx context.Context }

// newBrowser starts headless Chromium on url.
func newBrowser(t *testing.T, chromium, url string) *browser {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromium),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.NoFirstRun,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1200, 700),
	}
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelA() })
	// The first Run starts the browser and ties its life to its context: use ctx itself.
	if _, err := chromedp.Run(ctx, chromedp.Navigate(url)); err != nil {
		t.Fatalf("loading %s in Chromium: %v", url, err)
	}
	return &browser{ctx: ctx}
}

// waitJS polls a JavaScript condition until it is true or d passes.
func (b *browser) waitJS(t *testing.T, cond string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	var dump string
	for {
		ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`(function(){ try { return !!(`+cond+`); } catch (e) { return false; } })()`))
		cancel()
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
			dump, _ = chromedp.Run(ctx, chromedp.Evaluate[string](`location.href + " loaded=" + document.body.dataset.loaded + " error=" + document.getElementById("error").textContent + "\n" + Array.from(document.querySelectorAll('g.node, g.link')).map(g => g.outerHTML.slice(0, 160)).join('\n')`))
			cancel()
			t.Fatalf("page condition not met within %s: %s (err %v)\n%s", d, cond, err, dump)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// screenshot saves a PNG of the page in the test's temp dir (and in $WEFT_ARTIFACTS if
// set, for CI to keep) and checks it is a real, non-trivial image.
func (b *browser) screenshot(t *testing.T, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	buf, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	img, err := png.Decode(bytes.NewReader(buf))
	if err != nil {
		t.Fatalf("screenshot is not a PNG: %v", err)
	}
	if r := img.Bounds(); r.Dx() < 600 || r.Dy() < 400 || len(buf) < 10_000 {
		t.Fatalf("screenshot looks empty: %dx%d, %d bytes", r.Dx(), r.Dy(), len(buf))
	}
	dirs := []string{t.TempDir()}
	if d := os.Getenv("WEFT_ARTIFACTS"); d != "" {
		dirs = append(dirs, d)
	}
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if err := os.WriteFile(p, buf, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot %s (%d bytes)", p, len(buf))
	}
}
