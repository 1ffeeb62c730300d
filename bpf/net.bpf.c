/* Interface traffic, TCP retransmits and state changes, and packet drops by reason, from
 * network tracepoints. One map update per event; per-CPU maps throughout.
 *
 * Interfaces are keyed by the name the tracepoint records (IFNAMSIZ bytes): the ifindex is only
 * reachable through kernel structs (skb->dev), which the programs never read (tracepoints.h).
 */
#include "telemetry.h"

char LICENSE[] SEC("license") = "GPL"; /* bpf_probe_read_kernel_str is GPL-only */

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, 256); /* the loader's max_devices */
    __type(key, struct dev_key);
    __type(value, struct dev_val);
} dev_stats SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct net_stats);
} net_stats SEC(".maps");

static __always_inline struct net_stats *stats(void)
{
    __u32 zero = 0;
    return bpf_map_lookup_elem(&net_stats, &zero);
}

static __always_inline struct dev_val *dev_entry(void *record, __u32 name_loc)
{
    struct dev_key key = {};
    read_data_loc_str(record, name_loc, key.name, sizeof(key.name));
    struct dev_val *val = bpf_map_lookup_elem(&dev_stats, &key);
    if (val)
        return val;
    struct dev_val zero = {};
    bpf_map_update_elem(&dev_stats, &key, &zero, BPF_NOEXIST); /* fails when full: not counted */
    return bpf_map_lookup_elem(&dev_stats, &key);
}

SEC("tracepoint/net/netif_receive_skb")
int netif_receive_skb(struct trace_event_raw_net_dev_template *ctx)
{
    struct dev_val *val = dev_entry(ctx, ctx->__data_loc_name);
    if (val) {
        val->rx_bytes += ctx->len; /* after the link-layer header was pulled */
        val->rx_packets++;
    }
    return 0;
}

SEC("tracepoint/net/net_dev_xmit")
int net_dev_xmit(struct trace_event_raw_net_dev_xmit *ctx)
{
    if (ctx->rc != 0) /* not sent (busy, dropped by the driver): a retry comes back here */
        return 0;
    struct dev_val *val = dev_entry(ctx, ctx->__data_loc_name);
    if (val) {
        val->tx_bytes += ctx->len; /* with the link-layer header */
        val->tx_packets++;
    }
    return 0;
}

SEC("tracepoint/tcp/tcp_retransmit_skb")
int tcp_retransmit_skb(struct trace_event_raw_tcp_retransmit_skb *ctx)
{
    struct net_stats *s = stats();
    if (!s)
        return 0;
    /* since 6.x the event also fires for attempts the stack refuses (-EBUSY: the original is
     * still queued); before, there is no `err` and every event is a segment sent again */
    if (bpf_core_field_exists(ctx->err) && ctx->err != 0)
        s->retransmit_failures++;
    else
        s->retransmits++;
    return 0;
}

SEC("tracepoint/sock/inet_sock_set_state")
int inet_sock_set_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
    if (ctx->protocol != 6 /* IPPROTO_TCP */)
        return 0;
    struct net_stats *s = stats();
    if (!s)
        return 0;
    int old = ctx->oldstate, new = ctx->newstate;
    if (new >= 0 && new < TCP_STATES)
        s->tcp_state_in[new]++;
    if (new == 1 /* ESTABLISHED */) {
        if (old == 2 /* SYN_SENT */)
            s->opened_active++;
        else if (old == 3 /* SYN_RECV */)
            s->opened_passive++;
    } else if (new == 7 /* CLOSE */) {
        /* ESTABLISHED, FIN_WAIT1/2, TIME_WAIT, CLOSE_WAIT, LAST_ACK, CLOSING: a connection ends */
        if (old == 1 || (old >= 4 && old <= 6) || old == 8 || old == 9 || old == 11)
            s->closed++;
    }
    return 0;
}

SEC("tracepoint/skb/kfree_skb")
int kfree_skb(struct trace_event_raw_kfree_skb *ctx)
{
    struct net_stats *s = stats();
    if (!s)
        return 0;
    __u64 reason = 0; /* before 5.17 there is no reason: every drop lands in slot 0 */
    if (bpf_core_field_exists(ctx->reason))
        reason = ctx->reason;
    if (reason >= DROP_REASONS)
        reason = DROP_REASONS - 1;
    s->drops[reason]++;
    return 0;
}
