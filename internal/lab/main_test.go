package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/testutil"
)

// realBins are the weft and weft-cni binaries TestMain builds for the end-to-end tests.
var realBins struct {
	dir, weft string
	err       error
}

func TestMain(m *testing.M) {
	if code, ok := fakeDispatch(); ok {
		os.Exit(code)
	}
	code := func() int {
		if os.Geteuid() == 0 {
			dir, cleanup, err := testutil.Binaries("weft-lab-bins-")
			defer cleanup()
			realBins.dir, realBins.weft, realBins.err = dir, filepath.Join(dir, "weft"), err
		}
		return m.Run()
	}()
	os.Exit(code)
}

// requireBins fails (not skips) the test when the real binaries did not build: the
// end-to-end tests are the point of the lab.
func requireBins(t *testing.T) (weft, dir string) {
	t.Helper()
	if realBins.err != nil {
		t.Fatalf("building the real binaries failed: %v", realBins.err)
	}
	return realBins.weft, realBins.dir
}

// newLab returns a unique lab name and a state dir; the lab is torn down when the test
// ends, pass or fail, and the test then fails if anything of it is left.
func newLab(t *testing.T) (name, dir string) {
	t.Helper()
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	name = "wlt-" + hex.EncodeToString(b)
	dir = t.TempDir()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := Teardown(ctx, name, dir, testOut(t)); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		assertGone(t, name, dir)
	})
	return name, dir
}

// assertGone checks that nothing of lab name is left: no namespace in `ip netns list`,
// no process with dir on its command line, no dir.
func assertGone(t *testing.T, name, dir string) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Errorf("ip netns list: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, name+"-") {
			t.Errorf("namespace left behind: %s", line)
		}
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() || !running(pid) {
			continue
		}
		if c := strings.Join(cmdline(pid), " "); strings.Contains(c, dir+"/") {
			t.Errorf("process left behind: pid %d: %s", pid, c)
		}
	}
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("lab dir %s left behind", dir)
	}
}

// testOut is an io.Writer to t.Log, line by line.
func testOut(t *testing.T) *logWriter { return &logWriter{t: t} }

type logWriter struct {
	mu  sync.Mutex
	t   *testing.T
	buf bytes.Buffer
}

func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	for {
		line, err := w.buf.ReadString('\n')
		if err != nil {
			w.buf.WriteString(line)
			break
		}
		w.t.Log(strings.TrimSuffix(line, "\n"))
	}
	return len(p), nil
}

// poll calls f every 200ms until it returns true or d passes; it returns f's last note.
func poll(d time.Duration, f func() (bool, string)) (bool, string) {
	deadline := time.Now().Add(d)
	for {
		ok, note := f()
		if ok || time.Now().After(deadline) {
			return ok, note
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func execCommand(name string, args ...string) *exec.Cmd { return exec.Command(name, args...) }
