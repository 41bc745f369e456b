package main

import (
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"

	"github.com/weftnet/weft/internal/manifest"
)

// TestManifestArgsParse: the DaemonSet's container args are flags the commands accept.
func TestManifestArgsParse(t *testing.T) {
	b, err := manifest.Render(manifest.Defaults())
	if err != nil {
		t.Fatal(err)
	}
	docs := strings.Split(string(b), "\n---\n")
	var ds appsv1.DaemonSet
	if err := yaml.Unmarshal([]byte(docs[len(docs)-1]), &ds); err != nil {
		t.Fatal(err)
	}
	spec := ds.Spec.Template.Spec
	for _, c := range append(spec.InitContainers, spec.Containers...) {
		cmd := map[string]func() interface{ ParseFlags([]string) error }{
			"agent":       func() interface{ ParseFlags([]string) error } { return agentCmd() },
			"install-cni": func() interface{ ParseFlags([]string) error } { return installCNICmd() },
		}[c.Args[0]]
		if cmd == nil {
			t.Fatalf("container %s runs unknown command %q", c.Name, c.Args[0])
		}
		if err := cmd().ParseFlags(c.Args[1:]); err != nil {
			t.Errorf("container %s: %v", c.Name, err)
		}
	}
}
