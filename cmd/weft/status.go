package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/weftnet/weft/internal/api"
)

// statusCmd is `weft status` (the summary) and its views: peers, ipam, routes. Each view
// reads the agent's status once over the local API socket and prints it; --json prints the
// view's stable machine format.
func statusCmd() *cobra.Command {
	var (
		socket string
		asJSON bool
	)
	get := func(cmd *cobra.Command) (api.Status, error) {
		return api.NewClient(socket, 5*time.Second).Status(cmd.Context())
	}
	view := func(use, short string, build func(api.Status) any, print func(io.Writer, api.Status)) *cobra.Command {
		return &cobra.Command{
			Use: use, Short: short, Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				st, err := get(cmd)
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(cmd.OutOrStdout(), build(st))
				}
				print(cmd.OutOrStdout(), st)
				return nil
			},
		}
	}
	cmd := view("status", "Show this node's weft status: node, peers up/down, addresses, health",
		func(st api.Status) any { return st }, printStatus)
	cmd.PersistentFlags().StringVar(&socket, "socket", api.DefaultSocket, "the agent's local API socket")
	cmd.PersistentFlags().BoolVar(&asJSON, "json", false, "print JSON (the stable machine format)")
	cmd.AddCommand(
		view("peers", "Each peer: underlay address, gossip state, health, overlay and underlay RTT, last heard",
			func(st api.Status) any { return peersView{Node: st.Node, Health: st.Health, Peers: nonNil(st.Peers)} }, printPeers),
		view("ipam", "Address blocks per node, used and free addresses, cluster utilisation",
			func(st api.Status) any { return ipamOf(st) }, printIPAM),
		view("routes", "Kernel entries this node wants vs has, and drift corrected so far",
			func(st api.Status) any { return routesOf(st) }, printRoutes),
	)
	return cmd
}

// printJSON writes v as indented JSON: the stable machine format of every view.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func peerUp(p api.Peer) bool { return p.State == "alive" || p.State == "suspect" }

func printStatus(w io.Writer, st api.Status) {
	ready := "ready"
	if !st.Ready {
		ready = "NOT READY: " + st.Reason
	}
	used, capacity := 0, 0
	for _, b := range st.Blocks {
		used += b.Used
		capacity += b.Capacity
	}
	alive := 0
	for _, p := range st.Peers {
		if peerUp(p) {
			alive++
		}
	}
	fmt.Fprintf(w, "node %s (%s) %s, version %s\n", st.Node, st.Underlay, ready, st.Version)
	fmt.Fprintf(w, "  cluster %s, tunnel %s, gateway %s, mtu %d\n", st.ClusterCIDR, st.Tunnel, st.Gateway, st.MTU)
	fmt.Fprintf(w, "  addresses %d/%d in %d block(s); peers %d up, %d down\n", used, capacity, len(st.Blocks), alive, len(st.Peers)-alive)
	fmt.Fprintf(w, "  reconciled %d times, %d drift corrections\n", st.Reconciles, st.Drift)
	if st.FastPath != "" {
		fmt.Fprintf(w, "  fast path: %s\n", st.FastPath)
	}
	if k := st.Kernel; k != nil {
		fmt.Fprintf(w, "  kernel entries %d/%d present, %d stale\n", k.Present, k.Expected, len(k.Stale))
	}
	if st.Health != "" {
		fmt.Fprintf(w, "  health: %s\n", st.Health)
	}
	if len(st.Peers) > 0 {
		tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  PEER\tUNDERLAY\tSTATE\tHEALTH\tBLOCKS")
		for _, p := range st.Peers {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%d\n", p.Name, p.Underlay, p.State, orDash(p.Health), len(p.Blocks))
		}
		tw.Flush()
	}
}

type peersView struct {
	Node   string     `json:"node"`
	Health string     `json:"health,omitempty"`
	Peers  []api.Peer `json:"peers"`
}

func printPeers(w io.Writer, st api.Status) {
	if len(st.Peers) == 0 {
		fmt.Fprintf(w, "%s has no peers\n", st.Node)
		return
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tUNDERLAY\tTUNNEL\tSTATE\tHEALTH\tOVERLAY RTT\tUNDERLAY RTT\tPATHS\tLAST HEARD")
	for _, p := range st.Peers {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Name, p.Underlay, p.Tunnel, p.State, orDash(p.Health),
			rtt(p.OverlayRTTMs), rtt(p.UnderlayRTTMs), paths(p.Paths), ago(p.LastHeard))
	}
	tw.Flush()
	for _, p := range st.Peers {
		if p.HealthDetail != "" {
			fmt.Fprintf(w, "%s: %s: %s\n", p.Name, p.Health, p.HealthDetail)
		}
	}
}

// paths sums up the four probe paths, e.g. "u U o O!" (lower case small, upper case large,
// "!" failing).
func paths(ps []api.PathHealth) string {
	if len(ps) == 0 {
		return "-"
	}
	var out []string
	for _, p := range ps {
		s := map[string]string{"underlay": "u", "underlay-large": "U", "overlay": "o", "overlay-large": "O"}[p.Path]
		if p.Failing {
			s += "!"
		}
		out = append(out, s)
	}
	return strings.Join(out, " ")
}

