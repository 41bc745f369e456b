package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/weftnet/weft/internal/lab"
)

func labCmd() *cobra.Command {
	var name, dir string
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "A weft cluster of simulated nodes (network namespaces) on this machine (root)",
	}
	cmd.PersistentFlags().StringVar(&name, "name", lab.DefaultName, "lab name: prefixes every namespace it makes")
	cmd.PersistentFlags().StringVar(&dir, "dir", "", "lab state directory (default /run/<name>)")
	load := func() (*lab.Lab, error) { return lab.Load(name, dir) }

	var nodes, pods int
	var agentArgs []string
	up := &cobra.Command{
		Use:   "up",
		Short: "Build the lab: an underlay, N nodes each running weft agent, M pods per node",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := lab.Up(cmd.Context(), lab.Options{
				Name: name, Dir: dir, Nodes: nodes, PodsPerNode: pods, AgentArgs: agentArgs, Out: cmd.ErrOrStderr(),
			})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "%-8s %-16s %-8s %s\n", "NODE", "UNDERLAY", "POD", "ADDRESS")
			for _, n := range l.Nodes() {
				fmt.Fprintf(out, "%-8s %-16s\n", n.Name, n.Underlay)
				for _, p := range l.Pods() {
					if p.Node == n.Name {
						fmt.Fprintf(out, "%-8s %-16s %-8s %s\n", "", "", p.Name, p.Address)
					}
				}
			}
			return nil
		},
	}
	up.Flags().IntVar(&nodes, "nodes", 3, "number of nodes")
	up.Flags().IntVar(&pods, "pods-per-node", 2, "pods created on each node")
	up.Flags().StringSliceVar(&agentArgs, "agent-arg", nil, "extra argument for every agent (repeatable)")

	down := &cobra.Command{
		Use:   "down",
		Short: "Remove every namespace, link, process and file of the lab",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return lab.Teardown(cmd.Context(), name, dir, cmd.ErrOrStderr())
		},
	}

	check := &cobra.Command{
		Use:   "check",
		Short: "Ping (ICMP and UDP) every pod from every other pod and from every node; exit 1 on any failure",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := load()
			if err != nil {
				return err
			}
			m, err := l.Check(cmd.Context())
			if err != nil {
				return err
			}
			fmt.Fprint(cmd.OutOrStdout(), m.String())
			if f := m.Failures(); len(f) > 0 {
				return fmt.Errorf("%d pairs unreachable", len(f))
			}
			return nil
		},
	}

	var asJSON bool
	status := &cobra.Command{
		Use:   "status",
		Short: "Each node: its agent, address blocks and peers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := load()
			if err != nil {
				return err
			}
			st, err := l.Status(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), st)
			}
			for _, s := range st {
				fmt.Fprintln(cmd.OutOrStdout(), s.String())
			}
			return nil
		},
	}
	status.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	pod := &cobra.Command{Use: "pod", Short: "Add or delete a lab pod"}
	var hostPorts []string
	podAdd := &cobra.Command{
		Use:   "add NODE NAME",
		Short: "Create pod NAME on NODE through weft-cni",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var ports []lab.HostPort
			for _, s := range hostPorts {
				h, err := lab.ParseHostPort(s)
				if err != nil {
					return err
				}
				ports = append(ports, h)
			}
			l, err := load()
			if err != nil {
				return err
			}
			p, err := l.AddPod(cmd.Context(), args[0], args[1], ports...)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s/%s %s\n", p.Node, p.Name, p.Address)
			return nil
		},
	}
	podAdd.Flags().StringArrayVar(&hostPorts, "host-port", nil, "forward HOST:POD[/udp] from the node's address to the pod (Kubernetes' hostPort); repeatable")
	pod.AddCommand(podAdd, &cobra.Command{
		Use:   "del NODE NAME",
		Short: "Delete pod NAME on NODE through weft-cni",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := load()
			if err != nil {
				return err
			}
			return l.DelPod(cmd.Context(), args[0], args[1])
		},
	})
	cmd.AddCommand(up, down, check, status, pod)
	return cmd
}
