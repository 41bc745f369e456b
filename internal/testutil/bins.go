package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// Binaries provides bin/weft and bin/weft-cni for tests that run the real programs: the
// directory in WEFT_BIN_DIR when set (`make soak` passes the ones it has just built),
// otherwise fresh builds in a temporary directory, which cleanup removes.
func Binaries(prefix string) (dir string, cleanup func(), err error) {
	if d := os.Getenv("WEFT_BIN_DIR"); d != "" {
		return d, func() {}, nil
	}
	dir, err = os.MkdirTemp("", prefix)
	if err != nil {
		return "", func() {}, err
	}
	cleanup = func() { os.RemoveAll(dir) }
	for _, b := range []string{"weft", "weft-cni"} {
		out, err := exec.Command("go", "build", "-o", filepath.Join(dir, b), "github.com/weftnet/weft/cmd/"+b).CombinedOutput()
		if err != nil {
			return dir, cleanup, fmt.Errorf("go build ./cmd/%s: %w\n%s", b, err, out)
		}
	}
	return dir, cleanup, nil
}
