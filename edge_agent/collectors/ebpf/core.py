"""CO-RE field relocations resolved against the running kernel's tracefs `format` files.

A program compiled with `preserve_access_index` records, for every read of a tracepoint record
field, which field it meant ("member 2 of trace_event_raw_net_dev_xmit": .BTF.ext). libbpf answers
from the kernel's BTF; on a device without BTF the same answer is in tracefs, where each event's
`format` file lists its fields with offset, size and signedness:

    field:unsigned int len;	offset:16;	size:4;	signed:0;
    field:__data_loc char[] name;	offset:24;	size:4;	signed:0;

`relocate(program, btf, fields)` patches the instructions the way libbpf's relo_core.c does:
offsets into loads, stores and adds; field size, existence and signedness into immediates; a load
whose size differs is narrowed or widened for unsigned integers only. A field the kernel lacks
gives 0 to `bpf_core_field_exists()`; any other use of it is poisoned into a call of the invalid
helper 0xbad2310, which the verifier rejects only if it can be reached (a branch on
`bpf_core_field_exists` makes it dead code). Only tracepoint records (struct
trace_event_raw_*) are resolved: a program reading a kernel struct is refused.
"""

import struct

FIELD_BYTE_OFFSET, FIELD_BYTE_SIZE, FIELD_EXISTS, FIELD_SIGNED, FIELD_LSHIFT_U64, FIELD_RSHIFT_U64 = range(6)
KIND_NAMES = ["byte_off", "byte_sz", "field_exists", "signed", "lshift_u64", "rshift_u64", "local_type_id",
              "target_type_id", "type_exists", "type_size", "enumval_exists", "enumval_value", "type_matches"]
POISON = 0xBAD2310  # libbpf's "bad relo" helper id: the verifier says "invalid func unknown#195896080"

# instruction classes and sizes (BPF_CLASS, BPF_SIZE)
LD, LDX, ST, STX, ALU, JMP, ALU64 = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x07
SIZE_BITS = {4: 0x00, 2: 0x08, 1: 0x10, 8: 0x18}
BITS_SIZE = dict((v, k) for k, v in SIZE_BITS.items())
BPF_K = 0x00
CALL = JMP | 0x80


class CoreError(ValueError):
    pass


class Field:
    """One field of a tracefs format: offset and size in bytes, signedness, C type, array length."""

    __slots__ = ("name", "offset", "size", "signed", "ctype", "count")

    def __init__(self, name, offset, size, signed, ctype, count):
        self.name, self.offset, self.size, self.signed, self.ctype, self.count = name, offset, size, signed, ctype, count

    def kind(self):
        """"ptr", "enum", "array", "composite" or "int", as far as a C type string tells."""
        if self.count is not None:
            return "array"
        if "*" in self.ctype:
            return "ptr"
        if self.ctype.startswith("enum "):
            return "enum"
        if self.ctype.startswith(("struct ", "union ")):
            return "composite"
        return "int"


def parse_format(text):
    """tracefs `format` text -> {field name: Field}. A `__data_loc char[] name` field is listed as
    `__data_loc_name` (the kernel's own BTF name for the u32 that locates the string)."""
    fields = {}
    for line in text.split("\n"):
        line = line.strip()
        if not line.startswith("field:"):
            continue
        parts = dict(p.strip().split(":", 1) for p in line.split(";") if ":" in p)
        decl = parts["field"].strip()
        ctype, _, name = decl.rpartition(" ")
        count = None
        if name.endswith("]"):
            name, _, dim = name[:-1].partition("[")
            count = int(dim) if dim.isdigit() else None
            if count is None and ("char" in ctype or "u8" in ctype):
                count = int(parts["size"])
            if count is None:
                ctype += " *"  # an array of unknown length: treated as an opaque pointer-like field
        if ctype.startswith("__data_loc") or ctype.startswith("__rel_loc"):
            name = ctype.split()[0] + "_" + name
            ctype, count = "u32", None
        fields[name] = Field(name, int(parts["offset"]), int(parts["size"]), parts.get("signed", "0").strip() == "1",
                             ctype, count)
    return fields


def parse_symbolic(format_text, field):
    """The `{code, "NAME"}` table that a tracefs format's print fmt gives for `REC->field`."""
    start = format_text.find("__print_symbolic(REC->%s," % field)
    if start < 0:
        return {}
    table = {}
    pos = start
    while True:
        open_ = format_text.find("{", pos)
        if open_ < 0:
            break
        close = format_text.find("}", open_)
        code, _, name = format_text[open_ + 1 : close].partition(",")
        try:
            table[int(code.strip())] = name.strip().strip('"')
        except ValueError:
            break
        pos = close + 1
        rest = format_text[pos:].lstrip()
        if not rest.startswith(","):  # the table ends with ")"
            break
    return table


def _essential(name):
    return name.split("___", 1)[0]


def _compatible(btf, local_type, field):
    """libbpf's bpf_core_fields_are_compat, on what tracefs tells of the target type."""
    from edge_agent.collectors.ebpf import objects as o

    kind = btf.kind(local_type)
    target = field.kind()
    if kind in (o.STRUCT, o.UNION):
        return target == "composite"
    if kind == o.INT:
        return target == "int"
    if kind in (o.ENUM, o.ENUM64):
        return target == "enum"
    if kind == o.PTR:
        return target == "ptr"
    if kind == o.ARRAY:
        elem = btf.array(local_type)[0]
        return target == "array" and btf.kind(elem) == o.INT and "*" not in field.ctype
    return False


