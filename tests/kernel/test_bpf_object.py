"""The loader's pure parts, no root: the compiled objects (both byte orders), CO-RE relocations
resolved from tracefs format files of three kernels (this x86_64 6.18, a 32-bit ARM layout, an
x86_64 kernel older than the `reason` and `err` fields), map layouts, verifier-log summaries, and
the system call and ioctl numbers against each architecture's own headers (cross compilers)."""

import os
import shutil
import struct
import subprocess

import pytest

from edge_agent.collectors.ebpf import check as bpf_check
from edge_agent.collectors.ebpf import core as bpf_core
from edge_agent.collectors.ebpf import syscall as bpf_syscall
from edge_agent.collectors.ebpf.loader import verifier_summary
from edge_agent.collectors.ebpf.objects import BPF_LD_IMM64, BpfObject, BpfObjectError
from tests.support import ROOT

BPF = os.path.join(ROOT, "bpf")
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "tracefs")


def _obj(program, endian="el"):
    path = os.path.join(BPF, "%s.bpf%s.o" % (program, endian))
    if not os.path.exists(path):
        pytest.fail("%s is not built: bin/setup (python -m bpf.build) builds it" % path)
    with open(path, "rb") as f:
        return BpfObject(f.read())


def _fields(kernel, tracepoint):
    with open(os.path.join(FIXTURES, kernel, tracepoint, "format")) as f:
        return bpf_core.parse_format(f.read())


def _insn(program, index, order):
    code, regs, off, imm = struct.unpack_from(order + "BBhi", program.insns, index * 8)
    return code, off, imm


def _relocated(program_name, kernel, endian="el"):
    obj = _obj(program_name, endian)
    out = {}
    for p in obj.programs:
        relos = list(p.core_relos)
        poisoned = bpf_core.relocate(p, obj.btf, _fields(kernel, p.tracepoint), obj.order)
        out[p.name] = (p, obj, relos, poisoned)
    return out


@pytest.mark.parametrize("program", ["cpu", "net"])
def test_objects_hold_what_the_loader_needs(program):
    le, be = _obj(program, "el"), _obj(program, "eb")
    assert (le.order, be.order) == ("<", ">")
    assert le.license == "GPL"
    assert sorted(p.tracepoint for p in le.programs) == sorted(bpf_check.TRACEPOINTS[program])
    for a, b in zip(le.programs, be.programs, strict=True):  # the same program in both byte orders
        assert (a.name, a.map_refs, a.core_relos, len(a.insns)) == (b.name, b.map_refs, b.core_relos, len(b.insns))
    assert [(m.name, m.type, m.key_size, m.value_size, m.max_entries) for m in le.maps.values()] == \
        [(m.name, m.type, m.key_size, m.value_size, m.max_entries) for m in be.maps.values()]
    every_relo = [r for p in le.programs for r in p.core_relos]
    assert every_relo and all(le.btf.name(t).startswith("trace_event_raw_") for _, t, _, _ in every_relo)


def test_map_definitions_and_rodata_from_btf():
    cpu, net = _obj("cpu"), _obj("net")
    assert cpu.maps["cpu_stats"].type == bpf_syscall.BPF_MAP_TYPE_PERCPU_ARRAY
    assert cpu.maps["cpu_stats"].value_size == 8 * (6 + 26 + 1 + 16)
    assert cpu.maps["runq_start"].max_entries == 10240 and cpu.maps["runq_start"].type == 9  # LRU hash
    assert cpu.rodata_vars == {"top_pids": (0, 4)} and cpu.rodata == bytes(4)
    assert net.maps["dev_stats"].key_size == 16 and net.maps["dev_stats"].type == bpf_syscall.BPF_MAP_TYPE_PERCPU_HASH
    stats = bpf_syscall.layout(net.btf, net.maps["net_stats"].value_type)
    raw = struct.pack("<5Q16Q160Q", 1, 2, 3, 4, 5, *range(16), *range(160))
    value = stats.decode(raw)
    assert (value["retransmits"], value["closed"], value["tcp_state_in"][15], value["drops"][159]) == (1, 5, 15, 159)
    key = bpf_syscall.layout(net.btf, net.maps["dev_stats"].key_type).decode(b"eth0" + bytes(12))
    assert key["name"] == b"eth0" + bytes(12)


@pytest.mark.parametrize("endian", ["el", "eb"])
def test_relocations_take_this_kernels_offsets(endian):
    """Every read of a record field gets the offset tracefs gives (x86_64, 6.18)."""
    for program_name in ("cpu", "net"):
        for name, (p, obj, relos, poisoned) in _relocated(program_name, "x86_64-6.18", endian).items():
            fields = _fields("x86_64-6.18", p.tracepoint)
            for index, type_id, access, kind in relos:
                member = obj.btf.members(type_id)[int(access.split(":")[1])][0]
                code, off, imm = _insn(p, index, obj.order)
                if kind == bpf_core.FIELD_BYTE_OFFSET and obj.btf.name(type_id).endswith("___long32"):
                    assert imm == bpf_core.POISON  # the 32-bit flavor of prev_state: dead code here
                elif kind == bpf_core.FIELD_BYTE_OFFSET:
                    assert (off if code & 7 in (bpf_core.LDX, bpf_core.ST, bpf_core.STX) else imm) == fields[member].offset, \
                        (name, member)
                elif kind == bpf_core.FIELD_BYTE_SIZE:
                    assert imm == fields[member].size
                elif kind == bpf_core.FIELD_EXISTS:
                    assert imm == 1
            assert poisoned == (["trace_event_raw_sched_switch.prev_state (byte_off)"] if name == "sched_switch" else [])


