package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"time"
)

// Client talks to the agent's unix socket.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client for the agent listening on socket. timeout bounds each call.
func NewClient(socket string, timeout time.Duration) *Client {
	dialer := &net.Dialer{Timeout: timeout}
	return &Client{
		socket: socket,
		http: &http.Client{
			Timeout: timeout,
			Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					return dialer.DialContext(ctx, "unix", socket)
				},
			},
		},
	}
}

// Add asks for a lease; asking again for the same attachment returns the same lease.
func (c *Client) Add(ctx context.Context, req AddRequest) (Lease, error) {
	var l Lease
	return l, c.call(ctx, http.MethodPost, "/v1/cni/add", req, &l)
}

// Del frees the attachment's lease; freeing an unknown attachment succeeds.
func (c *Client) Del(ctx context.Context, a Attachment) error {
	return c.call(ctx, http.MethodPost, "/v1/cni/del", a, nil)
}

// Check returns the attachment's lease, or ErrNotFound.
func (c *Client) Check(ctx context.Context, a Attachment) (Lease, error) {
	var l Lease
	return l, c.call(ctx, http.MethodPost, "/v1/cni/check", a, &l)
}

// GC frees every lease not in req.Valid.
func (c *Client) GC(ctx context.Context, req GCRequest) (GCResponse, error) {
	var r GCResponse
	return r, c.call(ctx, http.MethodPost, "/v1/cni/gc", req, &r)
}

// Status returns the agent's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	return s, c.call(ctx, http.MethodGet, "/v1/status", nil, &s)
}

func (c *Client) call(ctx context.Context, method, path string, in, out any) error {
	var body bytes.Buffer
	if in != nil {
		if err := json.NewEncoder(&body).Encode(in); err != nil {
			return fmt.Errorf("%w: encoding request: %v", ErrInvalid, err)
		}
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://weft"+path, &body)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%w at %s: %v (is the weft agent running on this node?)", ErrUnreachable, c.socket, err)
	}
	defer resp.Body.Close()
	defer drain(resp.Body)
	if resp.StatusCode != http.StatusOK {
		var e errorBody
		_ = json.NewDecoder(resp.Body).Decode(&e)
		for _, s := range statusOf {
			if s.code == resp.StatusCode {
				return &Error{Kind: s.err, Message: e.Error}
			}
		}
		return &Error{Message: fmt.Sprintf("agent answered %s: %s", resp.Status, e.Error)}
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decoding agent reply to %s: %w", path, err)
	}
	return nil
}

// Error is an error the agent reported. errors.Is matches its Kind (ErrNotReady, ...).
type Error struct {
	Kind    error
	Message string
}

func (e *Error) Error() string { return e.Message }

// Unwrap lets errors.Is match the kind.
func (e *Error) Unwrap() error { return e.Kind }
