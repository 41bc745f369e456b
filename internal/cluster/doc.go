// Package cluster is weft's membership and state exchange: every agent publishes its node
// record (name, underlay address, VTEP MAC, tunnel address, pod blocks, version) and holds
// every other node's, so the whole cluster's setup is on every node.
//
// Membership and failure detection are hashicorp/memberlist (SWIM gossip). Records ride on
// memberlist's delegate hooks: a changed record is broadcast (and re-broadcast by whoever
// learns it, so it spreads epidemically), and the periodic push/pull state exchange carries
// every record (DEFLATE-compressed JSON; memberlist's own LZW is off), so a node that
// missed a broadcast converges anyway. memberlist's packets travel on weft's transport
// (transport.go), which does not allocate 64 KB per packet. Each record carries a
// sequence number that its owner raises on every change, starting from the wall clock at
// agent start, so a restarted agent's record always supersedes its previous one; the higher
// sequence wins a merge. A record counts only while memberlist reports its node alive:
// when a node is declared dead or leaves, its record stops being live and every agent drops
// the node's routes. With the LAN settings used here (probe every second, suspicion
// multiplier 4) that happens within DeadWithin(N) = 7 + 4 x max(1, log10(N)) seconds for N
// nodes, for 99 % of deaths: 11 s up to 10 nodes, 13.8 s at 50, 15 s at 100, 19 s at 1,000
// (BENCHMARKS.md item 3 measures it).
//
// With a cluster key, every gossip packet is encrypted and authenticated (AES-GCM); a peer
// without the key can neither join nor inject a record.
package cluster
