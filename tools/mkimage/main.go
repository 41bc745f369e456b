// Command mkimage builds weft's container image as a tarball without Docker or a registry:
// an empty base and one layer holding the given files (static binaries), written with
// go-containerregistry in the docker/OCI tarball format that `ctr images import`,
// `docker load` and `podman load` accept. The image has no shell and no libc: weft and
// weft-cni are CGO_ENABLED=0 builds.
//
//	go run ./tools/mkimage -o bin/weft-image.tar -tag docker.io/library/weft:dev \
//	    bin/weft:/usr/local/bin/weft bin/weft-cni:/usr/local/bin/weft-cni
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("mkimage", flag.ContinueOnError)
	out := fs.String("o", "bin/weft-image.tar", "output tarball")
	tag := fs.String("tag", "docker.io/library/weft:dev", "image reference recorded in the tarball")
	entry := fs.String("entrypoint", "/usr/local/bin/weft", "the image's entrypoint")
	arch := fs.String("arch", runtime.GOARCH, "the binaries' architecture (GOARCH)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return errors.New("no files: pass SRC:DEST pairs, e.g. bin/weft:/usr/local/bin/weft")
	}
	files := map[string]string{} // dest -> src
	for _, a := range fs.Args() {
		src, dest, ok := strings.Cut(a, ":")
		if !ok || src == "" || !path.IsAbs(dest) {
			return fmt.Errorf("%q: want SRC:DEST with an absolute DEST, e.g. bin/weft:/usr/local/bin/weft", a)
		}
		files[dest] = src
	}
	ref, err := name.NewTag(*tag)
	if err != nil {
		return fmt.Errorf("-tag %q: %w", *tag, err)
	}
	img, err := Build(files, *entry, *arch)
	if err != nil {
		return err
	}
	tmp := *out + ".tmp"
	if err := tarball.WriteToFile(tmp, ref, img); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", *out, err)
	}
	if err := os.Rename(tmp, *out); err != nil {
		return fmt.Errorf("writing %s: %w", *out, err)
	}
	d, _ := img.Digest()
	fmt.Fprintf(os.Stderr, "mkimage: wrote %s (%s, %s)\n", *out, ref, d)
	return nil
}

// Build makes a linux/arch image: an empty base, one layer with every file of files
// (destination path -> source file, mode 0755) and the directories above them, and the
// given entrypoint. Timestamps are zero, so the same binaries give the same image digest.
func Build(files map[string]string, entrypoint, arch string) (v1.Image, error) {
	layer, err := layerOf(files)
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, fmt.Errorf("adding the layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cf.Config.Entrypoint = []string{entrypoint}
	cf.Config.Env = []string{"PATH=/usr/local/bin"}
	cf.Config.Labels = map[string]string{"org.opencontainers.image.source": "https://github.com/weftnet/weft"}
	return mutate.ConfigFile(img, cf)
}

func layerOf(files map[string]string) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dests := make([]string, 0, len(files))
	for d := range files {
		dests = append(dests, d)
	}
	slices.Sort(dests)
	dirs := map[string]bool{}
	for _, dest := range dests {
		rel := strings.TrimPrefix(path.Clean(dest), "/")
		// Parent directories first, each once.
		parts := strings.Split(rel, "/")
		for i := 1; i < len(parts); i++ {
			dir := strings.Join(parts[:i], "/") + "/"
			if dirs[dir] {
				continue
			}
			dirs[dir] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: time.Unix(0, 0)}); err != nil {
				return nil, err
			}
		}
		data, err := os.ReadFile(files[dest])
		if err != nil {
			return nil, fmt.Errorf("reading %s (run `make build` first): %w", files[dest], err)
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: rel, Mode: 0o755, Size: int64(len(data)), ModTime: time.Unix(0, 0)}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
}
