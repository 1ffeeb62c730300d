"""A compiled eBPF object (`clang -target bpf -g`), read without libbpf: ELF, BTF and .BTF.ext.

    obj = BpfObject(data)     # bytes of bpf/cpu.bpfel.o (or .bpfeb.o: both byte orders are read)
    obj.programs              # [Program(name, section, insns, map_refs, core_relos)]
    obj.maps                  # {name: MapDef(type, key_size, value_size, max_entries, flags, key_type, value_type)}
    obj.rodata, obj.rodata_vars   # the .rodata bytes and {variable: (offset, size)}
    obj.btf.layout(type_id)   # a map value's members, to read it by name (bpf_syscall.Layout)

Pure parsing, no system calls: what the kernel needs is produced by bpf_loader.py (maps created,
references and CO-RE relocations patched in with bpf_core.py). Only what our programs use is
accepted; anything else (sub-program calls, .data/.bss, relocations of another kind) raises
BpfObjectError naming it, so a program that would need more than this loader does fails at once.
"""

import struct

EM_BPF = 247
SHT_SYMTAB, SHT_REL = 2, 9
STT_SECTION, STT_FUNC = 3, 2
R_BPF_64_64 = 1
BPF_LD_IMM64 = 0x18
BPF_CALL, BPF_JMP = 0x80, 0x05

# BTF kinds
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)
MODIFIERS = (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)
BTF_INT_SIGNED = 1


class BpfObjectError(ValueError):
    pass


class Program:
    """One function of a `tracepoint/<category>/<event>` section.

    insns: bytearray of 8-byte instructions (object byte order), patched in place by the loader.
    map_refs: [(instruction index, map name)] and [(index, ".rodata", byte offset)] for ld_imm64.
    core_relos: [(instruction index, local type id, access string, kind)] from .BTF.ext.
    """

    def __init__(self, name, section, insns, map_refs, core_relos):
        self.name = name
        self.section = section
        self.tracepoint = section.split("/", 1)[1]  # "sched/sched_switch"
        self.insns = insns
        self.map_refs = map_refs
        self.core_relos = core_relos


class MapDef:
    def __init__(self, name, map_type, key_type, value_type, key_size, value_size, max_entries, flags):
        self.name = name
        self.type = map_type
        self.key_type = key_type
        self.value_type = value_type
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self.flags = flags


class Btf:
    """The types and strings of a .BTF section. Types are kept as (kind, name, size_or_type, extra)."""

    def __init__(self, data, order):
        magic, version, _flags, hdr_len = struct.unpack_from(order + "HBBI", data, 0)
        if magic != 0xEB9F or version != 1:
            raise BpfObjectError("not a BTF section (magic %#x, version %d)" % (magic, version))
        type_off, type_len, str_off, str_len = struct.unpack_from(order + "4I", data, 8)
        self.order = order
        self.strings = bytes(data[hdr_len + str_off : hdr_len + str_off + str_len])
        self.types = [(0, "", 0, None)]  # id 0 is void
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        while pos < end:
            name_off, info, size = struct.unpack_from(order + "3I", data, pos)
            pos += 12
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            extra = None
            if kind == INT:
                (extra,) = struct.unpack_from(order + "I", data, pos)
                pos += 4
            elif kind == ARRAY:
                extra = struct.unpack_from(order + "3I", data, pos)  # element type, index type, count
                pos += 12
            elif kind in (STRUCT, UNION):
                extra = []
                for _ in range(vlen):
                    m_name, m_type, m_off = struct.unpack_from(order + "3I", data, pos)
                    if info >> 31:  # kind_flag: bitfield size in the top 8 bits
                        m_off &= 0xFFFFFF
                    extra.append((self.string(m_name), m_type, m_off))
                    pos += 12
            elif kind == ENUM:
                extra = [struct.unpack_from(order + "Ii", data, pos + 8 * i) for i in range(vlen)]
                pos += 8 * vlen
            elif kind == ENUM64:
                pos += 12 * vlen
            elif kind == FUNC_PROTO:
                pos += 8 * vlen
            elif kind == VAR:
                pos += 4
            elif kind == DATASEC:
                pos += 12 * vlen
            elif kind == DECL_TAG:
                pos += 4
            elif kind not in (PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG):
                raise BpfObjectError("BTF kind %d is not supported" % kind)
            self.types.append((kind, self.string(name_off), size, extra))

    def string(self, offset):
        end = self.strings.index(b"\0", offset)
        return self.strings[offset:end].decode()

    def resolve(self, type_id):
        """The id after typedefs and qualifiers."""
        while self.types[type_id][0] in MODIFIERS:
            type_id = self.types[type_id][2]
        return type_id

    def kind(self, type_id):
        return self.types[self.resolve(type_id)][0]

    def name(self, type_id):
        return self.types[self.resolve(type_id)][1]

    def size(self, type_id):
        type_id = self.resolve(type_id)
        kind, _, size, extra = self.types[type_id]
        if kind == ARRAY:
            return self.size(extra[0]) * extra[2]
        if kind == PTR:
            return 8
        return size

    def signed(self, type_id):
        kind, _, _, extra = self.types[self.resolve(type_id)]
        return kind == INT and bool((extra >> 24) & BTF_INT_SIGNED)

    def members(self, type_id):
        """[(name, type id, bit offset)] of a struct or union."""
        kind, name, _, extra = self.types[self.resolve(type_id)]
        if kind not in (STRUCT, UNION):
            raise BpfObjectError("BTF type %r is not a struct" % name)
        return extra

    def array(self, type_id):
        """(element type id, count) of an array type."""
        return self.types[self.resolve(type_id)][3][0::2]

    def var_type(self, name):
        for kind, var_name, type_id, _ in self.types:
            if kind == VAR and var_name == name:
                return type_id
        raise BpfObjectError("no BTF variable %r" % name)


