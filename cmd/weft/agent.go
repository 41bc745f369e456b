package main

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/weftnet/weft/internal/agent"
	"github.com/weftnet/weft/internal/api"
	"github.com/weftnet/weft/internal/cluster"
	"github.com/weftnet/weft/internal/dataplane"
	"github.com/weftnet/weft/internal/health"
	"github.com/weftnet/weft/internal/ipam"
	"github.com/weftnet/weft/internal/timerslack"
)

func agentCmd() *cobra.Command {
	var (
		nodeName, underlay, cidr, socket, stateDir, claimsDir, keyFile, httpAddr string
		peers                                                                    []string
		gossipPort, blockBits, mtu                                               int
		probePort                                                                int
		gossipTimeScale                                                          float64
		resync, grace, slack                                                     time.Duration
		verbose, fastPath                                                        bool
		logLevel                                                                 string
	)
	var kube *kubeFlags // Kubernetes mode (kubernetes.go)
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the weft node agent (one per node)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level %q: %w (use debug, info, warn or error)", logLevel, err)
			}
			if verbose {
				level = slog.LevelDebug
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			if slack > 0 {
				if _, err := timerslack.Set(slack); err != nil {
					log.Warn("running with the kernel's default timer slack", "err", err)
				}
			}
			cfg := agent.Config{
				NodeName: nodeName, GossipPort: gossipPort, Discovery: agent.StaticPeers(peers),
				Socket: socket, HTTPAddr: httpAddr, ProbePort: probePort, StatePath: filepath.Join(stateDir, "ipam.json"),
				BlockBits: blockBits, MTU: mtu, Resync: resync, SyncGrace: grace, Logger: log, Verbose: verbose,
				GossipTimeScale: gossipTimeScale, FastPath: fastPath,
			}
			var err error
			if err := kube.configure(cmd.Context(), &cfg, underlay != "", keyFile != ""); err != nil {
				return err
			}
			if cfg.NodeName == "" {
				if cfg.NodeName, err = os.Hostname(); err != nil {
					return fmt.Errorf("no --node-name and no hostname: %w", err)
				}
			}
			if underlay == "" && cfg.UnderlayIP.IsValid() {
				// --kubernetes: the Node's InternalIP
			} else if underlay == "" {
				if cfg.UnderlayIP, err = dataplane.DefaultUnderlayIP(); err != nil {
					return err
				}
			} else if cfg.UnderlayIP, err = netip.ParseAddr(underlay); err != nil {
				return fmt.Errorf("--underlay-ip %q: %w", underlay, err)
			}
			if cfg.ClusterCIDR, err = netip.ParsePrefix(cidr); err != nil {
				return fmt.Errorf("--cluster-cidr %q: %w", cidr, err)
			}
			if claimsDir == "" {
				claimsDir = filepath.Join(stateDir, "claims")
			}
			if cfg.Claims == nil { // --kubernetes: Leases
				cfg.Claims = ipam.FileStore{Dir: claimsDir}
			}
			if keyFile != "" {
				if cfg.GossipKey, err = cluster.LoadKey(keyFile); err != nil {
					return err
				}
			}
			return agent.Run(cmd.Context(), cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&nodeName, "node-name", "", "this node's name (default: the hostname)")
	f.StringVar(&underlay, "underlay-ip", "", "this node's IPv4 address on the node network (default: the source of the default route)")
	f.StringSliceVar(&peers, "peers", nil, "peers to join, ip or ip:port, comma-separated")
	f.IntVar(&gossipPort, "gossip-port", cluster.DefaultPort, "gossip port (TCP and UDP)")
	f.StringVar(&keyFile, "gossip-key-file", "", "file with the cluster's gossip key (hex, 16/24/32 bytes); peers without it cannot join")
	f.StringVar(&socket, "socket", api.DefaultSocket, "unix socket of the local API (root only)")
	f.StringVar(&httpAddr, "http-addr", agent.DefaultHTTPAddr, "address of the health endpoints /healthz and /readyz; \"\" disables")
	f.IntVar(&probePort, "probe-port", health.DefaultPort, "UDP port of the peer health probes (underlay and overlay) and their echo responder; 0 disables probing")
	f.StringVar(&stateDir, "state-dir", "/var/lib/weft", "where the node keeps its IPAM leases")
	f.StringVar(&claimsDir, "claims-dir", "", "block claim directory shared by every node (default: <state-dir>/claims; the lab shares one)")
	f.StringVar(&cidr, "cluster-cidr", "10.32.0.0/12", "the pod address range of the whole cluster")
	f.IntVar(&blockBits, "block-size", 26, "prefix length of the address blocks nodes claim")
	f.IntVar(&mtu, "mtu", 0, "pod and overlay MTU (default: underlay MTU minus 50 bytes of VXLAN overhead)")
	f.Float64Var(&gossipTimeScale, "gossip-time-scale", 1, "benchmarks only: stretch every gossip timer by this factor")
	_ = f.MarkHidden("gossip-time-scale")
	f.DurationVar(&resync, "resync", 5*time.Second, "how often the kernel state is reconciled even without changes")
	f.DurationVar(&grace, "sync-grace", 30*time.Second, "how long to wait for a peer before removing kernel entries of unknown nodes")
	f.BoolVar(&fastPath, "fast-path", true, "hand pod-to-pod packets straight to the other pod's veth or the VXLAN device with BPF, past the bridge, routing and netfilter (falls back to the normal path where the kernel cannot; Service and host-port traffic always takes the normal path)")
	f.DurationVar(&slack, "timer-slack", timerslack.Default, "how late the kernel may fire the agent's timers, so that an idle agent wakes the CPU less (0: the kernel's default, 50µs)")
	f.BoolVar(&verbose, "verbose", false, "debug logging (same as --log-level debug)")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")
	kube = addKubernetesFlags(f)
	return cmd
}
