package agent

import (
	"fmt"
	"net"
	"net/http"
	"time"
)

// DefaultHTTPAddr is where the agent serves health probes (and, as they are added,
// metrics and the status page): Weave Net's status port.
const DefaultHTTPAddr = ":6782"

// httpMux builds the agent's HTTP endpoints.
//
//   - /healthz: the agent is alive — its reconcile loop ran within three resync periods.
//   - /readyz: the node can serve pods — the dataplane has been reconciled.
func (a *Agent) httpMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		a.statMu.Lock()
		last := a.lastAttempt
		a.statMu.Unlock()
		if age := time.Since(last); age > 3*a.cfg.Resync {
			http.Error(w, fmt.Sprintf("reconcile loop stalled: last run %s ago", age.Round(time.Second)), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.ready.Load() {
			http.Error(w, "not ready: dataplane not reconciled yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	a.observeRoutes(mux) // /metrics, the status page and its JSON (observe.go)
	return mux
}

// listenHTTP opens the address of the agent's HTTP endpoints (httpMux).
func listenHTTP(addr string) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening on %s for health and metrics: %w (choose another --http-addr, or \"\" to disable)", addr, err)
	}
	return l, nil
}
