package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/weftnet/weft/internal/api"
)

func statusCmd() *cobra.Command {
	var (
		socket string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show this node's weft status: node, peers, address blocks",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := api.NewClient(socket, 5*time.Second).Status(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), st)
			}
			printStatus(cmd.OutOrStdout(), st)
			return nil
		},
	}
	cmd.Flags().StringVar(&socket, "socket", api.DefaultSocket, "the agent's local API socket")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON (the stable machine format)")
	return cmd
}

// printJSON writes v as indented JSON: the stable machine format of every view.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

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
		if p.State == "alive" || p.State == "suspect" {
			alive++
		}
	}
	fmt.Fprintf(w, "node %s (%s) %s, version %s\n", st.Node, st.Underlay, ready, st.Version)
	fmt.Fprintf(w, "  cluster %s, gateway %s, mtu %d\n", st.ClusterCIDR, st.Gateway, st.MTU)
	fmt.Fprintf(w, "  addresses %d/%d in %d block(s); peers %d up, %d down\n", used, capacity, len(st.Blocks), alive, len(st.Peers)-alive)
	fmt.Fprintf(w, "  reconciled %d times, %d drift corrections\n", st.Reconciles, st.Drift)
	if len(st.Peers) > 0 {
		tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  PEER\tUNDERLAY\tSTATE\tBLOCKS")
		for _, p := range st.Peers {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\n", p.Name, p.Underlay, p.State, len(p.Blocks))
		}
		tw.Flush()
	}
}
