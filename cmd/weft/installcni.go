package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/weftnet/weft/internal/api"
	"github.com/weftnet/weft/internal/manifest"
)

func installCNICmd() *cobra.Command {
	var in manifest.Install
	cmd := &cobra.Command{
		Use:   "install-cni",
		Short: "Install weft-cni and its conflist on this node (the DaemonSet's init container runs it)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if in.Plugin == "" {
				self, err := os.Executable()
				if err != nil {
					return fmt.Errorf("finding weft-cni next to this binary: %w (pass --plugin)", err)
				}
				in.Plugin = filepath.Join(filepath.Dir(self), "weft-cni")
			}
			if err := in.Run(); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "installed %s and %s\n",
				filepath.Join(in.BinDir, "weft-cni"), filepath.Join(in.ConfDir, manifest.ConflistName))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&in.BinDir, "cni-bin-dir", "/opt/cni/bin", "the container runtime's CNI binary directory")
	f.StringVar(&in.ConfDir, "cni-conf-dir", "/etc/cni/net.d", "the container runtime's CNI config directory")
	f.StringVar(&in.Socket, "socket", api.DefaultSocket, "the agent's local API socket, written into the conflist")
	f.StringVar(&in.Plugin, "plugin", "", "the weft-cni binary to install (default: weft-cni next to this binary)")
	f.StringVar(&in.CNIVersion, "cni-version", manifest.CNIVersion, "the conflist's cniVersion (weft-cni speaks 0.3.1 to 1.1.0; containerd before 2.0 takes up to 1.0.0)")
	return cmd
}
