/* Map layouts shared by the programs (bpf/cpu.bpf.c, bpf/net.bpf.c) and their reader.
 *
 * The reader does not mirror these structs: it takes every map's key and value layout (member
 * names, offsets, array lengths) from the object's own BTF. What is fixed here is only what shapes
 * a value; run-time options are .rodata constants the loader sets before loading (`const volatile`
 * below), and map sizes (max_entries) are set by the loader too.
 */
#ifndef EDGE_TELEMETRY_H
#define EDGE_TELEMETRY_H

#include "tracepoints.h"

/* ---- cpu.bpf.c ------------------------------------------------------------------------ */

/* run-queue latency histogram: slot = log2(latency in microseconds) as bcc's bpf_log2l:
 * slot 0 holds 0 us, slot s holds [2^(s-1), 2^s) us; the last slot also takes everything above. */
#define RUNQ_SLOTS 26
#define SOFTIRQ_SLOTS 16 /* NR_SOFTIRQS is 10 today; leave room */

/* sched_switch reports a preempted (still runnable) task as TASK_REPORT_MAX (0x100 since 4.14) */
#define TASK_REPORT_MAX 0x100

struct cpu_stats {          /* one per CPU, in a per-CPU array of one entry: one read gets all */
    __u64 busy_ns;          /* time a non-idle task was on this CPU, up to last_ns */
    __u64 idle_ns;          /* time the idle task (pid 0) was on this CPU, up to last_ns */
    __u64 switches;         /* context switches on this CPU */
    __u64 last_ns;          /* bpf_ktime_get_ns() of the last switch; 0 before the first */
    __u64 idle_now;         /* 1 while the idle task runs (for the interval still open) */
    __u64 softirq_start;    /* bpf_ktime_get_ns() at the running softirq's entry; 0 outside one */
    __u64 runq[RUNQ_SLOTS]; /* run-queue waits per log2 slot */
    __u64 runq_sum_us;      /* sum of the waits, microseconds */
    __u64 softirq_ns[SOFTIRQ_SLOTS]; /* time in each softirq vector */
};

struct pid_time {
    __u64 ns;
    char comm[16];
};

/* ---- net.bpf.c ------------------------------------------------------------------------ */

#define DROP_REASONS 160 /* slots for enum skb_drop_reason; larger codes land in the last slot */
#define TCP_STATES 16    /* TCP_ESTABLISHED = 1 ... TCP_NEW_SYN_RECV = 12 */

struct dev_key {
    char name[16]; /* IFNAMSIZ: the name the tracepoint records */
};

struct dev_val {
    __u64 rx_bytes;
    __u64 rx_packets;
    __u64 tx_bytes;
    __u64 tx_packets;
};

struct net_stats {                /* one per CPU, in a per-CPU array of one entry */
    __u64 retransmits;            /* tcp_retransmit_skb that sent (err == 0) */
    __u64 retransmit_failures;    /* attempts the stack refused (err != 0, e.g. -EBUSY) */
    __u64 opened_active;          /* SYN_SENT -> ESTABLISHED */
    __u64 opened_passive;         /* SYN_RECV -> ESTABLISHED */
    __u64 closed;                 /* -> CLOSE from a synchronised state */
    __u64 tcp_state_in[TCP_STATES]; /* entries into each TCP state */
    __u64 drops[DROP_REASONS];    /* kfree_skb by reason */
};

#endif