def test_net_dev_xmit_offsets_in_detail():
    p, obj, relos, _ = _relocated("net", "x86_64-6.18")["net_dev_xmit"]
    got = dict((obj.btf.members(t)[int(a.split(":")[1])][0], _insn(p, i, obj.order)) for i, t, a, k in relos)
    assert got["len"][1] == 16 and got["rc"][1] == 20 and got["__data_loc_name"][1] == 24


def test_32_bit_arm_layout():
    """On a 32-bit kernel `long prev_state` is 4 bytes and pointers shrink: the 64-bit read of
    prev_state is poisoned, the ___long32 flavor reads offset 32, and field_size says 4."""
    cpu = _relocated("cpu", "arm32")
    p, obj, relos, poisoned = cpu["sched_switch"]
    by_member = {}
    for index, type_id, access, kind in relos:
        member = obj.btf.members(type_id)[int(access.split(":")[1])][0]
        by_member.setdefault((obj.btf.name(type_id), member, kind), _insn(p, index, obj.order))
    assert by_member[("trace_event_raw_sched_switch", "prev_state", bpf_core.FIELD_BYTE_SIZE)][2] == 4
    assert by_member[("trace_event_raw_sched_switch", "prev_state", bpf_core.FIELD_BYTE_OFFSET)][2] == bpf_core.POISON
    code, off, _ = by_member[("trace_event_raw_sched_switch___long32", "prev_state", bpf_core.FIELD_BYTE_OFFSET)]
    assert off == 32 and code & 0x18 == bpf_core.SIZE_BITS[4]
    assert by_member[("trace_event_raw_sched_switch", "next_pid", bpf_core.FIELD_BYTE_OFFSET)][1] == 52
    assert poisoned == ["trace_event_raw_sched_switch.prev_state (byte_off)"]
    net = _relocated("net", "arm32")
    p, obj, relos, poisoned = net["net_dev_xmit"]
    assert sorted(_insn(p, i, obj.order)[1] for i, _, _, k in relos if k == 0) == [12, 16, 20]
    assert poisoned == []
    p, obj, relos, poisoned = net["kfree_skb"]
    assert [_insn(p, i, obj.order)[1] for i, _, _, k in relos if k == 0] == [24] and poisoned == []


def test_fields_an_older_kernel_lacks_are_handled_as_libbpf_does():
    """kfree_skb without `reason`, tcp_retransmit_skb without `err`: field_exists becomes 0 and
    the guarded reads are poisoned (the verifier drops them as dead code)."""
    net = _relocated("net", "x86_64-5.10")
    for name, member in (("kfree_skb", "reason"), ("tcp_retransmit_skb", "err")):
        p, obj, relos, poisoned = net[name]
        exists = [_insn(p, i, obj.order)[2] for i, _, _, k in relos if k == bpf_core.FIELD_EXISTS]
        reads = [_insn(p, i, obj.order) for i, _, _, k in relos if k == bpf_core.FIELD_BYTE_OFFSET]
        assert exists == [0]
        assert reads and all(code == bpf_core.CALL and imm == bpf_core.POISON for code, _, imm in reads)
        assert poisoned == ["trace_event_raw_%s.%s (byte_off)" % (name, member)]


def test_parse_format_names_data_loc_fields_as_the_kernel_btf_does():
    fields = _fields("x86_64-6.18", "net/net_dev_xmit")
    assert fields["__data_loc_name"].offset == 24 and fields["__data_loc_name"].kind() == "int"
    assert fields["skbaddr"].kind() == "ptr" and fields["rc"].signed
    comm = _fields("x86_64-6.18", "sched/sched_switch")["prev_comm"]
    assert (comm.kind(), comm.count, comm.size) == ("array", 16, 16)
    assert _fields("x86_64-6.18", "skb/kfree_skb")["reason"].kind() == "enum"


def test_parse_symbolic_reads_the_softirq_names():
    with open(os.path.join(FIXTURES, "x86_64-6.18", "irq", "softirq_entry", "format")) as f:
        names = bpf_core.parse_symbolic(f.read(), "vec")
    assert names[0] == "HI" and names[3] == "NET_RX" and len(names) == 10


def test_verifier_summary_names_the_reason_and_the_instruction():
    log = ("0: R1=ctx() R10=fp0\n7: (85) call bpf_map_lookup_elem#1\nR1 type=scalar expected=map_ptr\n"
           "processed 7 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0\n")
    assert verifier_summary(log) == "R1 type=scalar expected=map_ptr (at 7: (85) call bpf_map_lookup_elem#1)"
    assert verifier_summary("") == "no verifier log"


