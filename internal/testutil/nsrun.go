package testutil

import (
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// InNS runs f inside n (on a locked OS thread) and fails t on its error.
func InNS(t testing.TB, n ns.NetNS, f func() error) {
	t.Helper()
	if err := n.Do(func(ns.NetNS) error { return f() }); err != nil {
		t.Fatal(err)
	}
}

// Run runs a command inside n and returns its output; it fails t if the command fails.
func Run(t testing.TB, n ns.NetNS, name string, args ...string) string {
	t.Helper()
	var out []byte
	InNS(t, n, func() error {
		var err error
		out, err = exec.Command(name, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
		}
		return nil
	})
	return string(out)
}

// Serve answers inside n until t ends: TCP on port 8080 with "<name> tcp from <client
// address>", UDP on port 5353 with "<name> udp from <client address>".
func Serve(t testing.TB, n ns.NetNS, name string) {
	t.Helper()
	var tl net.Listener
	var ul net.PacketConn
	InNS(t, n, func() (err error) {
		if tl, err = net.Listen("tcp4", "0.0.0.0:8080"); err != nil {
			return err
		}
		ul, err = net.ListenPacket("udp4", "0.0.0.0:5353")
		return err
	})
	t.Cleanup(func() { tl.Close(); ul.Close() })
	go func() {
		for {
			c, err := tl.Accept()
			if err != nil {
				return // closed
			}
			from := c.RemoteAddr().(*net.TCPAddr).IP
			fmt.Fprintf(c, "%s tcp from %s", name, from)
			c.Close()
		}
	}()
	go func() {
		buf := make([]byte, 1500)
		for {
			_, addr, err := ul.ReadFrom(buf)
			if err != nil {
				return // closed
			}
			ul.WriteTo([]byte(fmt.Sprintf("%s udp from %s", name, addr.(*net.UDPAddr).IP)), addr)
		}
	}()
}

// Ask connects from inside n to dst over proto ("tcp": read what the server says; "udp":
// send a datagram, read the answer) and returns the answer. Each of the tries is bounded by
// timeout; the error is the last try's.
func Ask(t testing.TB, n ns.NetNS, proto, dst string, timeout time.Duration, tries int) (string, error) {
	t.Helper()
	var answer string
	var err error
	for range tries {
		InNS(t, n, func() error {
			answer, err = askOnce(proto, dst, timeout)
			return nil
		})
		if err == nil {
			break
		}
	}
	return answer, err
}

func askOnce(proto, dst string, timeout time.Duration) (string, error) {
	c, err := net.DialTimeout(proto+"4", dst, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return "", err
	}
	if proto == "udp" {
		if _, err := c.Write([]byte("hello")); err != nil {
			return "", err
		}
		buf := make([]byte, 1500)
		n, err := c.Read(buf)
		return string(buf[:n]), err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}
