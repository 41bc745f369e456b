package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// Backend is what the handler needs from the agent.
type Backend interface {
	Add(ctx context.Context, req AddRequest) (Lease, error)
	Del(ctx context.Context, a Attachment) error
	Check(ctx context.Context, a Attachment) (Lease, error)
	GC(ctx context.Context, req GCRequest) (GCResponse, error)
	Status(ctx context.Context) (Status, error)
}

// Sentinel errors a Backend returns so the handler can pick the HTTP status, and the client
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
	// ErrUnreachable: the client could not reach the agent at all.
	ErrUnreachable = errors.New("agent unreachable")
)

// maxBody bounds every request body; a GC list of 100k attachments still fits.
const maxBody = 8 << 20

var statusOf = []struct {
	err  error
	code int
}{
	{ErrInvalid, http.StatusBadRequest},
	{ErrNotFound, http.StatusNotFound},
	{ErrExhausted, http.StatusInsufficientStorage},
	{ErrNotReady, http.StatusServiceUnavailable},
}

// NewHandler serves the API for b.
func NewHandler(b Backend) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/cni/add", func(w http.ResponseWriter, r *http.Request) {
		var req AddRequest
		if decode(w, r, &req) && validAttachment(w, req.Attachment) {
			reply[Lease](w)(b.Add(r.Context(), req))
		}
	})
	mux.HandleFunc("POST /v1/cni/del", func(w http.ResponseWriter, r *http.Request) {
		var req Attachment
		if decode(w, r, &req) && validAttachment(w, req) {
			reply[struct{}](w)(struct{}{}, b.Del(r.Context(), req))
		}
	})
	mux.HandleFunc("POST /v1/cni/check", func(w http.ResponseWriter, r *http.Request) {
		var req Attachment
		if decode(w, r, &req) && validAttachment(w, req) {
			reply[Lease](w)(b.Check(r.Context(), req))
		}
	})
	mux.HandleFunc("POST /v1/cni/gc", func(w http.ResponseWriter, r *http.Request) {
		var req GCRequest
		if decode(w, r, &req) {
			reply[GCResponse](w)(b.GC(r.Context(), req))
		}
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		reply[Status](w)(b.Status(r.Context()))
	})
	return mux
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeErr(w, fmt.Errorf("%w: decoding request body: %v", ErrInvalid, err))
		return false
	}
	return true
}

func validAttachment(w http.ResponseWriter, a Attachment) bool {
	if a.ContainerID == "" || a.IfName == "" {
		writeErr(w, fmt.Errorf("%w: containerID and ifName are required", ErrInvalid))
		return false
	}
	return true
}

// reply returns a function that writes (v, err) as the response, so handlers can pass a
// backend call's two results straight through.
func reply[T any](w http.ResponseWriter) func(T, error) {
	return func(v T, err error) {
		if err != nil {
			writeErr(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	}
}

type errorBody struct {
	Error string `json:"error"`
}

func writeErr(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	for _, s := range statusOf {
		if errors.Is(err, s.err) {
			code = s.code
			break
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(errorBody{Error: err.Error()})
}

// Listen opens the unix socket at path, readable and writable by root only. A stale socket
// left by a previous agent is replaced.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("creating socket directory: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing stale socket %s: %w", path, err)
	}
	// Create the socket with no permissions for group and others from the first moment.
	old := umask(0o077)
	l, err := net.Listen("unix", path)
	umask(old)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("restricting %s to root: %w", path, err)
	}
	return l, nil
}

// Serve serves h on l until ctx ends.
func Serve(ctx context.Context, l net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// drain is used by the client to reuse connections.
func drain(r io.Reader) { _, _ = io.Copy(io.Discard, io.LimitReader(r, maxBody)) }
