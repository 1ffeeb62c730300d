/* The tracepoint records the programs read, and the few kernel ABI constants they need.
 *
 * Instead of a full vmlinux.h: each record names only the fields a program reads. The structs are
 * marked preserve_access_index, so every access compiles to a CO-RE relocation ("field `len` of
 * trace_event_raw_net_dev_template") and the loader puts in the offset and size the running
 * kernel's tracefs format file gives (edge_agent/collectors/ebpf/core.py). The struct names are the
 * kernel's own, so libbpf can resolve the same relocations against the kernel's BTF instead (the
 * cross-check in tests/kernel/test_ebpf_kernel.py).
 *
 * Rule: programs read tracepoint record fields only, never kernel structs, so every offset can be
 * resolved from tracefs on a device without BTF, headers or a compiler.
 */
#ifndef EDGE_TRACEPOINTS_H
#define EDGE_TRACEPOINTS_H

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef short __s16;
typedef int __s32;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;

/* uapi linux/bpf.h values (stable ABI) */
enum {
    BPF_MAP_TYPE_HASH = 1,
    BPF_MAP_TYPE_ARRAY = 2,
    BPF_MAP_TYPE_PERCPU_HASH = 5,
    BPF_MAP_TYPE_PERCPU_ARRAY = 6,
    BPF_MAP_TYPE_LRU_HASH = 9,
};
enum { BPF_ANY = 0, BPF_NOEXIST = 1 };

#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#define TRACE_RECORD __attribute__((preserve_access_index))

/* sched:sched_switch */
struct trace_event_raw_sched_switch {
    char prev_comm[16];
    int prev_pid;
    long prev_state; /* 8 bytes on 64-bit kernels, 4 on 32-bit ones: see below */
    int next_pid;
} TRACE_RECORD;

/* the same record as a 32-bit kernel lays out prev_state (a flavor: libbpf and our loader ignore
 * the ___suffix when matching; the program picks the one whose size matches, see cpu.bpf.c) */
struct trace_event_raw_sched_switch___long32 {
    int prev_state;
} TRACE_RECORD;

/* sched:sched_wakeup, sched:sched_wakeup_new */
struct trace_event_raw_sched_wakeup_template {
    int pid;
} TRACE_RECORD;

/* irq:softirq_entry, irq:softirq_exit */
struct trace_event_raw_softirq {
    unsigned int vec;
} TRACE_RECORD;

/* net:netif_receive_skb (and the other receive events of the class) */
struct trace_event_raw_net_dev_template {
    unsigned int len;
    __u32 __data_loc_name; /* tracefs "__data_loc char[] name": (length << 16) | offset in the record */
} TRACE_RECORD;

/* net:net_dev_xmit */
struct trace_event_raw_net_dev_xmit {
    unsigned int len;
    int rc;
    __u32 __data_loc_name;
} TRACE_RECORD;

/* tcp:tcp_retransmit_skb; `err` since Linux 6.x (absent before: bpf_core_field_exists) */
struct trace_event_raw_tcp_retransmit_skb {
    int err;
} TRACE_RECORD;

/* sock:inet_sock_set_state */
struct trace_event_raw_inet_sock_set_state {
    int oldstate;
    int newstate;
    __u16 protocol;
} TRACE_RECORD;

/* skb:kfree_skb; `reason` since 5.17. The enum's values differ between kernel versions: the
 * loader names them from the running kernel's format file, never from this header. */
enum skb_drop_reason { SKB_DROP_REASON_NOT_SPECIFIED___local = 2 };
struct trace_event_raw_kfree_skb {
    enum skb_drop_reason reason;
} TRACE_RECORD;

/* A __data_loc string field: bytes of the record at the offset its low 16 bits give. */
static __always_inline void read_data_loc_str(void *record, __u32 loc, char *dst, __u32 size)
{
    bpf_probe_read_kernel_str(dst, size, (char *)record + (loc & 0xffff));
}

#endif