class BpfObject:
    def __init__(self, data):
        if data[:4] != b"\x7fELF" or data[4] != 2:
            raise BpfObjectError("not a 64-bit ELF file")
        self.order = order = "<" if data[5] == 1 else ">"
        self.byteorder = "little" if order == "<" else "big"
        machine, = struct.unpack_from(order + "H", data, 18)
        if machine != EM_BPF:
            raise BpfObjectError("ELF machine %d is not BPF" % machine)
        shoff, = struct.unpack_from(order + "Q", data, 40)
        shentsize, shnum, shstrndx = struct.unpack_from(order + "3H", data, 58)
        headers = [struct.unpack_from(order + "IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
        names = headers[shstrndx]
        self._data = data
        self.sections = []  # (name, type, offset, size, link, info)
        for name, kind, _flags, _addr, offset, size, link, info, _align, _entsize in headers:
            self.sections.append((_cstr(data, names[4] + name), kind, offset, size, link, info))
        self.symbols = self._symbols()
        self.btf = Btf(self._section(".BTF"), order)
        self.license = self._section("license").split(b"\0", 1)[0].decode()
        self.rodata = bytes(self._section(".rodata", b""))
        self.rodata_vars = dict((s[0], (s[1], s[2])) for s in self.symbols if s[3] == ".rodata" and s[4] != STT_SECTION)
        self.maps = self._maps()
        self.programs = self._programs(self._core_relos())
        self._data = None

    def _index(self, name):
        for i, section in enumerate(self.sections):
            if section[0] == name:
                return i
        return None

    def _section(self, name, default=None):
        i = self._index(name)
        if i is None:
            if default is not None:
                return default
            raise BpfObjectError("no %s section" % name)
        _, _, offset, size, _, _ = self.sections[i]
        return self._data[offset : offset + size]

    def _symbols(self):
        """[(name, value, size, section name, type)]"""
        out = []
        for _, kind, offset, size, link, _ in self.sections:
            if kind != SHT_SYMTAB:
                continue
            strtab = self.sections[link][2]
            for pos in range(offset, offset + size, 24):
                name, info, _other, shndx, value, sym_size = struct.unpack_from(self.order + "IBBHQQ", self._data, pos)
                section = self.sections[shndx][0] if 0 < shndx < len(self.sections) else ""
                out.append((_cstr(self._data, strtab + name), value, sym_size, section, info & 0xF))
        return out

    def _maps(self):
        """Map definitions of the .maps section, from BTF (libbpf's `__uint`/`__type` convention)."""
        maps = {}
        for name, _value, _size, section, kind in self.symbols:
            if section != ".maps" or kind == STT_SECTION:
                continue
            fields = {}
            for member, type_id, _ in self.btf.members(self.btf.var_type(name)):
                target = self.btf.types[self.btf.resolve(type_id)][2]  # a pointer: what it points to
                if member in ("key", "value"):
                    fields[member] = target
                else:  # __uint(name, N) is a pointer to an array of N ints
                    fields[member] = self.btf.array(target)[1]
            if "key" not in fields or "value" not in fields:
                raise BpfObjectError("map %s: needs __type(key, ...) and __type(value, ...)" % name)
            maps[name] = MapDef(name, fields.get("type", 0), fields["key"], fields["value"], self.btf.size(fields["key"]),
                                self.btf.size(fields["value"]), fields.get("max_entries", 0), fields.get("map_flags", 0))
        return maps

    def _core_relos(self):
        """{section name: [(byte offset in the section, type id, access string, kind)]} from .BTF.ext."""
        i = self._index(".BTF.ext")
        if i is None:
            return {}
        data = self._section(".BTF.ext")
        magic, _version, _flags, hdr_len = struct.unpack_from(self.order + "HBBI", data, 0)
        if magic != 0xEB9F:
            raise BpfObjectError("bad .BTF.ext magic %#x" % magic)
        if hdr_len < 32:
            return {}
        relo_off, relo_len = struct.unpack_from(self.order + "II", data, 24)
        pos = hdr_len + relo_off
        end = pos + relo_len
        rec_size, = struct.unpack_from(self.order + "I", data, pos)
        pos += 4
        out = {}
        while pos < end:
            sec_off, count = struct.unpack_from(self.order + "II", data, pos)
            pos += 8
            records = out.setdefault(self.btf.string(sec_off), [])
            for _ in range(count):
                insn_off, type_id, access_off, kind = struct.unpack_from(self.order + "4I", data, pos)
                records.append((insn_off, type_id, self.btf.string(access_off), kind))
                pos += rec_size
        return out

    def _programs(self, core):
        programs = []
        rels = {}
        for _, kind, offset, size, _link, info in self.sections:
            if kind == SHT_REL:
                rels[self.sections[info][0]] = [struct.unpack_from(self.order + "QQ", self._data, p)
                                                for p in range(offset, offset + size, 16)]
        for name, value, size, section, kind in self.symbols:
            if kind != STT_FUNC:
                continue
            if not section.startswith("tracepoint/") or section.count("/") != 2:
                raise BpfObjectError("function %s in section %r: only tracepoint/<category>/<event> programs "
                                     "are supported (helpers must be __always_inline)" % (name, section))
            insns = bytearray(self._section(section)[value : value + size])
            map_refs = []
            for r_offset, r_info in rels.get(section, ()):
                if not value <= r_offset < value + size:
                    continue
                index = (r_offset - value) // 8
                sym_name, sym_value, _, sym_section, sym_kind = self.symbols[r_info >> 32]
                if r_info & 0xFFFFFFFF != R_BPF_64_64 or insns[index * 8] != BPF_LD_IMM64:
                    raise BpfObjectError("%s: relocation against %s is not a map reference (a call to a "
                                         "sub-program? helpers must be __always_inline)" % (name, sym_name or sym_section))
                if sym_section == ".maps":
                    map_refs.append((index, sym_name, 0))
                elif sym_section == ".rodata":
                    addend, = struct.unpack_from(self.order + "i", insns, index * 8 + 4)
                    map_refs.append((index, ".rodata", sym_value + addend))
                else:
                    raise BpfObjectError("%s: refers to section %s; only maps and .rodata constants are supported"
                                         % (name, sym_section))
            relos = [((off - value) // 8, type_id, access, kind) for off, type_id, access, kind in core.get(section, ())
                     if value <= off < value + size]
            programs.append(Program(name, section, insns, map_refs, relos))
        if not programs:
            raise BpfObjectError("no tracepoint programs")
        return programs


def _cstr(data, offset):
    end = data.index(b"\0", offset)
    return bytes(data[offset:end]).decode()
