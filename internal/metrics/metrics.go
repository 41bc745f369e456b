// Package metrics exposes the agent's state as Prometheus metrics, all prefixed weft_.
//
// Most metrics are read at scrape time from one snapshot of the agent (its Status and the
// gossip counters), so they never disagree with `weft status`. Only the CNI operation
// durations are recorded as they happen, by a middleware around the local API.
package metrics

import (
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/weftnet/weft/internal/api"
	"github.com/weftnet/weft/internal/version"
)

// Gossip are the gossip traffic counters (cluster.Stats).
type Gossip struct {
	MsgsIn, MsgsOut, BytesIn, BytesOut uint64
}

// Snapshot is what the collector reads at each scrape.
type Snapshot struct {
	Status api.Status
	Gossip Gossip
}

// Metrics is the agent's registry.
type Metrics struct {
	reg *prometheus.Registry
	cni *prometheus.HistogramVec
}

// New registers weft's metrics; snap is called once per scrape.
func New(snap func() Snapshot) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		cni: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "weft_cni_operation_duration_seconds",
			Help:    "Duration of CNI operations served by the agent's local API, by verb (ADD, DEL, CHECK, GC) and result (ok, or the error kind).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"verb", "result"}),
	}
	m.reg.MustRegister(m.cni, &collector{snap: snap},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the metrics in the Prometheus text (or negotiated) format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// InstrumentAPI wraps the local API handler and times the CNI verbs.
func (m *Metrics) InstrumentAPI(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		verb, ok := strings.CutPrefix(r.URL.Path, "/v1/cni/")
		if !ok {
			h.ServeHTTP(w, r)
			return
		}
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		start := time.Now()
		h.ServeHTTP(rec, r)
		m.cni.WithLabelValues(strings.ToUpper(verb), result(rec.code)).Observe(time.Since(start).Seconds())
	})
}

