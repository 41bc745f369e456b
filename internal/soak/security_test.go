package soak

import (
	"context"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/api"
	"github.com/weftnet/weft/internal/cluster"
	"github.com/weftnet/weft/internal/lab"
)

// TestSocketRootOnly: the agent's socket is a root-owned socket of mode 0600, and `weft
// status` run as nobody cannot use it; with the mode opened up (the control) it can.
func TestSocketRootOnly(t *testing.T) {
	l := upLab(t, 1, 0)
	n := node(t, l, "node1")
	fi, err := os.Stat(n.Socket)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 || st.Uid != 0 {
		t.Fatalf("socket %s: mode %s, uid %d; want a socket of mode 0600 owned by root", n.Socket, fi.Mode(), st.Uid)
	}
	// Let nobody reach the socket through the directories, so only its own mode counts.
	for _, d := range []string{bins.dir, l.Dir(), n.Dir} {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, fi.Mode().Perm()|0o111); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.Chmod(d, fi.Mode().Perm()) })
	}
	asNobody := func() (string, error) {
		cmd := exec.Command(bins.weft, "status", "--socket", n.Socket)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		cmd.Dir = "/"
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := asNobody()
	if err == nil || !strings.Contains(out, "permission denied") {
		t.Fatalf("weft status as uid 65534: err %v, output %q; want permission denied", err, out)
	}
	t.Logf("as uid 65534: %s", strings.TrimSpace(out))
	if err := os.Chmod(n.Socket, 0o666); err != nil {
		t.Fatal(err)
	}
	out, err = asNobody()
	_ = os.Chmod(n.Socket, 0o600)
	if err != nil {
		t.Fatalf("control: with the socket at 0666, weft status as uid 65534 failed: %v: %s", err, out)
	}
}

// TestRogueGossipPeer: a memberlist without the cluster key (none, or a wrong one), run
// inside a lab node's namespace, tries to join the cluster and to spread a node record;
// no agent may list it. With the right key (the control) the agents do list it.
func TestRogueGossipPeer(t *testing.T) {
	l := upLab(t, 2, 0)
	n1, n2 := node(t, l, "node1"), node(t, l, "node2")
	keyHex, err := os.ReadFile(filepath.Join(l.Dir(), "gossip.key"))
	if err != nil {
		t.Fatal(err)
	}
	wrong := make([]byte, 32)
	copy(wrong, "not-the-cluster-key-at-all......")
	for i, c := range []struct {
		name, key string
		admitted  bool
	}{
		{"rogue-nokey", "", false},
		{"rogue-wrongkey", hex.EncodeToString(wrong), false},
		{"control-rightkey", strings.TrimSpace(string(keyHex)), true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel() // a refused join takes memberlist's 10 s TCP timeout
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), "WEFT_SOAK_HELPER=rogue", "WEFT_ROGUE_NAME="+c.name, fmt.Sprintf("WEFT_ROGUE_PORT=%d", 7946+i),
				"WEFT_ROGUE_BIND="+n1.Underlay.String(), "WEFT_ROGUE_PEER="+n2.Underlay.String(), "WEFT_ROGUE_KEY="+c.key)
			var out strings.Builder
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := startInNS(n1.Namespace, cmd); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			t.Cleanup(func() {
				_ = cmd.Process.Kill()
				select {
				case <-done:
				case <-time.After(10 * time.Second):
				}
			})
			seen, _ := poll(6*time.Second, func() (bool, string) { return listed(l, c.name), "" })
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("helper: %v\n%s", err, out.String())
				}
			case <-time.After(15 * time.Second):
				t.Fatalf("helper did not finish\n%s", out.String())
			}
			t.Logf("helper: %s", strings.Join(strings.Fields(out.String()), " "))
			if seen != c.admitted {
				t.Fatalf("%s listed by an agent: %v, want %v", c.name, seen, c.admitted)
			}
		})
	}
}

// listed reports whether any agent of l lists a peer called name.
func listed(l *lab.Lab, name string) bool {
	for _, n := range l.Nodes() {
		s, err := api.NewClient(n.Socket, 3*time.Second).Status(context.Background())
		if err != nil {
			continue
		}
		if slices.ContainsFunc(s.Peers, func(p api.Peer) bool { return p.Name == name }) {
			return true
		}
	}
	return false
}

// rogueGossip is the helper process of TestRogueGossipPeer: it runs in a node namespace,
// starts a memberlist with the given key (none if empty), joins the peer, and keeps
// publishing a node record for four seconds.
func rogueGossip() int {
	var key []byte
	if k := os.Getenv("WEFT_ROGUE_KEY"); k != "" {
		var err error
		if key, err = hex.DecodeString(k); err != nil {
			fmt.Println(err)
			return 1
		}
	}
	bind, err := netip.ParseAddr(os.Getenv("WEFT_ROGUE_BIND"))
	if err != nil {
		fmt.Println(err)
		return 1
	}
	self := cluster.Node{
		Name: os.Getenv("WEFT_ROGUE_NAME"), Underlay: bind, VTEPMAC: "02:00:00:00:00:99",
		Tunnel: netip.MustParseAddr("10.47.255.0"), Blocks: []netip.Prefix{netip.MustParsePrefix("10.47.255.0/26")},
	}
	port, _ := strconv.Atoi(os.Getenv("WEFT_ROGUE_PORT"))
	c, err := cluster.Start(cluster.Config{Self: self, BindAddr: bind, Port: port, Key: key})
	if err != nil {
		fmt.Println("start:", err)
		return 1
	}
	defer c.Shutdown()
	n, err := c.Join([]string{os.Getenv("WEFT_ROGUE_PEER")})
	fmt.Printf("join: %d answered, err %v\n", n, err)
	for i := range 8 {
		self.Blocks = append(self.Blocks, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 47, 254, byte(i * 64)}), 26))
		_ = c.Update(self)
		time.Sleep(500 * time.Millisecond)
	}
	fmt.Printf("learned %d live records\n", len(c.Live()))
	return 0
}
