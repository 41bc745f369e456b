package api_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/api"
	"github.com/weftnet/weft/internal/api/apiserver"
)

// backend answers from fields; err, if set, is every call's error.
type backend struct {
	peers int
	err   error
}

func (b backend) Add(_ context.Context, r api.AddRequest) (api.Lease, error) {
	return api.Lease{Attachment: r.Attachment, Address: netip.MustParsePrefix("10.32.0.5/26")}, b.err
}
func (b backend) Del(context.Context, api.Attachment) error { return b.err }
func (b backend) Check(context.Context, api.Attachment) (api.Lease, error) {
	return api.Lease{}, b.err
}
func (b backend) GC(context.Context, api.GCRequest) (api.GCResponse, error) {
	return api.GCResponse{}, b.err
}
func (b backend) Status(context.Context) (api.Status, error) {
	s := api.Status{Node: "n1", Ready: true}
	for i := range b.peers {
		s.Peers = append(s.Peers, api.Peer{Name: fmt.Sprintf("node-with-a-long-name-%04d", i)})
	}
	return s, b.err
}

func serve(t *testing.T, b apiserver.Backend) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "weft.sock")
	l, err := apiserver.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- apiserver.Serve(ctx, l, apiserver.NewHandler(b)) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return sock
}

// TestClient drives the client against the real handler: replies small and large (a
// status of 2,000 peers, far beyond one write), and every error kind keeping its kind.
func TestClient(t *testing.T) {
	ctx := context.Background()
	c := api.NewClient(serve(t, backend{peers: 2000}), 5*time.Second)
	l, err := c.Add(ctx, api.AddRequest{Attachment: api.Attachment{ContainerID: "c1", IfName: "eth0"}})
	if err != nil || l.ContainerID != "c1" || l.Address.String() != "10.32.0.5/26" {
		t.Fatalf("Add = %+v, %v", l, err)
	}
	s, err := c.Status(ctx)
	if err != nil || len(s.Peers) != 2000 || s.Peers[1999].Name != "node-with-a-long-name-1999" {
		t.Fatalf("Status: %d peers, %v", len(s.Peers), err)
	}
	for _, kind := range []error{api.ErrNotReady, api.ErrNotFound, api.ErrExhausted, api.ErrInvalid, api.ErrBadPortMapping} {
		c := api.NewClient(serve(t, backend{err: fmt.Errorf("%w: because", kind)}), 5*time.Second)
		err := c.Del(ctx, api.Attachment{ContainerID: "c1", IfName: "eth0"})
		if !errors.Is(err, kind) || !strings.Contains(err.Error(), "because") {
			t.Errorf("backend error %v came back as %v", kind, err)
		}
	}
	c = api.NewClient(serve(t, backend{err: errors.New("disk on fire")}), 5*time.Second)
	if _, err := c.Check(ctx, api.Attachment{ContainerID: "c1", IfName: "eth0"}); err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Errorf("an internal error came back as %v", err)
	}
}

// TestClientUnreachable: no agent, and an agent that accepts but never answers: both end
// as ErrUnreachable, the second within the timeout.
func TestClientUnreachable(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	_, err := api.NewClient(filepath.Join(dir, "none.sock"), time.Second).Status(ctx)
	if !errors.Is(err, api.ErrUnreachable) {
		t.Errorf("no socket: %v, want ErrUnreachable", err)
	}
	hung := filepath.Join(dir, "hung.sock")
	l, err := net.Listen("unix", hung)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	start := time.Now()
	_, err = api.NewClient(hung, 300*time.Millisecond).Status(ctx)
	if !errors.Is(err, api.ErrUnreachable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("hung agent: %v, want ErrUnreachable and DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("hung agent: gave up after %s, timeout 300ms", d)
	}
}
