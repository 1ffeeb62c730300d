/* CPU time, context switches, run-queue latency and softirq time from scheduler tracepoints.
 *
 * Tracepoints only (no kprobes), per-CPU maps for every counter, so a hot path is one lookup
 * and a few adds on memory no other CPU writes. Loaded by edge_agent/collectors/ebpf/loader.py.
 */
#include "telemetry.h"

char LICENSE[] SEC("license") = "GPL"; /* bpf_probe_read_kernel is GPL-only */

/* options the loader sets before loading (a frozen .rodata: the verifier drops dead branches) */
const volatile __u32 top_pids = 0; /* nonzero: on-CPU time per pid into pid_time */

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct cpu_stats);
} cpu_stats SEC(".maps");

struct { /* tasks woken and not yet on a CPU (shared: wake-up and switch-in happen on different CPUs) */
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 10240); /* the loader's runq_max_tasks */
    __type(key, __u32);
    __type(value, __u64);
} runq_start SEC(".maps");

struct { /* pid -> on-CPU time and comm, drained at each read; sized by the loader (top_pids) */
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct pid_time);
} pid_time SEC(".maps");

static __always_inline struct cpu_stats *stats(void)
{
    __u32 zero = 0;
    return bpf_map_lookup_elem(&cpu_stats, &zero);
}

static __always_inline void runq_enqueued(__u32 pid, __u64 now)
{
    if (pid)
        bpf_map_update_elem(&runq_start, &pid, &now, BPF_ANY);
}

/* log2 of a 64-bit value, as bcc's bpf_log2l (0 for 0; slot s holds [2^(s-1), 2^s)) */
static __always_inline __u32 log2l(__u64 v)
{
    __u32 r = 0, shift;
    if (!v)
        return 0;
    shift = (v > 0xFFFFFFFFULL) << 5; v >>= shift; r |= shift;
    shift = (v > 0xFFFF) << 4; v >>= shift; r |= shift;
    shift = (v > 0xFF) << 3; v >>= shift; r |= shift;
    shift = (v > 0xF) << 2; v >>= shift; r |= shift;
    shift = (v > 0x3) << 1; v >>= shift; r |= shift;
    r |= (v >> 1);
    return r + 1;
}

/* prev_state is a `long`: 8 bytes on a 64-bit kernel, 4 on a 32-bit one. Each read below is a
 * relocation; the one whose size does not match is poisoned by the loader and never runs. */
static __always_inline long prev_state(struct trace_event_raw_sched_switch *ctx)
{
    if (bpf_core_field_size(ctx->prev_state) == 8)
        return ctx->prev_state;
    return ((struct trace_event_raw_sched_switch___long32 *)ctx)->prev_state;
}

SEC("tracepoint/sched/sched_wakeup")
int sched_wakeup(struct trace_event_raw_sched_wakeup_template *ctx)
{
    runq_enqueued(ctx->pid, bpf_ktime_get_ns());
    return 0;
}

SEC("tracepoint/sched/sched_wakeup_new")
int sched_wakeup_new(struct trace_event_raw_sched_wakeup_template *ctx)
{
    runq_enqueued(ctx->pid, bpf_ktime_get_ns());
    return 0;
}

SEC("tracepoint/sched/sched_switch")
int sched_switch(struct trace_event_raw_sched_switch *ctx)
{
    __u64 now = bpf_ktime_get_ns();
    __u32 prev = ctx->prev_pid, next = ctx->next_pid;
    struct cpu_stats *s = stats();
    if (!s)
        return 0;
    if (s->last_ns) {
        __u64 delta = now - s->last_ns;
        if (prev == 0) {
            s->idle_ns += delta;
        } else {
            s->busy_ns += delta;
            if (top_pids) {
                struct pid_time *pt = bpf_map_lookup_elem(&pid_time, &prev);
                if (pt) {
                    pt->ns += delta;
                } else {
                    struct pid_time init = {.ns = delta};
                    bpf_probe_read_kernel(&init.comm, sizeof(init.comm), ctx->prev_comm);
                    bpf_map_update_elem(&pid_time, &prev, &init, BPF_NOEXIST);
                }
            }
        }
    }
    s->last_ns = now;
    s->idle_now = next == 0;
    s->switches++;

    /* a task switched out while runnable (preempted) waits in the run queue from now */
    long state = prev_state(ctx);
    if (state == 0 || (state & TASK_REPORT_MAX))
        runq_enqueued(prev, now);

    if (next == 0)
        return 0;
    __u64 *start = bpf_map_lookup_elem(&runq_start, &next);
    if (!start)
        return 0;
    __u64 us = (now - *start) / 1000;
    bpf_map_delete_elem(&runq_start, &next);
    __u64 slot = log2l(us); /* 64-bit: the bound check and the index are the same register */
    if (slot >= RUNQ_SLOTS)
        slot = RUNQ_SLOTS - 1;
    s->runq[slot]++;
    s->runq_sum_us += us;
    return 0;
}

SEC("tracepoint/irq/softirq_entry")
int softirq_entry(struct trace_event_raw_softirq *ctx)
{
    struct cpu_stats *s = stats();
    if (s)
        s->softirq_start = bpf_ktime_get_ns();
    return 0;
}

SEC("tracepoint/irq/softirq_exit")
int softirq_exit(struct trace_event_raw_softirq *ctx)
{
    __u32 vec = ctx->vec;
    struct cpu_stats *s = stats();
    if (!s || !s->softirq_start)
        return 0;
    if (vec < SOFTIRQ_SLOTS)
        s->softirq_ns[vec] += bpf_ktime_get_ns() - s->softirq_start;
    s->softirq_start = 0;
    return 0;
}
