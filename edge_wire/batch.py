"""Data batches of wire format v1, the encoder: what a device needs at every batch.

docs/wire-format.md is the specification; edge_wire/decode.py is the strict decoder (host-only),
edge_wire/birth.py the birth message's encoder (loaded for a birth and released).

Data batch (`<prefix>/<device>/data`): a msgpack array
    [version, flags, device, boot, seq, dict, t0, body, ext?]
    body = [tick_deltas, columns]           (flags bit 0 clear)
    body = bin(raw-deflate(msgpack(body)))  (flags bit 0 set)
    column = [series_id, mask, v0, d1, d2, ...]
Tick timestamps are milliseconds: t0 + sum(tick_deltas[:i+1]). A column's `mask` has bit i set
when the series has a sample at tick i; 0 means "every tick". The first value is absolute, the
following ones are differences from the previous value (element-wise for histograms), so steady
counters and gauges cost one or two bytes a sample.

Resident on a device: `BatchBuilder` (a batch waiting in RAM is one bytearray), `Chunks` (a
payload in pieces: no allocation holds a whole message), `payload_size`. `deflate` is for CPython
agents with `compress` (MicroPython has no compressor). Imports only `edge_wire` and
`edge_wire.pack`; nothing imports back.
"""

from edge_wire import FLAG_DEFLATE, MAX_TICKS, VERSION
from edge_wire.pack import pack_array_header, pack_into

CHUNK = 512  # bytes a piece of a chunked payload holds (Chunks)
MIN_CHUNK = 64  # ... and the least it goes down to on a fragmented heap


# ---------------------------------------------------------------- agent side: building batches


class Chunks:
    """A byte sink (`append`, `extend`, as pack_into needs) that keeps what it is given as pieces of
    `size` bytes, so no single allocation holds a whole message: on a small, fragmented heap a 4 KB
    birth may find no 4 KB of contiguous room when 512-byte pieces still fit. When not even a piece
    of `size` fits, the next ones are smaller (halved, down to MIN_CHUNK): more pieces, but a message
    that fits in the free memory is not lost to its fragmentation. `pieces()` is the list to hand to
    a transport that writes a payload piece by piece (transport/umqtt.py)."""

    def __init__(self, size=CHUNK):
        self.size = size
        self.parts = []
        self.fill = self.room = 0  # bytes written into the last piece, and its length

    def extend(self, data):
        """Write `data` (bytes; or one byte as an int, which makes this `append`)."""
        one = isinstance(data, int)
        n = 1 if one else len(data)
        done = 0
        while done < n:
            if self.fill == self.room:
                self.grow()
            piece = self.parts[-1]
            if one:
                piece[self.fill] = data
                k = 1
            else:
                k = min(n - done, self.room - self.fill)
                piece[self.fill:self.fill + k] = data if k == n else memoryview(data)[done:done + k]
            self.fill += k
            done += k

    append = extend

    def grow(self):
        """A new last piece of `size` bytes, or of less when the heap has no such block left."""
        while True:
            try:
                self.parts.append(bytearray(self.size))
                break
            except MemoryError:
                if self.size <= MIN_CHUNK:
                    raise
                self.size //= 2
        self.fill = 0
        self.room = self.size

    def pieces(self):
        """The payload as a list of byte pieces; the last one is a view of what was written into it."""
        if self.parts and self.fill < self.room:
            self.parts[-1] = memoryview(self.parts[-1])[:self.fill]
            self.room = self.fill
        return self.parts


def payload_size(data):
    """Bytes in a payload given whole (`data`) or as a list of pieces."""
    if isinstance(data, list):
        n = 0
        for piece in data:
            n += len(piece)
        return n
    return len(data)


