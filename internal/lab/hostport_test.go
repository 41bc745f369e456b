package lab

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"
)

// serveName answers every TCP connection to port of the pod's namespace with the pod's
// name, until the test ends.
func serveName(t *testing.T, p Pod, port int) {
	t.Helper()
	var ln net.Listener
	err := inNamespace(p.Namespace, p.Name, func() (err error) {
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		t.Fatalf("listening in pod %s: %v", p.Name, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte(p.Name))
			c.Close()
		}
	}()
}

// dialFrom connects from the named namespace to target and returns what it answered.
func dialFrom(namespace string, target netip.AddrPort) (string, error) {
	var c net.Conn
	err := inNamespace(namespace, namespace, func() (err error) {
		c, err = net.DialTimeout("tcp", target.String(), 2*time.Second)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}

// TestLabHostPort: a pod's hostPort answers on its node's address from every node (the
// node itself included) and every pod (on the same bridge, and the pod itself), keeps
// answering across a restart of the node's agent, and stops with the pod.
func TestLabHostPort(t *testing.T) {
	l := upReal(t, 3, 1)
	ctx := context.Background()
	web, err := l.AddPod(ctx, "node2", "web", HostPort{Protocol: "tcp", Host: 18080, Pod: 8080})
	if err != nil {
		t.Fatal(err)
	}
	serveName(t, web, 8080)
	node2, _ := l.node("node2")
	target := netip.AddrPortFrom(node2.Underlay, 18080)

	check := func(when string) {
		t.Helper()
		var sources []string
		for _, n := range l.Nodes() {
			sources = append(sources, n.Namespace)
		}
		for _, p := range l.Pods() {
			sources = append(sources, p.Namespace)
		}
		for _, src := range sources {
			got, err := dialFrom(src, target)
			if err != nil || got != "web" {
				t.Errorf("%s: %s -> %s answered %q, %v; want the pod web", when, src, target, got, err)
			}
		}
		t.Logf("%s: %s answered by pod web from %d namespaces (3 nodes, %d pods)", when, target, len(sources), len(sources)-3)
	}
	check("after ADD")

	if err := l.StopAgent("node2", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// The kernel forwards without the agent: a restart must not drop hostPorts.
	node1, _ := l.node("node1")
	if got, err := dialFrom(node1.Namespace, target); err != nil || got != "web" {
		t.Errorf("with node2's agent down: %s answered %q, %v", target, got, err)
	}
	if err := l.StartAgent(ctx, "node2"); err != nil {
		t.Fatal(err)
	}
	check("after node2's agent restarted")

	if err := l.DelPod(ctx, "node2", "web"); err != nil {
		t.Fatal(err)
	}
	if got, err := dialFrom(node1.Namespace, target); err == nil {
		t.Errorf("after DEL of the pod, %s still answers %q", target, got)
	}
}
