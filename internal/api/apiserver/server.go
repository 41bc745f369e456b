// Package apiserver serves the agent's local API (package api) on its root-only unix
// socket: an HTTP handler over a Backend, and the socket itself.
package apiserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/weftnet/weft/internal/api"
)

// Backend is what the handler needs from the agent. It reports failures with api's
// sentinel errors (api.ErrNotReady, ...), which pick the HTTP status (api.StatusOf).
type Backend interface {
	Add(ctx context.Context, req api.AddRequest) (api.Lease, error)
	Del(ctx context.Context, a api.Attachment) error
	Check(ctx context.Context, a api.Attachment) (api.Lease, error)
	GC(ctx context.Context, req api.GCRequest) (api.GCResponse, error)
	Status(ctx context.Context) (api.Status, error)
}

// NewHandler serves the API for b.
func NewHandler(b Backend) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/cni/add", func(w http.ResponseWriter, r *http.Request) {
		var req api.AddRequest
		if decode(w, r, &req) && validAttachment(w, req.Attachment) {
			reply[api.Lease](w)(b.Add(r.Context(), req))
		}
	})
	mux.HandleFunc("POST /v1/cni/del", func(w http.ResponseWriter, r *http.Request) {
		var req api.Attachment
		if decode(w, r, &req) && validAttachment(w, req) {
			reply[struct{}](w)(struct{}{}, b.Del(r.Context(), req))
		}
	})
	mux.HandleFunc("POST /v1/cni/check", func(w http.ResponseWriter, r *http.Request) {
		var req api.Attachment
		if decode(w, r, &req) && validAttachment(w, req) {
			reply[api.Lease](w)(b.Check(r.Context(), req))
		}
	})
	mux.HandleFunc("POST /v1/cni/gc", func(w http.ResponseWriter, r *http.Request) {
		var req api.GCRequest
		if decode(w, r, &req) {
			reply[api.GCResponse](w)(b.GC(r.Context(), req))
		}
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		reply[api.Status](w)(b.Status(r.Context()))
	})
	return mux
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, api.MaxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeErr(w, fmt.Errorf("%w: decoding request body: %v", api.ErrInvalid, err))
		return false
	}
	return true
}

func validAttachment(w http.ResponseWriter, a api.Attachment) bool {
	if a.ContainerID == "" || a.IfName == "" {
		writeErr(w, fmt.Errorf("%w: containerID and ifName are required", api.ErrInvalid))
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

func writeErr(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	for _, s := range api.StatusOf {
		if errors.Is(err, s.Err) {
			code = s.Code
			break
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(api.ErrorBody{Error: err.Error()})
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
