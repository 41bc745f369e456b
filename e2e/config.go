package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
)

// Config says what the cluster is made of and where things are. FromEnv fills it from
// WEFT_E2E_* variables (see the Makefile's e2e target).
type Config struct {
	Nodes      int    // nodes including the control plane (WEFT_E2E_NODES, default 3)
	WorkDir    string // all state; removed at the end (WEFT_E2E_WORKDIR, default $TMPDIR/weft-e2e)
	K8sBin     string // kube-apiserver, kubelet, ... (WEFT_E2E_K8S_BIN; required)
	CNIPlugins string // reference CNI plugins: loopback (WEFT_E2E_CNI_PLUGINS, default /usr/lib/cni)
	WeftImage  string // `make image`'s tarball (WEFT_E2E_IMAGE_TAR, default ../bin/weft-image.tar)
	Manifest   string // deploy/weft.yaml (WEFT_E2E_MANIFEST, default ../deploy/weft.yaml)
	KeepLogs   string // if set, every daemon's log is copied here at the end (WEFT_E2E_LOGS)
}

// Fixed choices of the cluster's address plan. The underlay (198.19.0.0/16, see netns.go)
// stays clear of the lab's 198.18.0.x.
const (
	serviceCIDR = "10.96.0.0/16"
	serviceIP   = "10.96.0.1" // the `kubernetes` Service
	clusterCIDR = "10.32.0.0/12"
	k8sVersion  = "v1.32.4"
)

// Binaries the harness needs on the machine besides K8sBin.
var machineTools = []string{"etcd", "containerd", "containerd-shim-runc-v2", "runc", "ctr", "ip", "nsenter", "unshare", "iptables", "conntrack"}

func env(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// FromEnv reads the configuration and checks that everything it names exists.
func FromEnv() (Config, error) {
	c := Config{
		WorkDir:    env("WEFT_E2E_WORKDIR", filepath.Join(os.TempDir(), "weft-e2e")),
		K8sBin:     os.Getenv("WEFT_E2E_K8S_BIN"),
		CNIPlugins: env("WEFT_E2E_CNI_PLUGINS", "/usr/lib/cni"),
		WeftImage:  env("WEFT_E2E_IMAGE_TAR", "../bin/weft-image.tar"),
		Manifest:   env("WEFT_E2E_MANIFEST", "../deploy/weft.yaml"),
		KeepLogs:   os.Getenv("WEFT_E2E_LOGS"),
	}
	n, err := strconv.Atoi(env("WEFT_E2E_NODES", "3"))
	if err != nil || n < 3 || n > 9 {
		return c, fmt.Errorf("WEFT_E2E_NODES=%q: want 3..9", os.Getenv("WEFT_E2E_NODES"))
	}
	c.Nodes = n
	if c.K8sBin == "" {
		return c, errors.New("WEFT_E2E_K8S_BIN is not set (`make e2e` builds the Kubernetes binaries and sets it)")
	}
	var errs []error
	for _, b := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl"} {
		if _, err := os.Stat(filepath.Join(c.K8sBin, b)); err != nil {
			errs = append(errs, err)
		}
	}
	for _, b := range []string{"loopback"} {
		if _, err := os.Stat(filepath.Join(c.CNIPlugins, b)); err != nil {
			errs = append(errs, fmt.Errorf("CNI plugin %s (Debian: containernetworking-plugins): %w", b, err))
		}
	}
	for _, t := range machineTools {
		if _, err := exec.LookPath(t); err != nil {
			errs = append(errs, err)
		}
	}
	for _, f := range []string{c.WeftImage, c.Manifest} {
		if _, err := os.Stat(f); err != nil {
			errs = append(errs, err)
		}
	}
	for i, f := range []*string{&c.WeftImage, &c.Manifest, &c.WorkDir, &c.K8sBin, &c.CNIPlugins} {
		if abs, err := filepath.Abs(*f); err == nil {
			*f = abs
		} else {
			errs = append(errs, fmt.Errorf("path %d: %w", i, err))
		}
	}
	return c, errors.Join(errs...)
}

func (c Config) bin(name string) string { return filepath.Join(c.K8sBin, name) }
