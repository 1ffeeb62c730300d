"""The agent loop: read collectors when due, keep what the sampler selects, batch, send.

    tick:  sampler.due() -> collector.collect() -> sampler.select() -> BatchBuilder.add_tick()
    flush: sampler.thin() (adaptive: what each series sends) -> BatchBuilder.encode() -> Outbox
           (store-and-forward)
    pump:  Outbox -> transport.publish (QoS 1) ... PUBACK ... the gateway's receipt -> removed
           from the Outbox (docs/reliability.md: the receipt when a gateway sends them, else the PUBACK)

Everything platform-specific (collectors, MQTT transport, sampler, command handler) is handed in
by the entry point; this module is part of the MicroPython-compatible core. The rare moments
(connecting, births) live in edge_agent.lifecycle and remote tuning in
edge_agent.commands.handler; both are imported when needed, and on MicroPython unloaded afterwards
(edge_agent.unload), so their code is not resident on a small heap.

Running out of memory (a small MicroPython heap, fragmented) is survived, not fatal: the loop
catches MemoryError, collects garbage, drops the least valuable work and carries on (`memory_error`
is logged at most every 10 s per place, and every one is counted in stats["memory_errors"]):
- a birth (or the announcements made on connecting) that cannot be encoded or sent is tried again
  at the next pass; data waits for it;
- a batch that cannot be encoded (or a tick that cannot be added to it) is dropped with its ticks,
  counted as the outbox counts its drops, so the next batches report it in `ext.lost`;
- a collector read that fails is skipped for that tick; anything else waits for the next pass.
With a transport that takes payloads in pieces (`transport.chunked`, transport/umqtt.py) batches
and births are encoded into edge_wire.batch.Chunks: no allocation holds a whole message.
"""

import gc

from edge_agent import unload
from edge_agent.clock import mono_ms, sleep_s, wall_ms
from edge_agent.collectors import COLLECTORS
from edge_agent.model import SeriesTable
from edge_agent.store.outbox import Outbox
from edge_wire import MAX_TICKS
from edge_wire.batch import BatchBuilder, Chunks, payload_size

IN_FLIGHT_WINDOW = 8  # data batches on the wire at once while the broker's PUBACK is delivery
EVENT_POLL_S = 0.25  # how often collectors with events (netlink link changes) are polled


class SeqSource:
    """Batch sequence numbers that only grow, across agent restarts too.

    With a state directory, numbers are reserved in blocks written to `<state_dir>/seq`, so a flash
    device is written once per BLOCK batches. The base is never below unix seconds * 256, so even
    without saved state (or after it is wiped) a restarted agent continues above its last number as
    long as the clock is sane; a device without a clock keeps the saved reservation.
    """

    BLOCK = 1024

    def __init__(self, state_dir, now_s):
        self.path = state_dir + "/seq" if state_dir else None
        saved = 0
        if self.path:
            try:
                with open(self.path) as f:
                    saved = int(f.read().strip() or 0)
            except (OSError, ValueError):
                saved = 0
        self.next = max(saved, now_s * 256)
        self.limit = self.next
        if self.path:
            try:
                self.reserve()  # now, while start-up has memory to spare; else at the first batch
            except OSError:
                pass

    def reserve(self):
        from edge_agent.store.statefile import write_atomic  # once every BLOCK batches: not resident

        limit = self.next + self.BLOCK
        write_atomic(self.path, str(limit))  # reserved only once written (it may fail)
        self.limit = limit
        unload("edge_agent.store.statefile")

    def take(self):
        if self.path and self.next >= self.limit:
            try:
                self.reserve()
            except OSError:  # a full disk: numbers go on (after a restart from the clock's floor)
                self.limit = self.next + self.BLOCK
        seq = self.next
        self.next += 1
        return seq




