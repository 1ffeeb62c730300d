"""eBPF objects the kernel's verifier refuses: the loader's error path and the agent's fallback."""

import os
import shutil
import subprocess

from tests.support import ROOT

REFUSED = """#include "tracepoints.h"
char LICENSE[] SEC("license") = "GPL";
const volatile __u32 top_pids = 0; /* the constant the cpu loader sets */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16);
    __type(key, __u32);
    __type(value, __u64);
} counts SEC(".maps");

SEC("tracepoint/sched/sched_switch")
int sched_switch(struct trace_event_raw_sched_switch *ctx)
{
    __u32 pid = ctx->prev_pid;
    __u64 *count = bpf_map_lookup_elem(&counts, &pid);
    *count += 1; /* no NULL check: the verifier refuses this */
    return 0;
}
"""


def refused_objects(directory):
    """A directory with cpu.bpfel.o and net.bpfel.o that the kernel's verifier refuses."""
    for name in ("cpu", "net"):
        src = os.path.join(directory, "refused.bpf.c")
        with open(src, "w") as f:
            f.write(REFUSED)
        subprocess.run([shutil.which("clang") or "clang", "-target", "bpfel", "-O2", "-g", "-I", os.path.join(ROOT, "bpf"),
                        "-c", src, "-o", os.path.join(directory, "%s.bpfel.o" % name)], check=True)
    return directory
