/* Interface traffic, TCP retransmits and state changes, and packet drops by reason, from
 * network tracepoints. One map update per event; per-CPU maps throughout.
 *
 * Interfaces are keyed by the name the tracepoint records (IFNAMSIZ bytes): it needs no kernel
 * struct layout, so the program does not depend on headers matching the running kernel.
 */
#include "telemetry.h"

/* bcc declares skb:kfree_skb's context from tracefs, where `reason` has this enum's type; the
 * values come from the running kernel's format file (read by the loader), not from headers. */
enum skb_drop_reason { SKB_DROP_REASON_PLACEHOLDER_ = 0 };

BPF_PERCPU_HASH(dev_stats, struct dev_key, struct dev_val, MAX_DEVICES);
BPF_PERCPU_ARRAY(tcp_events, u64, TCP_EVENTS);
BPF_PERCPU_ARRAY(tcp_state_in, u64, TCP_STATES);
BPF_PERCPU_ARRAY(drop_reason, u64, DROP_REASONS);

static __always_inline struct dev_val *dev_entry(struct dev_key *key)
{
    struct dev_val zero = {};
    return dev_stats.lookup_or_try_init(key, &zero);
}

TRACEPOINT_PROBE(net, netif_receive_skb)
{
    struct dev_key key = {};
    TP_DATA_LOC_READ_STR(key.name, name, sizeof(key.name));
    struct dev_val *val = dev_entry(&key);
    if (val) {
        val->rx_bytes += args->len; /* after the link-layer header was pulled */
        val->rx_packets++;
    }
    return 0;
}

TRACEPOINT_PROBE(net, net_dev_xmit)
{
    if (args->rc != 0) /* not sent (busy, dropped by the driver): a retry comes back here */
        return 0;
    struct dev_key key = {};
    TP_DATA_LOC_READ_STR(key.name, name, sizeof(key.name));
    struct dev_val *val = dev_entry(&key);
    if (val) {
        val->tx_bytes += args->len;
        val->tx_packets++;
    }
    return 0;
}

static __always_inline void bump(u32 index)
{
    u64 *count = tcp_events.lookup(&index);
    if (count)
        (*count)++;
}

TRACEPOINT_PROBE(tcp, tcp_retransmit_skb)
{
#if HAVE_RETRANS_ERR
    if (args->err != 0) { /* not sent (e.g. -EBUSY: the original still queued) */
        bump(TCP_RETRANS_FAILED);
        return 0;
    }
#endif
    bump(TCP_RETRANSMITS);
    return 0;
}

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != 6 /* IPPROTO_TCP */)
        return 0;
    int old = args->oldstate, new = args->newstate;
    u32 state = new;
    if (state < TCP_STATES) {
        u64 *count = tcp_state_in.lookup(&state);
        if (count)
            (*count)++;
    }
    if (new == 1 /* ESTABLISHED */) {
        if (old == 2 /* SYN_SENT */)
            bump(TCP_OPEN_ACTIVE);
        else if (old == 3 /* SYN_RECV */)
            bump(TCP_OPEN_PASSIVE);
    } else if (new == 7 /* CLOSE */) {
        /* ESTABLISHED, FIN_WAIT1/2, TIME_WAIT, CLOSE_WAIT, LAST_ACK, CLOSING: a connection ends */
        if (old == 1 || (old >= 4 && old <= 6) || old == 8 || old == 9 || old == 11)
            bump(TCP_CLOSED);
    }
    return 0;
}

TRACEPOINT_PROBE(skb, kfree_skb)
{
#if HAVE_DROP_REASON
    u32 reason = args->reason;
    if (reason >= DROP_REASONS)
        reason = DROP_REASONS - 1;
#else
    u32 reason = 0;
#endif
    u64 *count = drop_reason.lookup(&reason);
    if (count)
        (*count)++;
    return 0;
}