func result(code int) string {
	switch code {
	case http.StatusOK:
		return "ok"
	case http.StatusBadRequest:
		return "invalid"
	case http.StatusNotFound:
		return "not-found"
	case http.StatusServiceUnavailable:
		return "not-ready"
	case http.StatusInsufficientStorage:
		return "exhausted"
	}
	return "error"
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

var (
	descInfo       = prometheus.NewDesc("weft_build_info", "The agent's version and node; always 1.", []string{"version", "node"}, nil)
	descReady      = prometheus.NewDesc("weft_ready", "1 when the node's dataplane is reconciled and it can serve pods.", nil, nil)
	descPeers      = prometheus.NewDesc("weft_peers", "Peers by gossip state.", []string{"state"}, nil)
	descPeerHealth = prometheus.NewDesc("weft_peers_health", "Peers by this node's health classification.", []string{"health"}, nil)
	descPeerOK     = prometheus.NewDesc("weft_peer_healthy", "1 when this node's probes of the peer are all fine.", []string{"peer"}, nil)
	descRTT        = prometheus.NewDesc("weft_peer_rtt_seconds", "Round trip of the last small probe to the peer, by path (overlay, underlay); absent while lost.", []string{"peer", "path"}, nil)
	descProbes     = prometheus.NewDesc("weft_probes_sent_total", "Health probes sent, by peer and path.", []string{"peer", "path"}, nil)
	descLost       = prometheus.NewDesc("weft_probes_lost_total", "Health probes not answered, by peer and path.", []string{"peer", "path"}, nil)
	descUsed       = prometheus.NewDesc("weft_ipam_addresses_used", "Pod addresses leased on this node.", nil, nil)
	descCap        = prometheus.NewDesc("weft_ipam_addresses_capacity", "Pod addresses in the blocks this node owns.", nil, nil)
	descBlocks     = prometheus.NewDesc("weft_ipam_blocks_owned", "Address blocks this node owns.", nil, nil)
	descReconciles = prometheus.NewDesc("weft_reconcile_runs_total", "Dataplane reconciles run.", nil, nil)
	descDrift      = prometheus.NewDesc("weft_reconcile_drift_corrections_total", "Kernel changes the reconciler made after the first reconcile (entries deleted or changed by hand, and so on).", nil, nil)
	descFastPath   = prometheus.NewDesc("weft_fastpath_packets_total", "Packets the BPF fast path saw, by verdict: to_pod and to_tunnel it handed on itself, the rest it left to the normal path.", []string{"verdict"}, nil)
	descMissing    = prometheus.NewDesc("weft_kernel_entries_missing", "Wanted routes, neighbour and FDB entries the kernel lacks at the last check.", nil, nil)
	descStale      = prometheus.NewDesc("weft_kernel_entries_stale", "weft's kernel entries nothing wants at the last check.", nil, nil)
	descGossipMsgs = prometheus.NewDesc("weft_gossip_messages_total", "Gossip messages carrying node records, by direction (sent, received).", []string{"direction"}, nil)
	descGossipB    = prometheus.NewDesc("weft_gossip_bytes_total", "Bytes of gossip messages and state exchanges, by direction (sent, received).", []string{"direction"}, nil)
)

type collector struct{ snap func() Snapshot }

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descInfo, descReady, descPeers, descPeerHealth, descPeerOK, descRTT, descProbes, descLost,
		descUsed, descCap, descBlocks, descReconciles, descDrift, descMissing, descStale, descGossipMsgs, descGossipB, descFastPath} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.snap()
	st := s.Status
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge(descInfo, 1, version.Version, st.Node)
	gauge(descReady, b2f(st.Ready))
	states := map[string]int{"alive": 0, "suspect": 0, "dead": 0, "left": 0}
	healths := map[string]int{}
	for _, h := range []string{api.HealthOK, api.HealthUnknown, api.HealthPeerDown, api.HealthUnderlayBroken,
		api.HealthVXLANBlocked, api.HealthMTUBlackhole, api.HealthMissingKernel} {
		healths[h] = 0
	}
	for _, p := range st.Peers {
		states[p.State]++
		if p.Health == "" {
			continue
		}
		healths[p.Health]++
		gauge(descPeerOK, b2f(p.Health == api.HealthOK), p.Name)
		if p.OverlayRTTMs > 0 {
			gauge(descRTT, p.OverlayRTTMs/1000, p.Name, "overlay")
		}
		if p.UnderlayRTTMs > 0 {
			gauge(descRTT, p.UnderlayRTTMs/1000, p.Name, "underlay")
		}
		for _, ph := range p.Paths {
			counter(descProbes, float64(ph.Sent), p.Name, ph.Path)
			counter(descLost, float64(ph.Lost), p.Name, ph.Path)
		}
	}
	for k, v := range states {
		gauge(descPeers, float64(v), k)
	}
	for k, v := range healths {
		gauge(descPeerHealth, float64(v), k)
	}
	used, capacity := 0, 0
	for _, b := range st.Blocks {
		used += b.Used
		capacity += b.Capacity
	}
	gauge(descUsed, float64(used))
	gauge(descCap, float64(capacity))
	gauge(descBlocks, float64(len(st.Blocks)))
	counter(descReconciles, float64(st.Reconciles))
	counter(descDrift, float64(st.Drift))
	if k := st.Kernel; k != nil {
		gauge(descMissing, float64(len(k.Missing)))
		gauge(descStale, float64(len(k.Stale)))
	}
	for verdict, n := range st.FastPathPackets {
		counter(descFastPath, float64(n), verdict)
	}
	counter(descGossipMsgs, float64(s.Gossip.MsgsOut), "sent")
	counter(descGossipMsgs, float64(s.Gossip.MsgsIn), "received")
	counter(descGossipB, float64(s.Gossip.BytesOut), "sent")
	counter(descGossipB, float64(s.Gossip.BytesIn), "received")
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
