package cni

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weftnet/weft/internal/testutil"
)

// TestBadInputRawExec runs the real weft-cni binary the way a runtime does — environment
// plus stdin, no libcni in between — with input libcni would never send. Each call must
// exit non-zero and print the spec's error object {cniVersion, code, msg, details} with the
// right code and a message a person can act on, quickly, and leave no veth, lease or file.
// (Agent down, bad netns, interface clash and a second ADD are in TestAddFailsCleanly.)
func TestBadInputRawExec(t *testing.T) {
	e := newEnv(t)
	pod := testutil.NewNS(t)
	good := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","socket":%q}`, e.agent.socket)
	env := func(cmd string) map[string]string {
		return map[string]string{"CNI_COMMAND": cmd, "CNI_CONTAINERID": "bad1", "CNI_NETNS": pod.Path(),
			"CNI_IFNAME": "eth0", "CNI_PATH": pluginDir}
	}
	without := func(m map[string]string, k string) map[string]string { delete(m, k); return m }
	with := func(m map[string]string, k, v string) map[string]string { m[k] = v; return m }
	huge := `{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","socket":` + fmt.Sprintf("%q", e.agent.socket) +
		`,"padding":"` + strings.Repeat("x", 10<<20) + `"}`
	for _, c := range []struct {
		name  string
		env   map[string]string
		stdin string
		code  uint
		has   string
	}{
		{"invalid JSON", env("ADD"), `{"cniVersion":"1.1.0","name":`, 6, "network config"},
		{"not JSON at all", env("ADD"), "\x00\xffgarbage", 6, "network config"},
		{"empty stdin", env("ADD"), "", 6, "network config"},
		{"unknown cniVersion", env("ADD"), strings.Replace(good, "1.1.0", "9.9.9", 1), 1, "9.9.9"},
		{"unknown CNI_COMMAND", env("FROB"), good, 4, "FROB"},
		{"no CNI_CONTAINERID", without(env("ADD"), "CNI_CONTAINERID"), good, 4, "CNI_CONTAINERID"},
		{"no CNI_NETNS", without(env("ADD"), "CNI_NETNS"), good, 4, "CNI_NETNS"},
		{"no CNI_IFNAME", without(env("ADD"), "CNI_IFNAME"), good, 4, "CNI_IFNAME"},
		{"CNI_IFNAME too long", with(env("ADD"), "CNI_IFNAME", "eth0123456789012345"), good, 4, "interface name"},
		{"nonexistent netns", with(env("ADD"), "CNI_NETNS", "/run/netns/weft-no-such-netns"), good, 8, "CNI_NETNS is wrong"},
		{"no type", env("ADD"), `{"cniVersion":"1.1.0","name":"weft"}`, 7, `"type"`},
		{"bad timeout", env("ADD"), strings.Replace(good, `"socket"`, `"timeout":"-1s","socket"`, 1), 7, "timeout"},
		{"huge input", env("ADD"), huge + "x", 6, "network config"},
		{"huge but valid: socket gone", env("ADD"), strings.Replace(huge, e.agent.socket, "/run/weft-no-such-dir/weft.sock", 1), 11, "unreachable"},
	} {
		t.Run(c.name, func(t *testing.T) {
			work := t.TempDir()
			start := time.Now()
			stdout, stderr, exit := e.rawExec(c.env, c.stdin, work)
			took := time.Since(start)
			if exit == 0 {
				t.Fatalf("exit 0, want non-zero; stdout %q", trunc(stdout))
			}
			var res struct {
				CNIVersion *string `json:"cniVersion"`
				Code       *uint   `json:"code"`
				Msg        *string `json:"msg"`
				Details    *string `json:"details"`
			}
			// cniVersion is in the spec's example error but not among its required keys, and
			// skel (which every reference plugin uses) does not print it.
			if err := json.Unmarshal(stdout, &res); err != nil || res.Code == nil || res.Msg == nil {
				t.Fatalf("stdout is not the spec's error object (%v): %q (stderr %q)", err, trunc(stdout), trunc(stderr))
			}
			if *res.Code != c.code || !strings.Contains(*res.Msg+" "+deref(res.Details), c.has) {
				t.Fatalf("code %d %q (details %q), want code %d mentioning %q", *res.Code, *res.Msg, deref(res.Details), c.code, c.has)
			}
			if len(*res.Msg) < 15 {
				t.Errorf("message %q is too terse to act on", *res.Msg)
			}
			if took > 10*time.Second {
				t.Errorf("took %s", took)
			}
			t.Logf("exit %d in %s: code %d: %s", exit, took.Round(time.Millisecond), *res.Code, *res.Msg)
			e.requireClean(pod, "bad1")
			if ents, _ := os.ReadDir(work); len(ents) != 0 {
				t.Errorf("weft-cni left files in its working and temp directory: %v", ents)
			}
		})
	}
}

// TestNoCommandPrintsAbout: run by hand without CNI_COMMAND, weft-cni says what it is (on
// stderr, exit 0, as skel does) and touches nothing.
func TestNoCommandPrintsAbout(t *testing.T) {
	e := newEnv(t)
	stdout, stderr, exit := e.rawExec(map[string]string{}, "", t.TempDir())
	if exit != 0 || len(stdout) != 0 || !strings.Contains(string(stderr), "weft-cni") || !strings.Contains(string(stderr), "1.1.0") {
		t.Fatalf("exit %d, stdout %q, stderr %q; want exit 0 and the plugin's description with its CNI versions on stderr", exit, stdout, stderr)
	}
}

// rawExec runs weft-cni in the node's namespace with exactly env and stdin, in dir (also
// its TMPDIR), and returns its output and exit code.
func (e *env) rawExec(env map[string]string, stdin, dir string) (stdout, stderr []byte, exit int) {
	e.t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.Command(filepath.Join(pluginDir, "weft-cni"))
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "TMPDIR=" + dir}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Dir = dir
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := e.node.Do(func(ns.NetNS) error { return cmd.Run() })
	if ee, ok := err.(*exec.ExitError); ok {
		return out.Bytes(), errb.Bytes(), ee.ExitCode()
	}
	if err != nil {
		e.t.Fatalf("running weft-cni: %v", err)
	}
	return out.Bytes(), errb.Bytes(), 0
}

func trunc(b []byte) string {
	if len(b) > 300 {
		return string(b[:300]) + "..."
	}
	return string(b)
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