func rtt(ms float64) string {
	if ms == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fms", ms)
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return time.Since(t).Round(100*time.Millisecond).String() + " ago"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

type ipamNode struct {
	Node     string           `json:"node"`
	Blocks   []netip.Prefix   `json:"blocks"`
	Usage    []api.BlockUsage `json:"usage,omitempty"` // per block: this node only
	Used     int              `json:"used"`
	Capacity int              `json:"capacity"`
	Known    bool             `json:"known"` // used/capacity known (this node, or a peer that answered probes)
}

type ipamView struct {
	ClusterCIDR netip.Prefix `json:"clusterCIDR"`
	// ClusterAddresses is the size of the cluster CIDR; Blocks, Used and Capacity sum the
	// nodes; Utilisation is Used/Capacity of the claimed blocks.
	ClusterAddresses uint64     `json:"clusterAddresses"`
	Blocks           int        `json:"blocks"`
	Used             int        `json:"used"`
	Capacity         int        `json:"capacity"`
	Utilisation      float64    `json:"utilisation"`
	Nodes            []ipamNode `json:"nodes"`
}

func ipamOf(st api.Status) ipamView {
	v := ipamView{ClusterCIDR: st.ClusterCIDR, Nodes: []ipamNode{}}
	if st.ClusterCIDR.IsValid() {
		v.ClusterAddresses = 1 << (32 - st.ClusterCIDR.Bits())
	}
	self := ipamNode{Node: st.Node, Usage: st.Blocks, Known: true, Blocks: []netip.Prefix{}}
	for _, b := range st.Blocks {
		self.Blocks = append(self.Blocks, b.Block)
		self.Used += b.Used
		self.Capacity += b.Capacity
	}
	v.Nodes = append(v.Nodes, self)
	for _, p := range st.Peers {
		n := ipamNode{Node: p.Name, Blocks: nonNil(p.Blocks), Used: p.AddrsUsed, Capacity: p.AddrsCapacity, Known: p.AddrsCapacity > 0}
		v.Nodes = append(v.Nodes, n)
	}
	for _, n := range v.Nodes {
		v.Blocks += len(n.Blocks)
		v.Used += n.Used
		v.Capacity += n.Capacity
	}
	if v.Capacity > 0 {
		v.Utilisation = float64(v.Used) / float64(v.Capacity)
	}
	return v
}

func printIPAM(w io.Writer, st api.Status) {
	v := ipamOf(st)
	fmt.Fprintf(w, "cluster %s: %d blocks claimed, %d/%d addresses used (%.1f%%), %d addresses in the CIDR\n",
		v.ClusterCIDR, v.Blocks, v.Used, v.Capacity, 100*v.Utilisation, v.ClusterAddresses)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tBLOCKS\tUSED\tFREE\tCAPACITY\tBLOCK LIST")
	for _, n := range v.Nodes {
		var bl []string
		for _, b := range n.Blocks {
			bl = append(bl, b.String())
		}
		used, free := "?", "?"
		if n.Known {
			used, free = fmt.Sprint(n.Used), fmt.Sprint(n.Capacity-n.Used)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%s\n", n.Node, len(n.Blocks), used, free, n.Capacity, strings.Join(bl, " "))
	}
	tw.Flush()
}

type routesView struct {
	Node          string    `json:"node"`
	Expected      int       `json:"expected"`
	Present       int       `json:"present"`
	Missing       []string  `json:"missing"`
	Stale         []string  `json:"stale"`
	Other         []string  `json:"other"`
	CheckedAt     time.Time `json:"checkedAt,omitzero"`
	Error         string    `json:"error,omitempty"`
	Drift         uint64    `json:"driftCorrected"`
	Reconciles    uint64    `json:"reconciles"`
	LastReconcile time.Time `json:"lastReconcile"`
}

func routesOf(st api.Status) routesView {
	v := routesView{Node: st.Node, Drift: st.Drift, Reconciles: st.Reconciles, LastReconcile: st.LastReconcile,
		Missing: []string{}, Stale: []string{}, Other: []string{}}
	if k := st.Kernel; k != nil {
		v.Expected, v.Present, v.CheckedAt, v.Error = k.Expected, k.Present, k.CheckedAt, k.Error
		v.Missing, v.Stale, v.Other = nonNil(k.Missing), nonNil(k.Stale), nonNil(k.Other)
	}
	return v
}

func printRoutes(w io.Writer, st api.Status) {
	v := routesOf(st)
	if st.Kernel == nil {
		fmt.Fprintf(w, "%s: no kernel comparison yet (is probing disabled with --probe-port 0?)\n", st.Node)
	} else {
		fmt.Fprintf(w, "%s: kernel entries %d expected, %d present, %d missing, %d stale (checked %s)\n",
			v.Node, v.Expected, v.Present, len(v.Missing), len(v.Stale), ago(v.CheckedAt))
	}
	fmt.Fprintf(w, "drift corrected so far: %d changes in %d reconciles, last reconcile %s\n", v.Drift, v.Reconciles, ago(v.LastReconcile))
	if v.Error != "" {
		fmt.Fprintf(w, "error reading the kernel: %s\n", v.Error)
	}
	for _, m := range v.Missing {
		fmt.Fprintf(w, "  missing  %s\n", m)
	}
	for _, s := range v.Stale {
		fmt.Fprintf(w, "  stale    %s\n", s)
	}
	for _, o := range v.Other {
		fmt.Fprintf(w, "  pending  %s\n", o)
	}
}
