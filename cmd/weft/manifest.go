package main

import (
	"github.com/spf13/cobra"

	"github.com/weftnet/weft/internal/manifest"
)

func manifestCmd() *cobra.Command {
	o := manifest.Defaults()
	cmd := &cobra.Command{
		Use:   "manifest",
		Short: "Print the Kubernetes manifest that installs weft (kubectl apply -f -)",
		Long: "Print the Kubernetes manifest that installs weft: a ServiceAccount, RBAC and the DaemonSet\n" +
			"that runs the agent on every node. With no options it is deploy/weft.yaml.\n\n" +
			"  weft manifest --cidr 10.40.0.0/16 | kubectl apply -f -",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := manifest.Render(o)
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(b)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.ClusterCIDR, "cidr", o.ClusterCIDR, "the pod address range of the whole cluster (must not overlap the node network or the service range)")
	f.IntVar(&o.BlockSize, "block-size", o.BlockSize, "prefix length of the address blocks nodes claim")
	f.IntVar(&o.MTU, "mtu", o.MTU, "pod and overlay MTU (0: each node's underlay MTU minus 50)")
	f.StringVar(&o.Image, "image", o.Image, "the weft image")
	f.StringVar(&o.LogLevel, "log-level", o.LogLevel, "agent log level: debug, info, warn or error")
	return cmd
}