class BatchBuilder:
    """Accumulates ticks of samples, ready to encode as one data batch.

    Small on a 64 KB MicroPython heap: a batch waiting in RAM is one bytearray, `data`, holding
    each tick's values as they go on the wire (msgpack of the first value of a series, then of
    its differences), tick after tick, in series id order within a tick; per series there are
    only two list slots, `masks[id]` (the ticks it has a sample at) and `prevs[id]` (its last
    value). The encoder reads the values back column by column with one cursor per tick. All of
    it is kept between batches (`clear`), so a steady agent allocates nothing here.
    """

    def __init__(self):
        self.ticks = []  # timestamps, ms
        self.starts = []  # where each tick's values begin in `data`
        self.data = bytearray()
        self.masks = []  # series id -> bit i set when it has a sample at tick i (0: none in this batch)
        self.prevs = []  # series id -> its last value in this batch
        self.reads = []  # series id -> the ticks it was read at, once `thin` narrowed `masks`
        self.thinned = False
        self.order = []  # add_tick's sort of a tick whose samples are not in id order
        self.samples = 0

    def clear(self):
        """Empty, for the next batch, keeping the room it has (the agent reuses one builder)."""
        del self.ticks[:]
        del self.starts[:]
        self.data[:] = b""
        for sid in range(len(self.masks)):
            self.masks[sid] = self.prevs[sid] = 0
        self.thinned = False
        self.samples = 0

    def reserve(self, nbytes):
        """Take room for `nbytes` of values now (a device does at start-up, while its heap is in one
        piece) rather than grow `data` by reallocation during the first batch; kept, as all room is."""
        if not self.ticks:
            self.data = bytearray(nbytes)
            self.data[:] = b""

    def __len__(self):
        return len(self.ticks)

    @property
    def columns(self):
        """The ids of the series that have samples in this batch, ascending."""
        sids = []
        for sid in range(len(self.masks)):
            if self.masks[sid]:
                sids.append(sid)
        return sids

    def add_tick(self, ts_ms, samples):
        """Add one tick: `samples` is a list of (Series, value) with ids already interned."""
        index = len(self.ticks)
        if index >= MAX_TICKS:
            raise ValueError("batch already holds %d ticks" % MAX_TICKS)
        if index and ts_ms < self.ticks[-1]:
            ts_ms = self.ticks[-1]  # a clock step backwards must not make a negative delta
        n = len(samples)
        order = range(n)
        top = -1
        for series, _ in samples:
            if series.id > top:
                top = series.id
            elif order is not None:
                order = None  # out of id order (or one series twice)
        if order is None:  # sort by id, then by position, so the first of a series comes first
            # common (a series first seen after others, like a CPU's utilization, has a higher id):
            # one list of the tick's size, kept for the next tick, not a new one grown item by item
            order = self.order
            if len(order) != n:
                order = self.order = [0] * n
            for i in range(n):
                order[i] = samples[i][0].id * n + i
            order.sort()
        masks, prevs, data = self.masks, self.prevs, self.data
        if top >= len(masks):
            grow = [0] * (top + 1 - len(masks))  # extending by a list allocates just what is needed
            masks.extend(grow)
            try:
                prevs.extend(grow)
            except MemoryError:  # both lists stay the same length, or clear() fails (IndexError)
                del masks[len(prevs):]
                raise
        self.ticks.append(ts_ms)
        self.starts.append(len(data))
        bit = 1 << index
        for i in order:
            series, value = samples[i % n]
            sid = series.id
            mask = masks[sid]
            if mask & bit:
                continue  # the same series twice in one tick: keep the first
            prev = prevs[sid]
            if isinstance(value, tuple):  # histogram (count, sum, buckets): its integers as one list
                value = [value[0], value[1]] + list(value[2])
                delta = value
                if mask:
                    if len(value) != len(prev):
                        raise ValueError("histogram changed its bucket count inside a batch")
                    delta = []
                    for k in range(len(value)):
                        delta.append(value[k] - prev[k])
            else:
                delta = value - prev if mask else value
            pack_into(delta, data)
            masks[sid] = mask | bit
            prevs[sid] = value
        self.samples += n

    def thin(self, choose, values):
        """Narrow every series to the readings `choose(sid, mask, values, count)` keeps.

        `values` is a list of at least MAX_TICKS slots, reused: for each series in id order it holds
        the series' `count` values of this batch in tick order (`mask` has their ticks) when `choose`
        is called; `choose` returns the ticks to send, a part of `mask`. Values are read back from
        `data` with one cursor per tick, as the encoder does; nothing the size of the batch is
        allocated."""
        masks, reads, data = self.masks, self.reads, self.data
        if len(reads) < len(masks):
            reads.extend([0] * (len(masks) - len(reads)))
        if self.thinned:
            masks = reads  # thinned twice: choose again among everything read
        n = len(self.ticks)
        cursor = self.starts[:]
        samples = 0
        for sid in range(len(masks)):
            mask = masks[sid]
            reads[sid] = mask
            if not mask:
                continue
            count = 0
            for t in range(n):
                if mask >> t & 1:
                    delta = take(data, cursor, t)
                    values[count] = delta if not count else _add(values[count - 1], delta)
                    count += 1
            kept = choose(sid, mask, values, count) & mask
            self.masks[sid] = kept
            while kept:
                samples += kept & 1
                kept >>= 1
        self.samples = samples
        self.thinned = True

    def encode(self, device, boot, seq, dict_epoch, compress=False, ext=None):
        out = bytearray()
        self.encode_into(out, device, boot, seq, dict_epoch, compress, ext)
        return bytes(out)

    def encode_into(self, out, device, boot, seq, dict_epoch, compress=False, ext=None):
        """The batch onto `out` (a bytearray, or a Chunks to send it in pieces)."""
        ticks = self.ticks
        if not ticks:
            raise ValueError("empty batch")
        pack_array_header(9 if ext else 8, out)
        for field in (VERSION, FLAG_DEFLATE if compress else 0, device, boot, seq, dict_epoch, ticks[0]):
            pack_into(field, out)
        body = bytearray() if compress else out
        body.append(0x92)  # [tick_deltas, columns]
        n = len(ticks)
        pack_array_header(n, body)
        prev = ticks[0]
        for ts in ticks:
            pack_into(ts - prev, body)
            prev = ts
        full = (1 << n) - 1
        masks, data = self.masks, self.data
        reads = self.reads if self.thinned else masks
        cursor = self.starts[:]  # the next value of each tick in `data`
        pack_array_header(len(masks) - masks.count(0), body)
        for sid in range(len(masks)):
            mask = masks[sid]
            read = reads[sid]
            if not read:
                continue
            if mask != read:  # thinned: each kept value as its difference from the previous kept one
                value = sent = None
                if mask:
                    pack_array_header(2 + _bits(mask), body)
                    pack_into(sid, body)
                    pack_into(0 if mask == full else mask, body)
                for t in range(n):
                    if read >> t & 1:
                        delta = take(data, cursor, t)
                        value = delta if value is None else _add(value, delta)
                        if mask >> t & 1:
                            pack_into(value if sent is None else _sub(value, sent), body)
                            sent = value
                continue
            pack_array_header(2 + _bits(mask), body)
            pack_into(sid, body)
            pack_into(0 if mask == full else mask, body)
            for t in range(n):
                if mask >> t & 1:  # this series' value is the next one of tick t (ids ascend in a tick)
                    pos = cursor[t]
                    items = 1  # msgpack items left to copy: a histogram is an array of integers
                    while items:
                        head = data[pos]
                        items -= 1
                        size = 1
                        if 0xCC <= head <= 0xD3:  # uint/int 8..64: 1, 2, 4 or 8 bytes follow
                            size += 1 << (head & 3)
                        elif head & 0xF0 == 0x90:  # fixarray
                            items += head & 0x0F
                        elif head == 0xDC:  # array 16
                            items += data[pos + 1] << 8 | data[pos + 2]
                            size = 3
                        for i in range(pos, pos + size):
                            body.append(data[i])
                        pos += size
                    cursor[t] = pos
        if compress:  # CPython agents only: MicroPython has no compressor
            pack_into(deflate(body), out)
        if ext:
            pack_into(ext, out)


