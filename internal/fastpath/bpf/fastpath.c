// weft's pod fast path: tc ingress programs that hand pod-to-pod packets straight to the
// destination (a local pod's veth, or the VXLAN device) instead of through the bridge,
// the IP stack and netfilter. Anything they are not sure of goes the normal way (TC_ACT_OK).
// See the package documentation (doc.go) for the whole design.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define ENOENT 2

char __license[] SEC("license") = "Dual MIT/GPL";

// config holds the node's devices; the agent writes its one entry.
struct config {
	__u32 bridge_ifindex;
	__u32 vxlan_ifindex;
	__u8 bridge_mac[6];
	__u8 pad[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config SEC(".maps");

// pods maps a local pod's IPv4 address (network order) to the ifindex of its veth's host end.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, __u32);
} pods SEC(".maps");

// counts: what the programs did with packets, by enum verdict; per CPU, summed by the agent.
enum verdict {
	V_TO_POD,       // redirected to a local pod
	V_TO_TUNNEL,    // redirected to the VXLAN device
	V_OTHER,        // not IPv4 TCP/UDP without options and fragments: normal path
	V_NOT_POD,      // not for a pod this fast path knows: normal path
	V_FIB,          // the route lookup did not resolve the next hop: normal path
	V_TRANSLATED,   // a connection netfilter translates: normal path
	V_VERDICTS,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, V_VERDICTS);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

static __always_inline int count(__u32 v, int ret)
{
	__u64 *c = bpf_map_lookup_elem(&counts, &v);
	if (c)
		*c += 1;
	return ret;
}

// Connection tracking, through the kernel's kfuncs (nf_conntrack_bpf).
struct nf_conn {
	unsigned long status;
} __attribute__((preserve_access_index));

struct bpf_ct_opts {
	__s32 netns_id;
	__s32 error;
	__u8 l4proto;
	__u8 dir;
	__u8 reserved[2];
};

extern struct nf_conn *bpf_skb_ct_lookup(struct __sk_buff *skb, struct bpf_sock_tuple *tuple,
	__u32 tuple__sz, struct bpf_ct_opts *opts, __u32 opts__sz) __ksym;
extern void bpf_ct_release(struct nf_conn *ct) __ksym;

#define IPS_SRC_NAT (1 << 4)
#define IPS_DST_NAT (1 << 5)

// translated reports whether the packet's connection is one that netfilter translates
// (kube-proxy's Service DNAT, a host port, masquerade), or whether that cannot be told:
// such packets must take the normal path, where conntrack translates them.
static __always_inline int translated(struct __sk_buff *skb, struct iphdr *ip, __u16 *ports)
{
	struct bpf_sock_tuple t = {};
	struct bpf_ct_opts o = { .netns_id = -1, .l4proto = ip->protocol };

	t.ipv4.saddr = ip->saddr;
	t.ipv4.daddr = ip->daddr;
	t.ipv4.sport = ports[0];
	t.ipv4.dport = ports[1];
	struct nf_conn *ct = bpf_skb_ct_lookup(skb, &t, sizeof(t.ipv4), &o, sizeof(o));
	if (!ct)
		return o.error != -ENOENT;
	int nat = (ct->status & (IPS_SRC_NAT | IPS_DST_NAT)) != 0;
	bpf_ct_release(ct);
	return nat;
}

// decrement_ttl takes one off a routed packet's TTL and updates the checksum to match.
static __always_inline void decrement_ttl(struct iphdr *ip)
{
	__u32 check = ip->check;
	check += bpf_htons(0x0100);
	ip->check = (__u16)(check + (check >= 0xFFFF));
	ip->ttl--;
}

// rewrite readies a routed packet for its next hop: the MACs from the FIB lookup, TTL one
// less.
static __always_inline void rewrite(struct ethhdr *eth, struct iphdr *ip, struct bpf_fib_lookup *f)
{
	__builtin_memcpy(eth->h_dest, f->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, f->smac, ETH_ALEN);
	decrement_ttl(ip);
}

static __always_inline int same_mac(const __u8 *a, const __u8 *b)
{
	return *(const __u32 *)a == *(const __u32 *)b && *(const __u16 *)(a + 4) == *(const __u16 *)(b + 4);
}

static __always_inline int handle(struct __sk_buff *skb, int from_tunnel)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	__u16 *ports = data + sizeof(*eth) + sizeof(*ip);

	if ((void *)(ports + 2) > end)
		return count(V_OTHER, TC_ACT_OK);
	if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3fff)))
		return count(V_OTHER, TC_ACT_OK);
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return count(V_OTHER, TC_ACT_OK);

	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg || !cfg->bridge_ifindex)
		return count(V_OTHER, TC_ACT_OK);
	__u32 *pod = bpf_map_lookup_elem(&pods, &ip->daddr);

	if (!from_tunnel && !same_mac(eth->h_dest, cfg->bridge_mac)) {
		// Bridged between two pods of one block: no routing, only a local pod.
		if (!pod)
			return count(V_NOT_POD, TC_ACT_OK);
		if (translated(skb, ip, ports))
			return count(V_TRANSLATED, TC_ACT_OK);
		return count(V_TO_POD, bpf_redirect_peer(*pod, 0));
	}
	if (from_tunnel && !pod)
		return count(V_NOT_POD, TC_ACT_OK);
	if (ip->ttl <= 1)
		return count(V_OTHER, TC_ACT_OK);

	struct bpf_fib_lookup f = {
		.family = AF_INET,
		.tos = ip->tos,
		.l4_protocol = ip->protocol,
		.sport = ports[0],
		.dport = ports[1],
		.ipv4_src = ip->saddr,
		.ipv4_dst = ip->daddr,
		.ifindex = from_tunnel ? cfg->vxlan_ifindex : cfg->bridge_ifindex,
	};
	// tot_len 0: the kernel checks the MTU against the packet itself (GSO-aware).
	long rc = bpf_fib_lookup(skb, &f, sizeof(f), 0);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH && f.ifindex == cfg->bridge_ifindex && pod) {
		// The pod's MAC is not known yet (or no longer): the kernel resolves it and sends
		// the packet out of the bridge, still past netfilter, so that no connection
		// tracking entry is made for the first packet of a connection the fast path
		// carries from then on.
		if (translated(skb, ip, ports))
			return count(V_TRANSLATED, TC_ACT_OK);
		struct bpf_redir_neigh nh = { .nh_family = AF_INET, .ipv4_nh = f.ipv4_dst };
		decrement_ttl(ip);
		return count(V_TO_POD, bpf_redirect_neigh(f.ifindex, &nh, sizeof(nh), 0));
	}
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return count(V_FIB, TC_ACT_OK);
	if (f.ifindex == cfg->bridge_ifindex && pod) {
		if (translated(skb, ip, ports))
			return count(V_TRANSLATED, TC_ACT_OK);
		rewrite(eth, ip, &f);
		return count(V_TO_POD, bpf_redirect_peer(*pod, 0));
	}
	if (!from_tunnel && f.ifindex == cfg->vxlan_ifindex) {
		if (translated(skb, ip, ports))
			return count(V_TRANSLATED, TC_ACT_OK);
		rewrite(eth, ip, &f);
		return count(V_TO_TUNNEL, bpf_redirect(f.ifindex, 0));
	}
	return count(V_NOT_POD, TC_ACT_OK);
}

SEC("tc")
int from_pod(struct __sk_buff *skb) { return handle(skb, 0); }

SEC("tc")
int from_tunnel(struct __sk_buff *skb) { return handle(skb, 1); }
