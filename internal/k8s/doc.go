// Package k8s is weft's Kubernetes mode (`weft agent --kubernetes`): the agent's peers,
// block claims, gossip key and node condition come from the API server, while everything
// on the packet path stays on the node.
//
//   - Discovery (nodes.go): a Node informer; every Node's InternalIP is a gossip peer. A
//     deleted Node is dropped from the desired state at once (Nodes.Allowed is the agent's
//     PeerFilter) even if its gossip still says alive, and its blocks are reclaimed.
//   - Block claims (claims.go): one Lease per block, see below.
//   - Gossip key (secret.go): Secret kube-system/weft-gossip-key, created by the first agent.
//   - Node condition (condition.go): NetworkUnavailable=False (reason WeftIsUp) once the
//     node's dataplane is reconciled.
//
// # Block claims as Leases
//
// A block of the cluster CIDR belongs to the node that holds its claim object: a
// coordination.k8s.io/v1 Lease in kube-system whose name is derived from the block alone
// (10.32.0.64/26 -> "weft-block-10-32-0-64-26"), labelled weft.dev/block=true, with the
// block in the annotation weft.dev/block and the owner's node name in spec.holderIdentity.
// Leases are used as plain objects: they are never renewed and their duration means
// nothing; no CRD has to be installed and established first.
//
//   - Claim is a Create. The API server (etcd) creates a name at most once, so when two
//     nodes race for a block exactly one Create succeeds and the other gets AlreadyExists;
//     the loser reads the Lease, sees another holder and moves on (ipam.ErrClaimed).
//     Claiming a block the node already holds is a no-op, which is how a restarted agent
//     confirms its blocks.
//   - Release deletes the Lease only if this node holds it, with a precondition on the UID
//     and resourceVersion it read: a Lease that changed hands in between is never deleted.
//   - List lists the labelled Leases.
//   - A deleted Node's claims are deleted (with the same precondition) by every agent that
//     sees the deletion; deleting twice is harmless. Claims whose holder has no Node are
//     reclaimed the same way once they are a minute old, which covers deletions that
//     happened while no agent watched.
//
// Nothing on the pod path waits for the API server while the node has a free address: the
// IPAM keeps a spare block (ipam.Config.SpareBlocks), the informer caches keep the last
// known Nodes, gossip keeps peer state current, and client-go reconnects by itself.
package k8s