def _bits(mask):
    count = 0
    while mask:
        count += mask & 1
        mask >>= 1
    return count


def take(data, cursor, t):
    """The msgpack integer at `cursor[t]` in `data` (an array of them, a histogram, as a list), as
    BatchBuilder writes them; `cursor[t]` moves past it. No tuple is made (MicroPython's heap)."""
    pos = cursor[t]
    head = data[pos]
    if head < 0x80:
        cursor[t] = pos + 1
        return head
    if head >= 0xE0:
        cursor[t] = pos + 1
        return head - 0x100
    if head & 0xF0 == 0x90 or head == 0xDC:  # fixarray, array 16
        if head == 0xDC:
            count = data[pos + 1] << 8 | data[pos + 2]
            cursor[t] = pos + 3
        else:
            count = head & 0x0F
            cursor[t] = pos + 1
        items = []
        for _ in range(count):
            items.append(take(data, cursor, t))
        return items
    if not 0xCC <= head <= 0xD3:
        raise ValueError("batch holds a value that is not an integer (0x%02x)" % head)
    size = 1 << (head & 3)
    value = 0
    for i in range(pos + 1, pos + 1 + size):
        value = value << 8 | data[i]
    if head >= 0xD0 and value >> (8 * size - 1):  # signed, negative
        value -= 1 << 8 * size
    cursor[t] = pos + 1 + size
    return value


def _add(value, delta):
    """value + delta, element-wise for histograms (lists)."""
    if isinstance(value, list):
        out = []
        for k in range(len(value)):
            out.append(value[k] + delta[k])
        return out
    return value + delta


def _sub(value, base):
    if isinstance(value, list):
        out = []
        for k in range(len(value)):
            out.append(value[k] - base[k])
        return out
    return value - base


def deflate(data):
    """A batch body deflated (raw, as FLAG_DEFLATE says): CPython agents with `compress` use it."""
    try:
        import zlib
    except ImportError:  # MicroPython's `deflate` module has no compressor in most builds
        raise ValueError("compression is not available on this interpreter")
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()
