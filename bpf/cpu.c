/* CPU time, context switches, run-queue latency and softirq time from scheduler tracepoints.
 *
 * Tracepoints only (no kprobes), per-CPU maps for every counter, so a hot path is one lookup
 * and a few adds on memory no other CPU writes. Read by edge_agent/collectors/bpf_loader.py.
 */
#include "telemetry.h"

BPF_PERCPU_ARRAY(cpu_acct, struct cpu_acct, 1);
BPF_PERCPU_ARRAY(runq_hist, u64, RUNQ_SLOTS + 1); /* slots, then the sum in us */
BPF_TABLE("lru_hash", u32, u64, runq_start, RUNQ_MAX_TASKS);
BPF_PERCPU_ARRAY(softirq_start, u64, 1);
BPF_PERCPU_ARRAY(softirq_ns, u64, SOFTIRQ_SLOTS);
#if TOP_PIDS > 0
BPF_HASH(pid_time, u32, struct pid_time, TOP_PIDS);
#endif

static __always_inline void runq_enqueued(u32 pid, u64 now)
{
    if (pid)
        runq_start.update(&pid, &now);
}

TRACEPOINT_PROBE(sched, sched_wakeup)
{
    runq_enqueued(args->pid, bpf_ktime_get_ns());
    return 0;
}

TRACEPOINT_PROBE(sched, sched_wakeup_new)
{
    runq_enqueued(args->pid, bpf_ktime_get_ns());
    return 0;
}

TRACEPOINT_PROBE(sched, sched_switch)
{
    u32 zero = 0;
    u64 now = bpf_ktime_get_ns();
    u32 prev = args->prev_pid, next = args->next_pid;
    struct cpu_acct *acct = cpu_acct.lookup(&zero);
    if (!acct)
        return 0;
    if (acct->last_ns) {
        u64 delta = now - acct->last_ns;
        if (prev == 0) {
            acct->idle_ns += delta;
        } else {
            acct->busy_ns += delta;
#if TOP_PIDS > 0
            struct pid_time *pt = pid_time.lookup(&prev);
            if (pt) {
                pt->ns += delta;
            } else {
                struct pid_time init = {.ns = delta};
                bpf_probe_read_kernel(&init.comm, sizeof(init.comm), args->prev_comm);
                pid_time.update(&prev, &init);
            }
#endif
        }
    }
    acct->last_ns = now;
    acct->idle_now = next == 0;
    acct->switches++;

    /* a task switched out while runnable (preempted) waits in the run queue from now */
    long state = args->prev_state;
    if (state == 0 || (state & TASK_REPORT_MAX))
        runq_enqueued(prev, now);

    if (next == 0)
        return 0;
    u64 *start = runq_start.lookup(&next);
    if (!start)
        return 0;
    u64 us = (now - *start) / 1000;
    runq_start.delete(&next);
    u32 slot = bpf_log2l(us);
    if (slot >= RUNQ_SLOTS)
        slot = RUNQ_SLOTS - 1;
    u64 *count = runq_hist.lookup(&slot);
    if (count)
        (*count)++;
    u32 sum_index = RUNQ_SUM_US;
    u64 *sum = runq_hist.lookup(&sum_index);
    if (sum)
        *sum += us;
    return 0;
}

TRACEPOINT_PROBE(irq, softirq_entry)
{
    u32 zero = 0;
    u64 *start = softirq_start.lookup(&zero);
    if (start)
        *start = bpf_ktime_get_ns();
    return 0;
}

TRACEPOINT_PROBE(irq, softirq_exit)
{
    u32 zero = 0;
    u32 vec = args->vec;
    u64 *start = softirq_start.lookup(&zero);
    if (!start || !*start || vec >= SOFTIRQ_SLOTS)
        return 0;
    u64 *total = softirq_ns.lookup(&vec);
    if (total)
        *total += bpf_ktime_get_ns() - *start;
    *start = 0;
    return 0;
}
