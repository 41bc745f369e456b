package main

import (
	"context"
	"errors"
	"os"

	"github.com/spf13/pflag"

	"github.com/weftnet/weft/internal/agent"
	"github.com/weftnet/weft/internal/k8s"
)

// kubeFlags are the agent's Kubernetes-mode flags.
type kubeFlags struct {
	enabled    bool
	kubeconfig string
	namespace  string
	spare      int
	flags      *pflag.FlagSet
}

func addKubernetesFlags(f *pflag.FlagSet) *kubeFlags {
	k := &kubeFlags{flags: f}
	f.BoolVar(&k.enabled, "kubernetes", false, "Kubernetes mode: node name from NODE_NAME, underlay from the Node's InternalIP, peers from the Node objects, block claims as Leases, gossip key from a Secret")
	f.StringVar(&k.kubeconfig, "kubeconfig", "", "kubeconfig for --kubernetes (default: the pod's service account)")
	f.StringVar(&k.namespace, "namespace", k8s.DefaultNamespace, "namespace of weft's block Leases and gossip-key Secret (--kubernetes)")
	f.IntVar(&k.spare, "spare-blocks", 0, "empty address blocks kept claimed as headroom for when the claim store is unreachable (default 1 with --kubernetes)")
	return k
}

// configure fills cfg for Kubernetes mode; flags given explicitly (--node-name,
// --underlay-ip, --gossip-key-file, --spare-blocks) win. The informers it starts live as
// long as ctx.
func (k *kubeFlags) configure(ctx context.Context, cfg *agent.Config, underlayGiven, keyGiven bool) error {
	cfg.SpareBlocks = k.spare
	if !k.enabled {
		return nil
	}
	if !k.flags.Changed("spare-blocks") {
		cfg.SpareBlocks = 1
	}
	log := cfg.Logger
	if cfg.NodeName == "" {
		cfg.NodeName = os.Getenv("NODE_NAME")
	}
	if cfg.NodeName == "" {
		return errors.New("--kubernetes: no node name: set NODE_NAME (the DaemonSet takes it from spec.nodeName) or pass --node-name")
	}
	client, err := k8s.NewClient(k.kubeconfig)
	if err != nil {
		return err
	}
	if !underlayGiven {
		err := k8s.Retry(ctx, log, "reading this node's InternalIP", func(ctx context.Context) error {
			ip, err := k8s.NodeInternalIP(ctx, client, cfg.NodeName)
			cfg.UnderlayIP = ip
			return err
		})
		if err != nil {
			return err
		}
	}
	if !keyGiven {
		err := k8s.Retry(ctx, log, "reading the gossip key", func(ctx context.Context) error {
			key, err := k8s.GossipKey(ctx, client, k.namespace, k8s.GossipKeySecret)
			cfg.GossipKey = key
			return err
		})
		if err != nil {
			return err
		}
	}
	store := &k8s.LeaseStore{Client: client, Namespace: k.namespace}
	rec := &k8s.Reclaimer{Store: store, Self: cfg.NodeName, Log: log}
	nodes, err := k8s.NewNodes(client, cfg.NodeName, log, func(name string) { rec.NodeDeleted(ctx, name) })
	if err != nil {
		return err
	}
	nodes.Start(ctx)
	go rec.Run(ctx, nodes)
	cfg.Claims = store
	cfg.Discovery = nodes
	cfg.PeerFilter = nodes.Allowed
	node := cfg.NodeName
	cfg.OnReady = func() {
		_ = k8s.Retry(ctx, log, "clearing the Node's NetworkUnavailable condition", func(ctx context.Context) error {
			return k8s.SetNetworkAvailable(ctx, client, node)
		})
	}
	log.Info("Kubernetes mode", "node", cfg.NodeName, "underlay", cfg.UnderlayIP, "namespace", k.namespace, "spare-blocks", cfg.SpareBlocks)
	return nil
}