class Resolution:
    """What one relocation means here: the value the compiler put in (`local`) and the one this
    kernel needs (`target`, None when the record lacks the field), the sizes of the field on both
    sides, the local type and the tracefs field."""

    __slots__ = ("local", "target", "local_size", "target_size", "local_type", "field", "what")

    def __init__(self, local, target, local_size, target_size, local_type, field, what):
        self.local, self.target, self.local_size, self.target_size = local, target, local_size, target_size
        self.local_type, self.field, self.what = local_type, field, what


def resolve(btf, type_id, access, kind, fields):
    """One relocation (local type id, access string "0:member[:index]", kind) -> Resolution."""

    record = btf.name(type_id)
    if not record.startswith("trace_event_raw_"):
        raise CoreError("reads %s: only tracepoint records (trace_event_raw_*) can be resolved from tracefs"
                        % (record or "an anonymous type"))
    if kind > FIELD_RSHIFT_U64:
        raise CoreError("relocation kind %s on %s is not supported" % (KIND_NAMES[kind], record))
    spec = [int(a) for a in access.split(":")]
    if spec[0] != 0 or len(spec) < 2 or len(spec) > 3:
        raise CoreError("access %s of %s is not a plain field of the record" % (access, record))
    name, member_type, bit_offset = btf.members(type_id)[spec[1]]
    local_offset, local_type = bit_offset // 8, member_type
    what = "%s.%s" % (_essential(record), name)
    field = fields.get(name)
    if field is not None and not _compatible(btf, member_type, field):
        field = None
    target_offset = target_size = None
    if field is not None:
        target_offset, target_size = field.offset, field.size
    if len(spec) == 3:  # an element of an array member
        elem = btf.array(member_type)[0]
        local_type = elem
        local_offset += spec[2] * btf.size(elem)
        what += "[%d]" % spec[2]
        if field is not None:
            if field.count is None or spec[2] >= field.count:
                field = target_offset = None
            else:
                target_size = field.size // field.count
                target_offset += spec[2] * target_size
    local_size = btf.size(local_type)
    if kind == FIELD_EXISTS:
        return Resolution(1, int(field is not None), local_size, target_size, local_type, field, what)
    if field is None:
        return Resolution(None, None, local_size, None, local_type, None, what)
    if kind == FIELD_BYTE_OFFSET:
        local, target = local_offset, target_offset
    elif kind == FIELD_BYTE_SIZE:
        local, target = local_size, target_size
    elif kind == FIELD_SIGNED:
        local, target = int(btf.signed(local_type)), int(field.signed)
    else:  # the shifts that extract a (non-bitfield) integer from a u64
        local, target = 64 - 8 * local_size, 64 - 8 * target_size
    return Resolution(local, target, local_size, target_size, local_type, field, what)


def relocate(program, btf, fields, order="<"):
    """Patch `program.insns` for its CO-RE relocations against `fields` (parse_format of its
    tracepoint). Returns the descriptions of poisoned relocations (fields this kernel lacks), to
    explain a verifier refusal; raises CoreError when an instruction does not match its record."""
    from edge_agent.collectors.ebpf import objects as o

    insns = program.insns
    poisoned = []
    for index, type_id, access, kind in program.core_relos:
        r = resolve(btf, type_id, access, kind, fields)
        code = insns[index * 8]
        cls = code & 0x07
        poison = r.target is None
        if not poison and cls in (LDX, ST, STX) and kind == FIELD_BYTE_OFFSET and r.local_size != r.target_size:
            # libbpf changes the access size for pointers and unsigned integers only
            both_ptr = btf.kind(r.local_type) == o.PTR and r.field.kind() == "ptr"
            unsigned = btf.kind(r.local_type) == o.INT and not btf.signed(r.local_type) and not r.field.signed
            poison = not (both_ptr or unsigned)
        if poison:
            _poison(insns, index, order)
            if code == o.BPF_LD_IMM64:
                _poison(insns, index + 1, order)
            poisoned.append("%s (%s)" % (r.what, KIND_NAMES[kind]))
            continue
        off, imm = struct.unpack_from(order + "hi", insns, index * 8 + 2)
        mismatch = "%s: instruction %d does not hold the %s of %s" % (program.name, index, KIND_NAMES[kind], r.what)
        if cls in (ALU, ALU64):
            if code & 0x08 != BPF_K or imm != r.local:
                raise CoreError(mismatch)
            struct.pack_into(order + "i", insns, index * 8 + 4, r.target)
        elif cls in (LDX, ST, STX):
            if off != r.local:
                raise CoreError(mismatch)
            if r.target > 0x7FFF:
                raise CoreError("%s: offset %d of %s does not fit an instruction" % (program.name, r.target, r.what))
            struct.pack_into(order + "h", insns, index * 8 + 2, r.target)
            if kind == FIELD_BYTE_OFFSET and r.target_size != r.local_size:
                if BITS_SIZE.get(code & 0x18) != r.local_size or r.target_size not in SIZE_BITS:
                    raise CoreError("%s: instruction %d reads %s with an unexpected size" % (program.name, index, r.what))
                insns[index * 8] = (code & ~0x18) | SIZE_BITS[r.target_size]
        elif code == o.BPF_LD_IMM64:
            if imm != r.local:
                raise CoreError(mismatch)
            struct.pack_into(order + "I", insns, index * 8 + 4, r.target & 0xFFFFFFFF)
            struct.pack_into(order + "I", insns, index * 8 + 12, (r.target >> 32) & 0xFFFFFFFF)
        else:
            raise CoreError("%s: instruction %d (code %#x) cannot take a relocation" % (program.name, index, code))
    return poisoned


def _poison(insns, index, order):
    """`call 0xbad2310`: harmless in dead code, a clear verifier error if reached."""
    struct.pack_into(order + "BBhi", insns, index * 8, CALL, 0, 0, POISON)