class EveryInterval:
    """The `fixed` sampling policy without edge_agent.sampling.sampler: every collector at one interval, every
    sample kept. It reads when sampling.Sampler with policy `fixed` reads (the first call is due, then
    every `interval_ms` on the same grid, a late call skips instead of catching up, a change applies
    from the last read) and is tuned by the same `update()`; the agent swaps in a sampling.Sampler
    when a command asks for more than this can do (another policy, per-collector intervals).

    `snapshot()` holds the parameters given (policy, interval_ms and any others set remotely) and the
    effective read intervals; unlike Sampler's it does not list the defaults of the other policies'
    knobs, and `pressure`/`self_cpu` stay None (the fixed policy reads no load signals).
    """

    def __init__(self, names=COLLECTORS, interval_ms=1000, params=None):
        self.names = list(names)
        self.params = {"policy": "fixed", "interval_ms": interval_ms}
        if params:
            self.params.update(params)
        self.interval_ms = self.params["interval_ms"]
        self.next_ms = None
        self.last_ms = None

    def due(self, now_ms):
        if self.next_ms is None:
            self.next_ms = now_ms
        if now_ms < self.next_ms:
            return ()
        self.last_ms = now_ms
        self.next_ms += self.interval_ms
        if self.next_ms <= now_ms:  # fell behind (suspend, overload): skip, do not catch up
            self.next_ms = now_ms + self.interval_ms
        return self.names

    def next_due_ms(self):
        return self.next_ms if self.next_ms is not None else 0

    def load_due(self, now_ms):
        return False

    def observe_load(self, now_ms, cpu_util, runq, mem_avail_ratio, self_cpu):
        pass

    def select(self, now_ms, collector, samples):
        return samples

    def effective_interval_ms(self, series):
        return self.interval_ms

    def covers(self, params):
        """True when `params` (applied on top of ours) still describe a plain fixed policy."""
        for key in params:
            if key == "policy":
                if params[key] != "fixed":
                    return False
            elif key.endswith("_base_ms") and params[key]:
                return False
        return True

    def update(self, params):
        """Apply a (partial) sampling dict, validated as sampling.Sampler does; return the problems."""
        from edge_agent.sampling.rules import validate_sampling

        errors = validate_sampling(params)
        if errors or not self.covers(params):
            return errors or ["policy: this sampler runs the fixed policy only"]
        self.params.update(params)
        self.interval_ms = self.params["interval_ms"]
        if self.last_ms is not None:  # as Sampler: the next read is one new interval after the last
            self.next_ms = self.last_ms + self.interval_ms
        return []

    def snapshot(self):
        out = dict(self.params)
        reads = {}
        for name in COLLECTORS:
            reads[name] = self.interval_ms
        out["effective"] = {"load_level": 0, "pressure": None, "self_cpu": None, "read_ms": reads}
        return out


class LinkState:
    """What edge_agent.transport.linkstate last logged about the connection (the module is loaded only for news)."""

    def __init__(self):
        self.reconnects = self.errors = self.attempts = self.quick = 0
        self.up = False
        self.down_ms = mono_ms()  # offline since (the start counts: nothing was sent yet)
        self.up_ms = 0
        self.buffering_ms = 0  # when the next `buffering` line is due (offline, with batches held)
        self.mark = None  # a backlog being delivered: (outbox.sent at the reconnect, batches held, ms offline)


