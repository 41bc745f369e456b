package e2e

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// TestImage is the image of the test's pods; its binary is /netcheck (e2e/cmd/netcheck).
const TestImage = "docker.io/weft-e2e/netcheck:dev"

// buildNetcheck builds e2e/cmd/netcheck as a static binary into dir.
func buildNetcheck(dir string) (string, error) {
	out := filepath.Join(dir, "netcheck")
	_, err := runShort("env", "CGO_ENABLED=0", "go", "build", "-trimpath", "-o", out, "github.com/weftnet/weft/e2e/cmd/netcheck")
	return out, err
}

// writeTestImages writes one tarball holding two images made of the netcheck binary:
// the pod sandbox ("pause", entrypoint `netcheck pause`) and TestImage.
func writeTestImages(binary, out string) error {
	data, err := os.ReadFile(binary)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "netcheck", Mode: 0o755,
		Size: int64(len(data)), ModTime: time.Unix(0, 0)}); err != nil {
		return err
	}
	tw.Write(data)
	if err := tw.Close(); err != nil {
		return err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(buf.Bytes())), nil
	})
	if err != nil {
		return err
	}
	image := func(entrypoint ...string) (v1.Image, error) {
		img, err := mutate.AppendLayers(empty.Image, layer)
		if err != nil {
			return nil, err
		}
		cf, err := img.ConfigFile()
		if err != nil {
			return nil, err
		}
		cf = cf.DeepCopy()
		cf.OS, cf.Architecture = "linux", runtime.GOARCH
		cf.Config.Entrypoint = entrypoint
		return mutate.ConfigFile(img, cf)
	}
	pause, err := image("/netcheck", "pause")
	if err != nil {
		return err
	}
	netcheck, err := image("/netcheck")
	if err != nil {
		return err
	}
	refs := map[name.Reference]v1.Image{}
	for ref, img := range map[string]v1.Image{sandboxImage: pause, TestImage: netcheck} {
		tag, err := name.NewTag(ref)
		if err != nil {
			return err
		}
		refs[tag] = img
	}
	if err := tarball.MultiRefWriteToFile(out, refs); err != nil {
		return fmt.Errorf("writing %s: %w", out, err)
	}
	return nil
}
