package manifest

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite deploy/weft.yaml from the defaults")

const deployFile = "../../deploy/weft.yaml"

// TestDeployManifestUpToDate keeps deploy/weft.yaml equal to `weft manifest` with the
// default options.
func TestDeployManifestUpToDate(t *testing.T) {
	got, err := Render(Defaults())
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile(deployFile, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(deployFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("deploy/weft.yaml differs from `weft manifest`: run `go generate ./internal/manifest`")
	}
}

// TestManifestParses decodes every document strictly into its typed Kubernetes object, so
// a misspelt field fails here and not on a cluster.
func TestManifestParses(t *testing.T) {
	for _, o := range []Options{Defaults(), {ClusterCIDR: "10.40.0.0/16", BlockSize: 24, MTU: 1400, Image: "registry.example/weft:v1", LogLevel: "debug"}} {
		b, err := Render(o)
		if err != nil {
			t.Fatal(err)
		}
		kinds := map[string]int{}
		var ds *appsv1.DaemonSet
		for i, doc := range strings.Split(string(b), "\n---\n") {
			var meta struct{ Kind string }
			if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
				t.Fatalf("document %d: %v", i, err)
			}
			var obj any
			switch meta.Kind {
			case "ServiceAccount":
				obj = &corev1.ServiceAccount{}
			case "ClusterRole":
				obj = &rbacv1.ClusterRole{}
			case "ClusterRoleBinding":
				obj = &rbacv1.ClusterRoleBinding{}
			case "Role":
				obj = &rbacv1.Role{}
			case "RoleBinding":
				obj = &rbacv1.RoleBinding{}
			case "DaemonSet":
				ds = &appsv1.DaemonSet{}
				obj = ds
			default:
				t.Fatalf("document %d: unexpected kind %q", i, meta.Kind)
			}
			if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
				t.Errorf("document %d (%s): %v", i, meta.Kind, err)
			}
			kinds[meta.Kind]++
		}
		for _, k := range []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "DaemonSet"} {
			if kinds[k] != 1 {
				t.Errorf("%d documents of kind %s, want 1", kinds[k], k)
			}
		}
		if ds == nil {
			t.Fatal("no DaemonSet")
		}
		spec := ds.Spec.Template.Spec
		if !spec.HostNetwork || len(spec.InitContainers) != 1 || len(spec.Containers) != 1 {
			t.Fatalf("DaemonSet pod spec: hostNetwork %v, %d init containers, %d containers", spec.HostNetwork, len(spec.InitContainers), len(spec.Containers))
		}
		c := spec.Containers[0]
		if c.Image != o.Image || c.ImagePullPolicy != corev1.PullIfNotPresent {
			t.Errorf("image %q %s", c.Image, c.ImagePullPolicy)
		}
		args := strings.Join(c.Args, " ")
		if !strings.Contains(args, "--cluster-cidr="+o.ClusterCIDR) || !strings.Contains(args, "--log-level="+o.LogLevel) {
			t.Errorf("agent args %q do not carry the options", args)
		}
		if c.Env[0].ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
			t.Errorf("NODE_NAME from %v", c.Env[0].ValueFrom)
		}
		if c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.LivenessProbe.HTTPGet.Path != "/healthz" {
			t.Error("probes")
		}
	}
}

func TestRenderRejectsBadOptions(t *testing.T) {
	for _, mod := range []func(*Options){
		func(o *Options) { o.ClusterCIDR = "10.32.0.1/12" },
		func(o *Options) { o.ClusterCIDR = "fd00::/64" },
		func(o *Options) { o.BlockSize = 8 },
		func(o *Options) { o.MTU = 100 },
		func(o *Options) { o.Image = "" },
		func(o *Options) { o.LogLevel = "loud" },
	} {
		o := Defaults()
		mod(&o)
		if _, err := Render(o); err == nil {
			t.Errorf("Render(%+v) accepted", o)
		}
	}
}

func TestInstallCNI(t *testing.T) {
	dir := t.TempDir()
	plugin := filepath.Join(dir, "weft-cni")
	if err := os.WriteFile(plugin, []byte("plugin"), 0o700); err != nil {
		t.Fatal(err)
	}
	in := Install{Plugin: plugin, BinDir: filepath.Join(dir, "bin"), ConfDir: filepath.Join(dir, "net.d"), Socket: "/run/weft/weft.sock"}
	for range 2 { // idempotent: a restarted init container installs over the old files
		if err := in.Run(); err != nil {
			t.Fatal(err)
		}
	}
	fi, err := os.Stat(filepath.Join(dir, "bin", "weft-cni"))
	if err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("installed plugin: %v %v", fi, err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "net.d", ConflistName))
	if err != nil {
		t.Fatal(err)
	}
	var conf struct {
		CNIVersion string `json:"cniVersion"`
		Name       string
		Plugins    []map[string]any
	}
	if err := json.Unmarshal(b, &conf); err != nil {
		t.Fatal(err)
	}
	caps, _ := conf.Plugins[0]["capabilities"].(map[string]any)
	if conf.CNIVersion != "1.0.0" || conf.Name != "weft" || len(conf.Plugins) != 1 || conf.Plugins[0]["type"] != "weft-cni" || caps["portMappings"] != true {
		t.Errorf("conflist %s", b)
	}
	for _, d := range []string{"bin", "net.d"} {
		ents, _ := os.ReadDir(filepath.Join(dir, d))
		if len(ents) != 1 {
			t.Errorf("%s holds %d files, want 1 (temporary files left behind?)", d, len(ents))
		}
	}
	if err := (Install{Plugin: filepath.Join(dir, "missing"), BinDir: dir, ConfDir: dir}).Run(); err == nil {
		t.Error("installing a missing plugin succeeded")
	}
}
