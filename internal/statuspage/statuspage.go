// Package statuspage serves the agent's status page: a live map of the nodes and the links
// between them, coloured by health, with round-trip times and each node's address usage.
//
// The page (one embedded HTML file, no external resources) fetches /api/cluster on the
// same port every two seconds. The agent answers it by asking every live peer's agent for
// its /api/status over the underlay (same HTTP port) and adding its own, so the map shows
// every node's view of every link: a link is drawn in the colour of the worse of its two
// ends' verdicts, and a node whose agent does not answer is drawn as such.
package statuspage

import (
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/weftnet/weft/internal/api"
)

//go:embed index.html
var indexHTML []byte

// Config configures the page's endpoints.
type Config struct {
	// Self returns this agent's status (with peer health).
	Self func(ctx context.Context) (api.Status, error)
	// Port is the HTTP port of the peers' agents (the same as this one's).
	Port int
	// Timeout bounds each peer's answer (default 1s).
	Timeout time.Duration
}

// Cluster is the JSON of /api/cluster.
type Cluster struct {
	Self  string     `json:"self"`
	Time  time.Time  `json:"time"`
	Nodes []NodeView `json:"nodes"`
}

// NodeView is one node's own status, or why it could not be had.
type NodeView struct {
	Name     string      `json:"name"`
	Underlay netip.Addr  `json:"underlay"`
	Status   *api.Status `json:"status,omitempty"`
	Error    string      `json:"error,omitempty"`
}

// Register adds GET /, /api/status and /api/cluster to mux.
func Register(mux *http.ServeMux, cfg Config) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = time.Second
	}
	client := &http.Client{Timeout: cfg.Timeout}
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'")
		_, _ = w.Write(indexHTML)
	})
	mux.HandleFunc("GET /api/status", func(w http.ResponseWriter, r *http.Request) {
		st, err := cfg.Self(r.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, st)
	})
	mux.HandleFunc("GET /api/cluster", func(w http.ResponseWriter, r *http.Request) {
		c, err := gather(r.Context(), cfg, client)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, c)
	})
}

func gather(ctx context.Context, cfg Config, client *http.Client) (Cluster, error) {
	self, err := cfg.Self(ctx)
	if err != nil {
		return Cluster{}, err
	}
	c := Cluster{Self: self.Node, Time: time.Now().UTC(), Nodes: make([]NodeView, len(self.Peers)+1)}
	c.Nodes[0] = NodeView{Name: self.Node, Underlay: self.Underlay, Status: &self}
	var wg sync.WaitGroup
	for i, p := range self.Peers {
		v := &c.Nodes[i+1]
		*v = NodeView{Name: p.Name, Underlay: p.Underlay}
		if p.State == "dead" || p.State == "left" {
			v.Error = "gossip declares it " + p.State
			continue
		}
		wg.Go(func() {
			st, err := fetch(ctx, client, "http://"+net.JoinHostPort(p.Underlay.String(), strconv.Itoa(cfg.Port))+"/api/status")
			if err != nil {
				v.Error = err.Error()
				return
			}
			v.Status = &st
		})
	}
	wg.Wait()
	return c, nil
}

func fetch(ctx context.Context, client *http.Client, url string) (api.Status, error) {
	var st api.Status
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return st, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return st, fmt.Errorf("its agent's status page does not answer: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("its agent answered %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("decoding its status: %w", err)
	}
	return st, nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(v)
}
