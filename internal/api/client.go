package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"os"
	"strconv"
	"strings"
	"time"
)

// Sentinel errors a backend returns so the server can pick the HTTP status, and the client
// can give them back to its caller (weft-cni maps them to CNI error codes).
var (
	// ErrNotReady: the agent runs but cannot serve yet (try again later).
	ErrNotReady = errors.New("agent not ready")
	// ErrNotFound: no lease for that attachment.
	ErrNotFound = errors.New("no lease for this attachment")
	// ErrExhausted: no free address and no block left to claim.
	ErrExhausted = errors.New("address space exhausted")
	// ErrInvalid: the request is malformed.
	ErrInvalid = errors.New("invalid request")
	// ErrBadPortMapping: a hostPort of the pod cannot be forwarded on this node.
	ErrBadPortMapping = errors.New("bad port mapping")
	// ErrUnreachable: the client could not reach the agent at all.
	ErrUnreachable = errors.New("agent unreachable")
)

// StatusOf maps each sentinel error to the HTTP status that carries it; anything else is
// 500. The server and the client share it, so an error keeps its kind across the socket.
var StatusOf = []struct {
	Err  error
	Code int
}{
	{ErrInvalid, 400},
	{ErrBadPortMapping, 422},
	{ErrNotFound, 404},
	{ErrExhausted, 507},
	{ErrNotReady, 503},
}

// ErrorBody is the JSON body of every error response.
type ErrorBody struct {
	Error string `json:"error"`
}

// MaxBody bounds every request and response body; a GC list of 100k attachments fits.
const MaxBody = 8 << 20

// Client talks to the agent's unix socket.
//
// It speaks HTTP/1.0 itself, one request per connection, instead of using net/http:
// weft-cni is started for every pod, and net/http's package initialisation alone is a
// measurable part of its start-up (see BENCHMARKS.md). An HTTP/1.0 request gets a reply
// that is neither chunked nor kept alive, so the body is everything up to EOF.
type Client struct {
	socket  string
	timeout time.Duration
}

// NewClient returns a client for the agent listening on socket. timeout bounds each call.
func NewClient(socket string, timeout time.Duration) *Client {
	return &Client{socket: socket, timeout: timeout}
}

// Add asks for a lease; asking again for the same attachment returns the same lease.
func (c *Client) Add(ctx context.Context, req AddRequest) (Lease, error) {
	var l Lease
	return l, c.call(ctx, "POST", "/v1/cni/add", req, &l)
}

// Del frees the attachment's lease; freeing an unknown attachment succeeds.
func (c *Client) Del(ctx context.Context, a Attachment) error {
	return c.call(ctx, "POST", "/v1/cni/del", a, nil)
}

// Check returns the attachment's lease, or ErrNotFound.
func (c *Client) Check(ctx context.Context, a Attachment) (Lease, error) {
	var l Lease
	return l, c.call(ctx, "POST", "/v1/cni/check", a, &l)
}

// GC frees every lease not in req.Valid.
func (c *Client) GC(ctx context.Context, req GCRequest) (GCResponse, error) {
	var r GCResponse
	return r, c.call(ctx, "POST", "/v1/cni/gc", req, &r)
}

// Status returns the agent's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	return s, c.call(ctx, "GET", "/v1/status", nil, &s)
}

func (c *Client) call(ctx context.Context, method, path string, in, out any) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return fmt.Errorf("%w: encoding request: %v", ErrInvalid, err)
		}
	}
	code, reply, err := c.roundTrip(ctx, method, path, body)
	if err != nil {
		return fmt.Errorf("%w at %s: %w (is the weft agent running on this node?)", ErrUnreachable, c.socket, err)
	}
	if code != 200 {
		var e ErrorBody
		_ = json.Unmarshal(reply, &e)
		for _, s := range StatusOf {
			if s.Code == code {
				return &Error{Kind: s.Err, Message: e.Error}
			}
		}
		return &Error{Message: fmt.Sprintf("agent answered %d: %s", code, e.Error)}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(reply, out); err != nil {
		return fmt.Errorf("decoding agent reply to %s: %w", path, err)
	}
	return nil
}

// roundTrip sends one HTTP/1.0 request on a new connection and returns the status code
// and the body of the reply.
func (c *Client) roundTrip(ctx context.Context, method, path string, body []byte) (int, []byte, error) {
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.socket)
	if err != nil {
		return 0, nil, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	var req bytes.Buffer
	fmt.Fprintf(&req, "%s %s HTTP/1.0\r\nHost: weft\r\nUser-Agent: weft\r\n", method, path)
	if body != nil {
		fmt.Fprintf(&req, "Content-Type: application/json\r\nContent-Length: %d\r\n", len(body))
	}
	req.WriteString("\r\n")
	req.Write(body)
	if _, err := conn.Write(req.Bytes()); err != nil {
		return 0, nil, ctxErr(ctx, err)
	}

	r := textproto.NewReader(bufio.NewReader(conn))
	line, err := r.ReadLine()
	if err != nil {
		return 0, nil, ctxErr(ctx, fmt.Errorf("reading the reply: %w", err))
	}
	// "HTTP/1.0 200 OK"
	proto, rest, _ := strings.Cut(line, " ")
	codeText, _, _ := strings.Cut(rest, " ")
	code, err := strconv.Atoi(codeText)
	if !strings.HasPrefix(proto, "HTTP/1.") || err != nil || code < 100 || code > 999 {
		return 0, nil, fmt.Errorf("malformed reply status line %q", line)
	}
	hdr, err := r.ReadMIMEHeader()
	if err != nil {
		return 0, nil, ctxErr(ctx, fmt.Errorf("reading the reply's header: %w", err))
	}
	var reply []byte
	if n, err := strconv.Atoi(hdr.Get("Content-Length")); err == nil && n >= 0 && n <= MaxBody {
		reply = make([]byte, n)
		_, err = io.ReadFull(r.R, reply)
		if err != nil {
			return 0, nil, ctxErr(ctx, fmt.Errorf("reading the reply: %w", err))
		}
	} else {
		if reply, err = io.ReadAll(io.LimitReader(r.R, MaxBody+1)); err != nil {
			return 0, nil, ctxErr(ctx, fmt.Errorf("reading the reply: %w", err))
		}
		if len(reply) > MaxBody {
			return 0, nil, fmt.Errorf("reply larger than %d bytes", MaxBody)
		}
	}
	return code, reply, nil
}

// ctxErr prefers the context's error (a timeout, a cancellation) to the I/O error it caused.
// The connection's deadline is the context's, and may fire a moment before the context
// itself reports it: an I/O timeout is the context's deadline either way.
func ctxErr(ctx context.Context, err error) error {
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("%w (%w)", ctx.Err(), err)
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("%w (%w)", context.DeadlineExceeded, err)
	}
	return err
}

// Error is an error the agent reported. errors.Is matches its Kind (ErrNotReady, ...).
type Error struct {
	Kind    error
	Message string
}

func (e *Error) Error() string { return e.Message }

// Unwrap lets errors.Is match the kind.
func (e *Error) Unwrap() error { return e.Kind }