class Agent:
    def __init__(self, config, collectors, transport, info, sampler=None, loadwatch=None,
                 commands=None, spool=None, log=None, collector_factory=None, overrides=None):
        self.config = config
        self.collector_factory = collector_factory  # collectors config -> (collectors, effective)
        self.overrides = overrides if overrides is not None else {}  # accepted remote changes
        self.collectors = dict([(c.name, c) for c in collectors])
        self.transport = transport
        self.info = info
        self.device = info["device"]
        base_interval_ms = int(config["interval_s"] * 1000)
        self.sampler = sampler or EveryInterval(COLLECTORS, base_interval_ms)
        self.loadwatch = loadwatch
        self.commands = commands
        self.log = log or _print_log
        # LinkState(): edge_agent.transport.linkstate logs the connection's story (set by the entry point; the
        # MicroPython one leaves it off until the module costs a small heap nothing: frozen)
        self.link = None
        self.batch_ms = int(config["batch_s"] * 1000)
        self.compress = config["compress"]
        prefix = config["topic_prefix"] + "/" + self.device + "/"
        self.topics = {}
        for name in ("birth", "data", "state", "cmd", "ack", "delivery"):
            self.topics[name] = prefix + name
        from edge_wire.birth import boot_tag  # not kept in this module's globals: it is unloaded now

        self.boot = boot_tag(info["boot_id"])
        unload("edge_wire.birth")  # boot_tag lives with the birth encoder: needed again for births only
        self.seq = SeqSource(config["state_dir"], wall_ms() // 1000)
        self.table = SeriesTable()
        self.table.base = None
        self.builder = BatchBuilder()
        if spool is None:
            self.outbox = Outbox(config["buffer"]["max_batches"])
        else:
            from edge_agent.store.spool import SpoolOutbox

            self.outbox = SpoolOutbox(config["buffer"]["max_batches"], spool, config["buffer"]["spool_chunk"])
        self.spool = spool
        self.rebirth_ms = 0  # births go again at a gateway's request from then on (lifecycle.receipt)
        self.last_tick_ms = 0  # tick timestamps only grow, whatever the wall clock does
        self.flush_at = None
        self.started_ms = mono_ms()  # commands signed before this are refused (edge_agent.commands.handler)
        self.running = False
        self.chunked = getattr(transport, "chunked", False)  # publish takes a list of pieces
        self.birth_due = False  # a birth could not be encoded or sent (memory): data waits for it
        self.connect_due = False  # the connection's announcements could not all be sent (memory)
        # called once a batch is encoded, while its builder is still alive: the heap's busiest moment
        # (mpy_main collects garbage and records the heap there)
        self.after_flush = None
        self.stats = {"ticks": 0, "samples_read": 0, "samples_kept": 0, "batches": 0,
                      "bytes": 0, "births": 0, "collector_errors": 0, "memory_errors": 0, "clock_skips": 0,
                      "unsent": 0}
        self.stretched = bytearray()  # series reported with an interval other than the base (batch_ext)
        self.errors_by_collector = {}
        self.memory_log_ms = {}  # place -> next time a memory_error there may be logged
        self.event_sources = [c for c in collectors if hasattr(c, "poll_events")]
        self.kept = []  # sample(): the tick's kept samples, until the next tick
        self.fallback_ms = 0  # with "auto" delivery (lifecycle.start): no receipt this long, PUBACK again
        self.run_lifecycle("start", "start", "store.receipts")

    # ------------------------------------------------------------------ sampling

    def sample(self, names, now_ms=None):
        """Read the named collectors once and add what the sampler keeps as one tick; returns how many
        samples it kept."""
        now = mono_ms() if now_ms is None else now_ms
        ts = wall_ms()
        if ts <= self.last_tick_ms:
            if self.last_tick_ms - ts >= 100:
                # the wall clock went back: ticks wait until it passes the last one, so that no series
                # gets a timestamp twice or out of order downstream (counters lose no increments)
                n = self.stats["clock_skips"] = self.stats["clock_skips"] + 1
                if n & (n - 1) == 0:  # the 1st, 2nd, 4th, 8th... tick skipped
                    self.log("clock_backwards", dropped_ticks=n)
                return 0
            ts = self.last_tick_ms + 1  # ticks in one millisecond, or a step back of a few: just after
        kept = self.kept  # one list kept for every tick (del [:] keeps its room): not a new one grown each tick
        del kept[:]  # (a MemoryError may have left some of the last one)
        for name in names:
            collector = self.collectors.get(name)
            if collector is None:
                continue
            try:
                samples = collector.collect()
            except MemoryError:
                self.out_of_memory("collect", collector=name)
                continue
            except (OSError, ValueError) as exc:
                self.stats["collector_errors"] += 1
                self.errors_by_collector[name] = self.errors_by_collector.get(name, 0) + 1
                self.log("collector_error", collector=name, error=str(exc))
                continue
            self.stats["samples_read"] += len(samples)
            for pair in self.sampler.select(now, name, samples):
                if pair[0].id < 0:
                    self.table.intern(pair[0])
                kept.append(pair)
        self.stats["ticks"] += 1
        n = len(kept)
        if n:
            if len(self.builder) >= MAX_TICKS:
                self.flush()
            try:
                self.builder.add_tick(ts, kept)
            except MemoryError:  # the batch may hold half a tick now: drop it with this tick
                self.drop_batch("tick", n)
                n = 0
        # the tick's (series, value) pairs go now, not at the next tick: on a 64-bit device ~2 KB
        # that the batch, a birth or a command needs in between
        del kept[:]
        if n:
            self.last_tick_ms = ts
            self.stats["samples_kept"] += n
        return n

    def observe_load(self, now):
        if self.loadwatch is None:
            return
        try:
            signals = self.loadwatch.read()
        except (OSError, ValueError):
            return
        self.sampler.observe_load(now, signals[0], signals[1], signals[2], signals[3])

    # ------------------------------------------------------------------ batching

    def flush(self):
        """Encode the pending ticks as one batch into the outbox (birth first if the dictionary grew)."""
        if not len(self.builder):
            return None
        thin = getattr(self.sampler, "thin", None)
        if thin is not None:  # a policy that chooses what to send having seen the whole batch
            read = self.builder.samples
            try:
                thin(self.builder, self.table.series)
            except MemoryError:
                self.drop_batch("batch")
                return None
            self.stats["samples_kept"] -= read - self.builder.samples
            if not self.builder.samples:  # nothing worth sending in this one
                self.builder.clear()
                return None
        seq = self.seq.take()
        if self.table.changed:
            self.table.epoch = seq
            if self.table.base is None:
                self.table.base = seq
            self.table.changed = False
            # published before any batch that needs it; with a spool also kept on disk for as long
            # as a spooled batch may need it (a restart or a crash cannot strand that batch). Due from
            # now on: a MemoryError on the way to it (caught by the loop) must not leave it forgotten
            self.birth_due = True
            self.publish_birth()
        try:
            out = Chunks() if self.chunked else bytearray()
            self.builder.encode_into(out, self.device, self.boot, seq, self.table.epoch, self.compress,
                                     self.batch_ext())
            payload = out.pieces() if self.chunked else bytes(out)
            out = None
            self.outbox.push(seq, payload, self.builder.samples)
        except MemoryError:
            out = payload = None
            self.drop_batch("batch")
            return None
        self.stats["batches"] += 1
        self.stats["bytes"] += payload_size(payload)
        if self.after_flush is not None:
            self.after_flush()
        self.builder.clear()  # reused: nothing to allocate once the batch is out
        return payload

    def drop_batch(self, where, extra_samples=0):
        """Out of memory while batching: the pending ticks are dropped and counted as lost (ext.lost)."""
        ticks = len(self.builder)
        samples = self.builder.samples + extra_samples
        self.builder.clear()
        if ticks or samples:
            self.outbox.dropped_batches += 1
            self.outbox.dropped_samples += samples
        self.out_of_memory(where, dropped_ticks=ticks, dropped_samples=samples)

    def out_of_memory(self, where, **fields):
        """A MemoryError was caught at `where`: collect garbage, count it, log one line."""
        gc.collect()
        self.stats["memory_errors"] += 1
        now = mono_ms()
        if now < self.memory_log_ms.get(where, 0):  # a starved heap fails every pass: a line per place per 10 s
            return
        self.memory_log_ms[where] = now + 10000
        try:
            self.log("memory_error", at=where, **fields)
        except MemoryError:
            pass

    def batch_ext(self):
        ext = {}
        lost = self.outbox.lost()
        if lost[0]:
            ext["lost"] = list(lost)
        intervals = {}
        base = self.base_interval_ms()
        masks = self.builder.masks  # series id -> its ticks in this batch (0: none)
        stretched = self.stretched  # series id -> 1 while its last reported interval was not the base
        if len(stretched) < len(masks):
            stretched.extend(bytes(len(masks) - len(stretched)))
        for sid in range(len(masks)):
            if not masks[sid]:
                continue
            ms = self.sampler.effective_interval_ms(self.table.series[sid])
            if ms != base or stretched[sid]:  # back at the base: said once, or the last one reported stands
                stretched[sid] = ms != base
                group = intervals.get(ms)
                if group is None:
                    intervals[ms] = [ms, sid]
                else:
                    group.append(sid)
        if intervals:
            ext["iv"] = [intervals[ms] for ms in sorted(intervals)]
        return ext

    def base_interval_ms(self):
        """The read interval every series starts from: the sampler's (tuned remotely) or the config's."""
        params = getattr(self.sampler, "params", None)
        if params and params.get("interval_ms"):
            return params["interval_ms"]
        return int(self.config["interval_s"] * 1000)

    def publish_birth(self):
        """The birth, now (and into the spool's archive when it grew)."""
        self.birth_due = True  # until it is sent, even if there is no room to load lifecycle
        self.run_lifecycle("publish_birth", "birth")

    def run_lifecycle(self, task, where, module="lifecycle", arg=None):
        """edge_agent.<module>'s `task` (edge_agent.lifecycle, edge_agent.store.receipts), with the module
        loaded only while it runs; without room to load it, a MemoryError at `where` (the caller's
        *_due flag has it tried at the next pass)."""
        names = ("edge_agent." + module, "edge_agent.lifecycle", "edge_wire.birth", "edge_agent.store.statefile")
        try:
            code = __import__("edge_agent." + module)
            for part in module.split("."):  # a package's attribute at each level (store.receipts)
                code = getattr(code, part)
        except (MemoryError, AttributeError):
            # MicroPython leaves a module whose import ran out of memory in sys.modules, without its
            # package attribute: found there next time, getattr raises AttributeError (the import that
            # failed may have been another's: receipts imports lifecycle). Unloaded, it is tried again
            unload(*names)
            self.out_of_memory(where)
            return
        try:
            getattr(code, task)(self, arg) if arg is not None else getattr(code, task)(self)
        finally:  # out of memory in the task too: nothing half-imported stays for the next one
            code = None
            unload(*names)

    # ------------------------------------------------------------------ network

    def on_connect(self):
        self.connect_due = True  # until the announcements are made (see publish_birth)
        self.run_lifecycle("announce", "connect")

    def on_message(self, topic, payload):
        if topic == self.topics["delivery"]:
            # a gateway's receipt: batches settled (Outbox.receipt); births it lacks, and with "auto"
            # delivery the news that a gateway sends receipts (edge_agent.store.receipts)
            wanted = self.outbox.receipt(payload)
            if wanted is not None or (self.fallback_ms and not self.outbox.receipts):
                self.run_lifecycle("receipt", "receipt", "store.receipts", wanted)
            return
        if self.commands is None:
            return
        ack = self.commands.handle(topic, payload, self)
        if ack is not None:
            self.transport.publish(self.topics["ack"], ack, 1, False)

    def link_news(self):
        """True when edge_agent.transport.linkstate has something to log: the connection came or went, an attempt
        failed, a `buffering` line is due, or the backlog held while offline has been delivered."""
        transport, link, outbox = self.transport, self.link, self.outbox
        if getattr(transport, "reconnects", 0) != link.reconnects or getattr(transport, "errors", 0) != link.errors:
            return True
        if transport.connected != link.up:
            return True
        if link.up:
            return link.mark is not None and (outbox.sent - link.mark[0] >= link.mark[1] or not len(outbox))
        return len(outbox) > 0 and mono_ms() >= link.buffering_ms

    def pump(self):
        if self.link is not None and self.link_news():
            try:
                from edge_agent.transport import linkstate
            except MemoryError:
                self.out_of_memory("linkstate")
            else:
                linkstate.watch(self)
                unload("edge_agent.transport.linkstate")
        if not self.transport.connected:
            self.outbox.offline()
            return
        now = mono_ms()
        self.outbox.collect_acks(self.transport.acked, now)
        waiting = self.outbox.waiting_ms
        if self.fallback_ms and waiting is not None and now - waiting > self.fallback_ms:
            self.run_lifecycle("release", "receipt", "store.receipts")  # the gateway stopped sending them
        if self.connect_due:
            self.on_connect()
            if self.connect_due:
                return
        if self.birth_due:
            self.publish_birth()
            if self.birth_due:
                return  # data batches wait for the dictionary they refer to
        # while the gateway's receipt is delivery, one batch is out at a time: every series stays in order
        window = 1 if self.outbox.receipts else IN_FLIGHT_WINDOW
        for entry in self.outbox.unsent(window, now):
            token = self.transport.publish(self.topics["data"], entry.payload, 1, False)
            if token is None:
                break
            entry.token = token
            entry.sent_ms = now
            entry.tries += 1

    # ------------------------------------------------------------------ the loop

    def step(self):
        """One pass of the loop; returns how long the caller may wait before the next pass (s)."""
        now = mono_ms()
        if self.flush_at is None:
            self.flush_at = now + self.batch_ms
        for source in self.event_sources:
            changed = source.poll_events()
            if changed:  # a link went up or down: sample it now and send without waiting
                self.sample([source.name], now)
                self.flush()
                self.flush_at = now + self.batch_ms
        due = self.sampler.due(now)
        if due or self.sampler.load_due(now):  # the load is watched even while reads are stretched
            self.observe_load(now)
        if due:
            self.sample(due, now)
        if now >= self.flush_at:
            self.flush()
            self.flush_at += self.batch_ms
            if self.flush_at <= now:
                self.flush_at = now + self.batch_ms
        self.pump()
        wake = min(self.sampler.next_due_ms(), self.flush_at)
        wait = max(0, wake - mono_ms()) / 1000.0
        if self.event_sources:
            wait = min(wait, EVENT_POLL_S)
        return wait

    def run(self, max_seconds=None):
        self.running = True
        self.transport.start(self.on_connect, self.on_message)
        started = mono_ms()
        try:
            while self.running:
                try:
                    wait = self.step()
                    if max_seconds is not None and mono_ms() - started >= max_seconds * 1000:
                        break
                    self.transport.poll(wait)
                except MemoryError:
                    self.out_of_memory("loop")
                    sleep_s(0.1)  # whatever failed is tried again at the next pass, not at once
        finally:
            self.shutdown()

    def shutdown(self):
        """Send what is pending for a short while, then close the collectors and the transport.

        Resident, not in lifecycle: a stop may come when the heap has no room to load a module."""
        try:
            self.flush()
        except MemoryError:
            self.drop_batch("stop")
        deadline = mono_ms() + 2000
        while len(self.outbox) and self.transport.connected and mono_ms() < deadline:
            self.pump()
            self.transport.poll(0.05)
        # undelivered at the end: lost with a RAM outbox, kept by a spool for the next run; no
        # later batch reports them in ext.lost, so the stop line does
        self.stats["unsent"] = len(self.outbox)
        self.outbox.save()
        if self.transport.connected:  # a clean stop says so; the will covers the unclean ones
            self.transport.publish(self.topics["state"], b"offline", 1, True)
            self.transport.poll(0.1)
        for collector in self.collectors.values():
            try:
                collector.close()
            except OSError:
                pass
        self.transport.stop()

    def stop(self):
        self.running = False


def _print_log(event, **fields):
    print(event + " " + " ".join(["%s=%s" % (k, fields[k]) for k in fields]))