def _clang():
    clang = shutil.which("clang")
    if clang is None:
        pytest.fail("clang is missing: bin/setup installs it")
    return clang


def _compile(tmp_path, source):
    src = tmp_path / "t.bpf.c"
    src.write_text(source)
    out = tmp_path / "t.o"
    subprocess.run([_clang(), "-target", "bpfel", "-O2", "-g", "-I", BPF, "-c", str(src), "-o", str(out)], check=True)
    return BpfObject(out.read_bytes())


def test_a_program_reading_a_kernel_struct_is_refused(tmp_path):
    obj = _compile(tmp_path, """#include "tracepoints.h"
struct task_struct { int pid; } TRACE_RECORD;
char LICENSE[] SEC("license") = "GPL";
SEC("tracepoint/sched/sched_switch")
int f(struct task_struct *t) { return t->pid; }
""")
    with pytest.raises(bpf_core.CoreError, match="only tracepoint records"):
        bpf_core.relocate(obj.programs[0], obj.btf, _fields("x86_64-6.18", "sched/sched_switch"))


def test_a_sub_program_call_is_refused(tmp_path):
    with pytest.raises(BpfObjectError, match="__always_inline"):
        _compile(tmp_path, """#include "tracepoints.h"
char LICENSE[] SEC("license") = "GPL";
__attribute__((noinline)) int g(int x) { return x * 3; }
SEC("tracepoint/sched/sched_switch")
int f(struct trace_event_raw_sched_switch *ctx) { return g(ctx->prev_pid); }
""")


def test_map_references_are_ld_imm64():
    obj = _obj("cpu")
    for p in obj.programs:
        for index, _name, _offset in p.map_refs:
            assert p.insns[index * 8] == BPF_LD_IMM64


# ---------------------------------------------------------------- numbers per architecture

NUMBERS_C = """#include <asm/unistd.h>
#include <linux/perf_event.h>
unsigned int numbers[] = {__NR_bpf, __NR_perf_event_open, PERF_EVENT_IOC_ENABLE, PERF_EVENT_IOC_SET_BPF};
"""


def _numbers(tmp_path, compiler, *flags, include="asm/unistd.h"):
    src = tmp_path / "n.c"
    src.write_text(NUMBERS_C.replace("asm/unistd.h", include))
    asm = subprocess.run([compiler, "-S", "-o", "-", *flags, str(src)], check=True, capture_output=True, text=True).stdout
    values = []
    for line in asm.split("\n"):
        parts = line.split()
        if len(parts) == 2 and parts[0] in (".long", ".word", ".4byte"):
            values.append(int(parts[1], 0) & 0xFFFFFFFF)
    return tuple(values)


@pytest.mark.parametrize("abi,compiler,machine,flags,include", [
    ("x86_64", "gcc", "x86_64", (), "asm/unistd.h"),
    ("i386", "gcc", "i686", (), "asm/unistd_32.h"),
    ("arm64", "gcc", "aarch64", (), "asm-generic/unistd.h"),  # arm64 and riscv64 use the generic table
    ("arm", "arm-linux-gnueabihf-gcc", "armv7l", (), "asm/unistd.h"),
    ("mips-o32", "mips-linux-gnu-gcc", "mips", (), "asm/unistd.h"),
])
def test_syscall_and_ioctl_numbers_match_the_headers(tmp_path, abi, compiler, machine, flags, include):
    if shutil.which(compiler) is None:
        pytest.fail("%s is missing: bin/setup installs it" % compiler)
    got = _numbers(tmp_path, compiler, *flags, include=include)
    assert got[:2] == bpf_syscall.SYSCALLS[abi]
    assert bpf_syscall.abi(machine, 32 if abi in ("i386", "arm", "mips-o32") else 64) == abi
    assert got[2:] == bpf_syscall.ioctl_numbers(machine)


def test_cpu_ranges():
    assert bpf_syscall.cpu_ranges("0-3,5\n") == {0, 1, 2, 3, 5}
    assert bpf_syscall.cpu_ranges("0") == {0}


def test_kernels_before_5_11_get_their_memlock_limit_lifted():
    """Old kernels charge maps to RLIMIT_MEMLOCK: the loader lifts it (in a child: limits are per process)."""
    code = """
import resource
from edge_agent.collectors.ebpf import check as bpf_check
from edge_agent.collectors.ebpf import loader as bpf_loader
resource.setrlimit(resource.RLIMIT_MEMLOCK, (65536, resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]))
bpf_check.kernel_version = lambda release=None: (6, 1)
bpf_loader._raise_memlock()
print(resource.getrlimit(resource.RLIMIT_MEMLOCK)[0])
bpf_check.kernel_version = lambda release=None: (5, 10)
bpf_loader._raise_memlock()
print(resource.getrlimit(resource.RLIMIT_MEMLOCK)[0])
"""
    import resource
    import sys

    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT).stdout.split()
    assert int(out[0]) == 65536  # 5.11+: memory cgroups account maps, nothing to do
    assert int(out[1]) in (resource.RLIM_INFINITY, resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]) and int(out[1]) != 65536
