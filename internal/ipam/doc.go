// Package ipam hands out pod addresses.
//
// # How addresses are owned
//
// The cluster CIDR (default 10.32.0.0/12) is cut into fixed-size blocks (default /26). A
// block belongs to at most one node, and ownership goes through a ClaimStore whose Claim
// is atomic: when two nodes race for a block, exactly one wins and the other moves on to
// the next block. The first block a node owns is its home block; its network address is
// the node's tunnel address and its first usable address the pod gateway, and the node
// never gives it back. Inside its own blocks a node allocates with no coordination at all,
// because nobody else writes there; it claims a new block when all of its blocks are full
// and gives back any non-home block that becomes empty.
// With Config.SpareBlocks a node also keeps that many empty blocks claimed as headroom,
// topped up in the background, so pods start while the claim store is unreachable
// (spare.go).
//
// Leases (container ID + interface -> address, with the pod's hostPort mappings) and owned
// blocks are kept in one JSON file on the node, replaced atomically (write a temporary file, rename) on every change, so a
// restarted agent knows every address a live pod holds and never hands it out again. The
// file is not fsynced: a killed agent loses nothing (the page cache holds the file), and
// only a crash of the whole machine can lose a write — which also ends every pod whose
// lease it held, because their network namespaces live in that kernel. For the same
// reason the file records the boot it was written in, and leases of an earlier boot are
// dropped at load (their addresses would otherwise stay taken until the runtime's GC);
// the blocks are kept and confirmed with the claim store. Asking twice for
// the same attachment returns the same address; freeing an unknown attachment is not an
// error. Addresses are handed out round-robin, so a freed address is not reused at once.
//
// Each pod gets its address with the block's prefix length; the network and broadcast
// addresses of a block are never handed out.
package ipam
