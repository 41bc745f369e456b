package apiserver

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/api"
)

// fuzzBackend answers every call at once with a fixed lease or status.
type fuzzBackend struct{}

var fuzzLease = api.Lease{
	Address: netip.MustParsePrefix("10.32.0.5/26"), Gateway: netip.MustParseAddr("10.32.0.1"),
	ClusterCIDR: netip.MustParsePrefix("10.32.0.0/12"), Bridge: "weft", MTU: 1450,
}

func (fuzzBackend) Add(_ context.Context, r api.AddRequest) (api.Lease, error) {
	l := fuzzLease
	l.Attachment = r.Attachment
	return l, nil
}
func (fuzzBackend) Del(context.Context, api.Attachment) error { return nil }
func (fuzzBackend) Check(_ context.Context, a api.Attachment) (api.Lease, error) {
	if a.ContainerID == "missing" {
		return api.Lease{}, api.ErrNotFound
	}
	return fuzzLease, nil
}
func (fuzzBackend) GC(_ context.Context, r api.GCRequest) (api.GCResponse, error) {
	return api.GCResponse{Released: []api.Attachment{}}, nil
}
func (fuzzBackend) Status(context.Context) (api.Status, error) {
	return api.Status{Node: "n1", Ready: true}, nil
}

// FuzzHandler sends arbitrary methods, paths and bodies to the local API handler: it must
// not panic or hang, must answer with a known status code, and an error must come as the
// JSON error body weft-cni reads.
func FuzzHandler(f *testing.F) {
	add, _ := json.Marshal(api.AddRequest{Attachment: api.Attachment{ContainerID: "c1", IfName: "eth0"}, PodName: "p"})
	for _, s := range []struct{ method, path, body string }{
		{"POST", "/v1/cni/add", string(add)},
		{"POST", "/v1/cni/del", `{"containerID":"c1","ifName":"eth0"}`},
		{"POST", "/v1/cni/check", `{"containerID":"missing","ifName":"eth0"}`},
		{"POST", "/v1/cni/gc", `{"valid":[{"containerID":"c1","ifName":"eth0"}]}`},
		{"GET", "/v1/status", ""},
		{"POST", "/v1/cni/add", `{"containerID":"c1","ifName":"eth0","extra":1}`},
		{"POST", "/v1/cni/add", `{"containerID":"c1"`},
		{"PUT", "/v1/cni/del", `[]`},
		{"GET", "/../v1/status", ""},
		{"POST", "/v1/cni/gc", `{"valid":null}{"valid":[]}`},
		{"DELETE", "//v1//cni/add?x=1#y", "\x00\xff"},
	} {
		f.Add(s.method, s.path, []byte(s.body))
	}
	h := NewHandler(fuzzBackend{})
	f.Fuzz(func(t *testing.T, method, path string, body []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, method, "http://weft"+path, bytes.NewReader(body))
		if err != nil {
			return // not a request a client could send
		}
		rec := httptest.NewRecorder()
		done := make(chan struct{})
		go func() {
			defer close(done)
			h.ServeHTTP(rec, req)
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s %q: the handler hung", method, path)
		}
		switch rec.Code {
		case http.StatusOK, http.StatusBadRequest, http.StatusNotFound, http.StatusMethodNotAllowed,
			http.StatusMovedPermanently, http.StatusTemporaryRedirect, http.StatusPermanentRedirect,
			http.StatusRequestEntityTooLarge, http.StatusInsufficientStorage, http.StatusServiceUnavailable:
		default:
			t.Fatalf("%s %q: unexpected status %d: %s", method, path, rec.Code, rec.Body)
		}
		if n := rec.Body.Len(); n > 64<<10 {
			t.Fatalf("%s %q: %d-byte response", method, path, n)
		}
		if rec.Code == http.StatusBadRequest || rec.Code >= 500 {
			var e api.ErrorBody
			if err := json.NewDecoder(io.LimitReader(rec.Body, 1<<16)).Decode(&e); err != nil || e.Error == "" {
				t.Fatalf("%s %q: status %d without a JSON error body: %v", method, path, rec.Code, err)
			}
			if !strings.Contains(rec.Header().Get("Content-Type"), "application/json") {
				t.Fatalf("%s %q: error with Content-Type %q", method, path, rec.Header().Get("Content-Type"))
			}
		}
	})
}
