package main

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// TestImageTarball writes an image the way `make image` does and reads it back: the tag,
// the entrypoint and the files of its one layer.
func TestImageTarball(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"weft", "weft-cni"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("#binary "+f), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(dir, "img.tar")
	err := run([]string{"-o", out, "-tag", "docker.io/library/weft:dev",
		filepath.Join(dir, "weft") + ":/usr/local/bin/weft", filepath.Join(dir, "weft-cni") + ":/usr/local/bin/weft-cni"})
	if err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag("docker.io/library/weft:dev")
	img, err := tarball.ImageFromPath(out, &tag)
	if err != nil {
		t.Fatalf("reading the tarball back: %v", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cf.Config.Entrypoint, []string{"/usr/local/bin/weft"}) || cf.OS != "linux" {
		t.Errorf("entrypoint %v os %s", cf.Config.Entrypoint, cf.OS)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %d, %v; want 1", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var names []string
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if h.Typeflag == tar.TypeReg && h.Mode&0o111 == 0 {
			t.Errorf("%s is not executable", h.Name)
		}
	}
	want := []string{"usr/", "usr/local/", "usr/local/bin/", "usr/local/bin/weft", "usr/local/bin/weft-cni"}
	if !slices.Equal(names, want) {
		t.Errorf("layer holds %q, want %q", names, want)
	}
}

func TestBadArgs(t *testing.T) {
	if err := run([]string{"-o", filepath.Join(t.TempDir(), "x.tar"), "bin/weft"}); err == nil {
		t.Error("a file without :DEST was accepted")
	}
}
