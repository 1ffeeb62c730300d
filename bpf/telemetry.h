/* Shared between the BPF programs (bpf/cpu.c, bpf/net.c) and their readers.
 *
 * Everything a reader has to know about a map's layout is here: the value structs, the array
 * sizes and the slot indexes. Options arrive as compiler defines (-DNAME=value) from the loader;
 * each has a default below so the programs also compile on their own.
 */
#ifndef EDGE_TELEMETRY_H
#define EDGE_TELEMETRY_H

/* ---- cpu.c ---------------------------------------------------------------------------- */

/* run-queue latency histogram: slot = log2(latency in microseconds), as bcc's bpf_log2l:
 * slot 0 holds 0 us, slot s holds [2^(s-1), 2^s) us; the last slot also takes everything above. */
#ifndef RUNQ_SLOTS
#define RUNQ_SLOTS 26
#endif
#ifndef RUNQ_MAX_TASKS /* tasks woken and not yet on a CPU that we remember (LRU) */
#define RUNQ_MAX_TASKS 10240
#endif
#define RUNQ_SUM_US RUNQ_SLOTS /* index of the sum of latencies (us) after the slots */

#ifndef SOFTIRQ_SLOTS /* NR_SOFTIRQS is 10 today; leave room */
#define SOFTIRQ_SLOTS 16
#endif

/* sched_switch reports a preempted (still runnable) task as TASK_REPORT_MAX (0x100 since 4.14) */
#ifndef TASK_REPORT_MAX
#define TASK_REPORT_MAX 0x100
#endif

#ifndef TOP_PIDS /* 0: no per-process accounting; N: remember up to N pids between reads */
#define TOP_PIDS 0
#endif

struct cpu_acct {          /* one per CPU, in a per-CPU array of one entry */
    __u64 busy_ns;         /* time a non-idle task was on this CPU, up to last_ns */
    __u64 idle_ns;         /* time the idle task (pid 0) was on this CPU, up to last_ns */
    __u64 switches;        /* context switches on this CPU */
    __u64 last_ns;         /* bpf_ktime_get_ns() of the last switch; 0 before the first */
    __u64 idle_now;        /* 1 while the idle task runs (for the interval still open) */
};

struct pid_time {
    __u64 ns;
    char comm[16];
};

/* ---- net.c ---------------------------------------------------------------------------- */

#ifndef MAX_DEVICES
#define MAX_DEVICES 256
#endif
#ifndef DROP_REASONS /* slots for enum skb_drop_reason; larger codes land in the last slot */
#define DROP_REASONS 160
#endif
#ifndef HAVE_DROP_REASON /* 1 when skb:kfree_skb has the `reason` field (5.17+) */
#define HAVE_DROP_REASON 1
#endif
#define TCP_STATES 16 /* TCP_ESTABLISHED = 1 ... TCP_NEW_SYN_RECV = 12 */

struct dev_key {
    char name[16]; /* IFNAMSIZ: the name the tracepoint records */
};

struct dev_val {
    __u64 rx_bytes;
    __u64 rx_packets;
    __u64 tx_bytes;
    __u64 tx_packets;
};

/* indexes of the per-CPU array `tcp_events` */
#define TCP_RETRANSMITS 0
#define TCP_OPEN_ACTIVE 1  /* SYN_SENT -> ESTABLISHED */
#define TCP_OPEN_PASSIVE 2 /* SYN_RECV -> ESTABLISHED */
#define TCP_CLOSED 3       /* -> CLOSE from a synchronised state */
#define TCP_RETRANS_FAILED 4 /* retransmit attempts the stack refused (err != 0, 6.x `err` field) */
#define TCP_EVENTS 5

#ifndef HAVE_RETRANS_ERR /* 1 when tcp:tcp_retransmit_skb has the `err` field */
#define HAVE_RETRANS_ERR 0
#endif

#endif
