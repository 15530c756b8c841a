"""The ``c360`` command: broker, simulate, replay, run, checkpoint, bench, and the commands of other
packages (``demo`` comes with the dashboards).

Other packages add commands through the entry-point group ``c360.commands`` (see
:class:`PluginCommand`): the library never imports the app, and a wheel without the dashboards
has no demo.

Every argument and setting is checked before any work starts, and the Kafka cluster is
asked for its metadata (at most 5 s) before anything is read or produced. Whatever is
wrong is one line on stderr and exit code 2. ``-v`` logs at INFO level, shows the Kafka
clients' own logs and the traceback of an unexpected error.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, NoReturn, Protocol

from c360.config import Settings, check_topic_name, parse_bootstrap, quiet_kafka_clients
from c360.errors import C360Error, ConfigError

EXPORT_SUFFIXES = (".parquet", ".csv", ".jsonl")
BENCH_SECTIONS = range(1, 7)


# -- checks: each raises a one-line error before any work -----------------------------------
# whole, seconds and PORT are argument types for plugin commands too (see PluginCommand).
def whole(minimum: int, maximum: int | None = None) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum or (maximum is not None and value > maximum):
            span = f"from {minimum} to {maximum}" if maximum is not None else f"≥ {minimum}"
            raise argparse.ArgumentTypeError(f"must be {span}, not {value}")
        return value
    return parse


def seconds(*, zero: bool) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
            raise argparse.ArgumentTypeError(
                f"must be {'0 or more' if zero else 'more than 0'}, not {text}")
        return value
    return parse


PORT = whole(0, 65535)


def _bootstrap(text: str) -> str:
    try:
        parse_bootstrap(text, "--bootstrap")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--bootstrap=")) from None
    return text.strip()


def _sections(text: str) -> list[int]:
    try:
        chosen = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        chosen = []
    if not chosen or any(i not in BENCH_SECTIONS for i in chosen):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give section numbers 1-6 separated by commas, e.g. 1,3,5")
    return list(dict.fromkeys(chosen))


def _writable(path: Path, what: str) -> Path:
    """``path`` if a file can be written there (its folders are created when needed)."""
    if path.is_dir():
        raise C360Error(f"{what} {path} is a directory: give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise C360Error(f"cannot write {what} {path}: permission denied")
    return _writable_dir(path.parent, what, path)


def _writable_dir(directory: Path, what: str, target: Path | None = None) -> Path:
    target = target or directory
    ancestor = directory
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise C360Error(f"cannot write {what} {target}: {ancestor} is not a directory")
    try:  # a real probe: os.access says yes to root even on read-only file systems
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as exc:
        raise C360Error(f"cannot write {what} {target}: {exc.strerror or exc} in "
                        f"{ancestor}") from None
    return target


def _export_path(text: str) -> Path:
    path = Path(text)
    if path.suffix.lower() not in EXPORT_SUFFIXES:
        raise C360Error(f"cannot export to {path.name!r}: use a name ending in "
                        f"{', '.join(EXPORT_SUFFIXES)}")
    return _writable(path, "the export")


def _cluster(args: argparse.Namespace) -> Settings:
    """The settings with the cluster to use, checked: it answers within 5 s."""
    from c360.topics.admin import check_reachable

    settings = Settings.from_env()
    if getattr(args, "bootstrap", None):
        settings = settings.with_bootstrap(args.bootstrap, "--bootstrap")
    check_reachable(settings)
    return settings


# -- commands -------------------------------------------------------------------------------
def _cmd_broker(args: argparse.Namespace) -> int:
    from c360.dev.broker import EmbeddedBroker, check_port, create_topics
    from c360.model.events import Catalogue

    settings = Settings.from_env()
    port = check_port(args.port or settings.broker_port, "--port")
    broker = EmbeddedBroker(port).start()
    try:
        cat = Catalogue(settings.topic_prefix)
        create_topics(settings.with_bootstrap(broker.bootstrap),
                      [*cat.topics, cat.dlq_topic], args.partitions)
        print(f"embedded Kafka broker (Tansu, memory-only) at {broker.bootstrap}", flush=True)
        print(f"  export C360_KAFKA_BOOTSTRAP={broker.bootstrap}", flush=True)
        print("  Ctrl-C stops it; its topics and data go with it.", flush=True)
        _wait_for_interrupt(broker.alive)
    finally:
        broker.stop()
    return 0


def _wait_for_interrupt(alive) -> None:
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        while alive() and not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass


def _cmd_simulate(args: argparse.Namespace) -> int:
    from c360.dev.simulator import simulate

    settings = _cluster(args)
    simulate(settings, customers=args.customers, rate=args.rate, duration=args.duration,
             events=args.events, seed=args.seed, progress=not args.quiet)
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from c360.dev import olist

    settings = Settings.from_env()
    data = Path(args.data) if args.data else settings.olist_dir
    for table in olist._FILES:  # every file there, before the cluster is even asked
        olist._path(olist._check_dir(data), table)
    settings = _cluster(args)
    olist.replay(settings, data_dir=data, speed=args.speed, progress=not args.quiet)
    return 0


def _addresses(args: argparse.Namespace) -> list[str]:
    addresses = [a.strip() for a in (args.addresses or "").split(";") if a.strip()]
    if addresses:
        parse_bootstrap(",".join(addresses), "--addresses")
    if args.process_id >= max(1, len(addresses)):
        raise C360Error(f"--process-id {args.process_id} is not an index of the "
                        f"{len(addresses)} --addresses" if addresses else
                        "--process-id needs --addresses (every process of the cluster)")
    return addresses


def _cmd_run(args: argparse.Namespace) -> int:
    from c360.model.events import Catalogue

    settings = Settings.from_env()
    model = None
    if args.model:
        from c360.models import load

        model = load(args.model)  # checked before anything connects
    changes = args.changes
    if changes == "":  # --changes without a topic: the catalogue's
        changes = Catalogue(settings.topic_prefix).changes_topic
    elif changes is not None:
        check_topic_name(changes, "--changes")
    addresses = _addresses(args)
    export = _export_path(args.export) if args.export else None
    if args.recovery_dir:
        if Path(args.recovery_dir).exists() and not Path(args.recovery_dir).is_dir():
            raise C360Error(f"--recovery-dir {args.recovery_dir} is not a directory")
        _writable_dir(Path(args.recovery_dir), "the recovery directory")
    settings = _cluster(args)  # last: every check that needs no cluster came first

    from c360.entity.derive import EntityHooks
    from c360.run.pipeline import Pipeline

    hooks = None
    if args.no_sweep:
        hooks = EntityHooks(sweep_per_batch=0,
                            allowed_lateness=timedelta(seconds=settings.allowed_lateness_s))
    store = _progress_store()
    pipeline = Pipeline(settings, store, workers=args.workers, idle_timeout=args.until_idle,
                        recovery_dir=args.recovery_dir, snapshot_interval=args.snapshot_interval,
                        changes_topic=changes, hooks=hooks, addresses=addresses,
                        process_id=args.process_id, model=model)
    progress = _Progress(pipeline, store, args.until_idle, args.progress)
    progress.start()
    try:
        pipeline.run()
    except BaseException:
        progress.stop(ok=False)
        raise
    progress.stop(ok=True)
    if export is not None:
        try:
            store.export(export)
        except OSError as exc:  # checked before the run; a disk can still fill up since
            raise C360Error(f"cannot write the export {export}: {exc.strerror or exc}") from None
    as_of = f" as of {store.as_of.isoformat()} (event time)" if store.as_of is not None else ""
    print(f"{store.count('customer')} customers, {store.count('product')} products{as_of}"
          + (f"; exported to {export}" if export else ""))
    return 0


def _cmd_checkpoint(args: argparse.Namespace) -> int:
    from c360.model.events import Catalogue

    settings = Settings.from_env()
    topic = args.changes or Catalogue(settings.topic_prefix).changes_topic
    check_topic_name(topic, "--changes")
    settings = _cluster(args)

    from c360.store.replica import replica_from_kafka

    with replica_from_kafka(settings, topic=topic) as replica:
        # Caught up: past the end the broker reports at the start, then nothing new for
        # --idle seconds (the embedded broker reports the start of its last batch + 1).
        ends = replica.reported_ends()
        last, quiet_since = replica.records, time.monotonic()
        while True:
            time.sleep(0.05)
            if replica.error is not None:
                replica.stop()  # raises the replica's error, in one line
            if replica.records != last:
                last, quiet_since = replica.records, time.monotonic()
            reached = all(o >= ends[p] for p, o in replica.positions().items())
            if reached and time.monotonic() - quiet_since >= args.idle:
                break
        trailer = replica.checkpoint()
    start = (f"from checkpoint {replica.started_from.checkpoint}, "
             if replica.started_from is not None else "from offset 0, ")
    print(f"checkpoint {trailer.checkpoint} of {topic}: {trailer.count} entities, "
          f"{replica.checkpoint_bytes} bytes, covering the changes before offsets "
          f"{trailer.offsets} ({start}{replica.records} changes read)")
    return 0


def bench_harness() -> Any:
    """The benchmark harness's runner. It lives in the source checkout's ``benchmarks/``,
    not in the wheel (it drives peers and the dashboards, which the library never imports),
    so it is looked up beside the installed package at run time (and put on ``sys.path``:
    notebook 06 imports it this way)."""
    import importlib

    checkout = Path(__file__).resolve().parents[1]
    if not (checkout / "benchmarks" / "harness" / "runner.py").is_file():
        raise ConfigError("c360 bench runs from a source checkout (its harness is "
                          "benchmarks/harness/, not part of the installed package): "
                          "clone the repository and run `c360 bench` there")
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    return importlib.import_module("benchmarks.harness.runner")


def _cmd_bench(args: argparse.Namespace) -> int:
    out = _writable(Path(args.out), "the bench result")
    plots = _writable_dir(Path(args.plots), "the plots") if args.plots else None

    run_bench = bench_harness().run_bench
    result = run_bench(quick=args.quick, out=out, sections=args.sections,
                       peers=not args.no_peers, flink=args.flink, plots=plots,
                       progress=not args.quiet)
    print(f"wrote {out} ({len(result['sections'])} sections)")
    return 0


# -- progress of `c360 run` -----------------------------------------------------------------
def _progress_store() -> Any:
    """An EntityStore that also remembers the latest event time it was given (one
    comparison per batch, not per event: the dataflow's hot path stays as it is)."""
    from c360.store.memory import EntityStore

    class ProgressStore(EntityStore):
        event_time: Any = None

        def apply(self, deltas: Any) -> None:
            if not isinstance(deltas, list):
                deltas = list(deltas)
            if deltas:
                t = deltas[-1].event_time
                if self.event_time is None or t > self.event_time:
                    self.event_time = t
            super().apply(deltas)

    return ProgressStore()


class _Progress:
    """What `c360 run` has done so far, on stderr.

    On a terminal: one line redrawn every second. Otherwise (CI logs, files) a plain line
    every 10 s, and only for a bounded run (--until-idle): a live service would fill its
    log with them. ``--progress always|never`` overrides; the last line sums the run up.
    """

    def __init__(self, pipeline: Any, store: Any, idle: float | None, mode: str) -> None:
        tty = sys.stderr.isatty()
        self._redraw = tty and mode != "never"
        self.enabled = mode == "always" or (mode == "auto" and (tty or idle is not None))
        self._every = 1.0 if self._redraw else 10.0
        self._pipeline, self._store, self._idle = pipeline, store, idle
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="c360-progress", daemon=True)
        self._started = time.monotonic()
        self._last = (self._started, 0)
        self._changed = self._started

    def start(self) -> None:
        if self.enabled:
            self._thread.start()

    def _events(self) -> int:
        idle = getattr(self._pipeline.source, "idle", None)  # read by the source
        read = getattr(idle, "messages", None)
        return read if isinstance(read, int) else sum(self._store.stream_counts().values())

    def _line(self, final: bool = False) -> str:
        now, events = time.monotonic(), self._events()
        then, before = self._last
        if events != before:
            self._changed = now
        self._last = (now, events)
        elapsed = now - self._started
        rate = events / elapsed if final else (events - before) / max(now - then, 1e-9)
        t = self._store.event_time
        at = f", event time {t:%Y-%m-%d %H:%M} UTC" if t is not None else ""
        if final:
            return (f"c360 run: {events:,} events read in {elapsed:.1f}s ({rate:,.0f}/s)"
                    f"{at.replace('event time', 'event time up to')}, {len(self._store):,} "
                    "entities")
        quiet = now - self._changed
        wait = (f", idle {quiet:.0f}s of {self._idle:g}s" if self._idle is not None
                and quiet >= 1 else "")
        # The most telling first: a narrow terminal cuts the end of the line.
        return (f"c360 run: {events:,} events read ({rate:,.0f}/s){at}{wait}, "
                f"{len(self._store):,} entities")

    def _show(self, text: str) -> None:
        if self._redraw:  # cut to the terminal's width: a wrapped line cannot be redrawn
            width = shutil.get_terminal_size().columns - 1
            sys.stderr.write("\r" + text[:width] + "\x1b[K")
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def _loop(self) -> None:
        while not self._done.wait(self._every):
            self._show(self._line())

    def stop(self, ok: bool) -> None:
        if not self.enabled:
            return
        self._done.set()
        self._thread.join()
        if self._redraw:
            sys.stderr.write("\r\x1b[K")  # the error, if any, gets a clean line
        if ok:
            sys.stderr.write(self._line(final=True) + "\n")
        sys.stderr.flush()


# -- commands of other packages ------------------------------------------------------------
PLUGIN_GROUP = "c360.commands"
BUILT_IN = ("broker", "simulate", "replay", "run", "checkpoint", "bench")
# Commands the docs promise, from a package an installation may lack: which one.
EXPECTED_PLUGINS = {"demo": "the dashboards"}


class PluginCommand(Protocol):
    """A ``c360`` command from another package: the object an entry point of the group
    ``c360.commands`` names, the entry point's name being the command's. For example, in
    pyproject.toml::

        [project.entry-points."c360.commands"]
        demo = "dashboards.commands:demo"

    Every ``c360`` invocation loads them all (for ``--help``), so the module an entry point
    names should import little; ``run`` imports what the command needs. Errors are
    :class:`C360Error`: one line, exit 2. ``whole``, ``seconds`` and ``PORT`` are argument
    types that say what is wrong the way the built-in commands do.
    """

    help: str  # one line in `c360 --help`
    description: str  # the head of `c360 NAME --help`

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def plugin_commands() -> dict[str, Callable[[], PluginCommand]]:
    """The installed packages' commands by name, each loaded when called."""
    return {ep.name: ep.load for ep in entry_points(group=PLUGIN_GROUP)}


class _Unavailable:
    """Stands for a command that cannot run here; says why when invoked, whatever its
    arguments (its parser takes them all)."""

    description = ""

    def __init__(self, name: str, why: str, todo: str) -> None:
        self.help = f"(unavailable: {why})"
        self._message = f"`c360 {name}` is unavailable: {why}; {todo}"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.set_defaults(_any_arguments=True)

    def run(self, args: argparse.Namespace) -> int:
        raise ConfigError(self._message)


def _add_plugins(sub: Any, plugins: Mapping[str, Callable[[], PluginCommand]]) -> None:
    for name in sorted({*plugins, *EXPECTED_PLUGINS}):
        if name in BUILT_IN:  # the built-in stays
            logging.getLogger(__name__).warning("ignored the plugin command %r: c360 has "
                                                "a command of that name", name)
            continue
        command: PluginCommand
        if name not in plugins:
            command = _Unavailable(name, f"it comes with {EXPECTED_PLUGINS[name]}, not "
                                         "installed here", "install c360 from a source "
                                         "checkout (pip install -e .)")
        else:
            try:
                command = plugins[name]()
            except Exception as exc:  # a broken plugin must not break the other commands
                command = _Unavailable(name, f"its plugin failed to load "
                                             f"({type(exc).__name__}: {_one_line(exc)})",
                                       f"reinstall the package with the {PLUGIN_GROUP!r} "
                                       f"entry point {name!r}")
        parser = sub.add_parser(name, help=command.help, description=command.description,
                                add_help=not isinstance(command, _Unavailable))
        command.add_arguments(parser)
        parser.set_defaults(func=command.run)


# -- the parser -----------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse, with a bad argument as one line (not usage and the message on two)."""

    def error(self, message: str) -> NoReturn:
        message = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


DESCRIPTION = """\
c360: a real-time Customer 360 on Kafka and Bytewax.

A first run (two terminals; `c360 demo` does all of it in one):
  c360 broker                                 # prints export C360_KAFKA_BOOTSTRAP=...
  c360 replay olist                           # or: c360 simulate --events 100000 --rate 0
  c360 run --until-idle 3 --export customers.parquet

Every argument and C360_* setting is checked before any work starts, and the Kafka
cluster must answer within 5 s; whatever is wrong is one line on stderr, exit code 2.
"""

EPILOG = "`c360 COMMAND --help` describes a command; the README lists the C360_* settings."


def build_parser(plugins: Mapping[str, Callable[[], PluginCommand]] | None = None,
                 ) -> argparse.ArgumentParser:
    """The parser; ``plugins`` (default: :func:`plugin_commands`) adds their commands."""
    plugins = plugin_commands() if plugins is None else plugins
    p = _Parser(prog="c360", description=DESCRIPTION, epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log at INFO level, with the Kafka clients' logs and tracebacks")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser("broker", help="run the embedded Kafka broker (Tansu)",
                       description="Run the embedded, memory-only Kafka broker (Tansu) with "
                                   "c360's topics until Ctrl-C; prints the address to export.")
    b.add_argument("--port", type=PORT, default=0,
                   help="listen port (default: C360_BROKER_PORT, else a free one)")
    b.add_argument("--partitions", type=whole(1), default=None, metavar="N",
                   help="partitions per stream topic (default: C360_PARTITIONS, else 2)")
    b.set_defaults(func=_cmd_broker)

    s = sub.add_parser("simulate", help="produce every stream as a simulated retailer",
                       description="Produce every stream of a simulated retailer to Kafka, "
                                   "deterministic under --seed.")
    s.add_argument("--customers", type=whole(1), default=1000, metavar="N",
                   help="customers in the simulated shop (default 1000)")
    s.add_argument("--rate", type=seconds(zero=True), default=1000.0,
                   help="events per second (default 1000; 0: flat out)")
    stop = s.add_mutually_exclusive_group()
    stop.add_argument("--duration", type=seconds(zero=False), default=None,
                      help="seconds to run")
    stop.add_argument("--events", type=whole(1), default=None, metavar="N",
                      help="events to produce")
    s.add_argument("--seed", type=whole(-(2**63)), default=42, metavar="K",
                   help="random seed (default 42)")
    s.add_argument("--bootstrap", type=_bootstrap, default=None, metavar="HOST:PORT",
                   help="Kafka bootstrap host:port (default: C360_KAFKA_BOOTSTRAP)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_simulate)

    r = sub.add_parser("replay", help="replay a real dataset as events",
                       description="Replay the Olist e-commerce dataset (Kaggle's CSV files, "
                                   "plain or gzipped) to Kafka as events, in event-time order.")
    r.add_argument("dataset", choices=["olist"], help="the dataset (olist)")
    r.add_argument("--data", default=None, metavar="DIR",
                   help="data directory (default: C360_OLIST_DIR, else ../shared/data/olist)")
    r.add_argument("--speed", type=seconds(zero=True), default=0.0,
                   help="event-time seconds per wall second (0: as fast as possible)")
    r.add_argument("--bootstrap", type=_bootstrap, default=None, metavar="HOST:PORT",
                   help="Kafka bootstrap host:port (default: C360_KAFKA_BOOTSTRAP)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_cmd_replay)

    u = sub.add_parser("run", help="run the dataflow (until the topics are idle), then export",
                       description="Run the customer-360 dataflow on every stream topic from "
                                   "the beginning: live until killed, or with --until-idle "
                                   "until the topics are quiet, then print (and --export) "
                                   "one row per customer.")
    u.add_argument("--until-idle", type=seconds(zero=False), default=None, metavar="SECONDS",
                   help="stop when every topic was idle this long (default: run until killed)")
    u.add_argument("--recovery-dir", default=None, metavar="DIR",
                   help="bytewax recovery partitions (created when missing); a restart with "
                        "the same DIR resumes where the last snapshot left off")
    u.add_argument("--snapshot-interval", type=seconds(zero=False), default=1.0,
                   metavar="SECONDS",
                   help="with --recovery-dir: seconds between snapshots (default 1)")
    u.add_argument("--changes", nargs="?", const="", default=None, metavar="TOPIC",
                   help="publish every entity change to TOPIC (default: PREFIX + 'changes')")
    u.add_argument("--model", default=None, metavar="PKG.MODULE:NAME",
                   help="the declared entity model to fold (default: the retail model, "
                        "c360.models.retail:RETAIL)")
    u.add_argument("--no-sweep", action="store_true",
                   help="do not age quiet customers (no decay, roll-up or eviction without "
                        "an event of theirs; the export is then not as of the end of the data)")
    u.add_argument("--addresses", default=None, metavar="HOST:PORT;HOST:PORT",
                   help="every dataflow process of a cluster (bytewax -a)")
    u.add_argument("--process-id", type=whole(0), default=0, metavar="I",
                   help="this process's index in --addresses (-i)")
    u.add_argument("--export", default=None, metavar="PATH",
                   help="one row per customer at the end: .parquet, .csv or .jsonl")
    u.add_argument("--workers", type=whole(1), default=1, metavar="N",
                   help="worker threads (default 1)")
    u.add_argument("--bootstrap", type=_bootstrap, default=None, metavar="HOST:PORT",
                   help="Kafka bootstrap host:port (default: C360_KAFKA_BOOTSTRAP)")
    u.add_argument("--progress", choices=["auto", "always", "never"], default="auto",
                   help="progress on stderr: auto (default) redraws a line every second on a "
                        "terminal, else prints one every 10 s for --until-idle runs")
    u.set_defaults(func=_cmd_run)

    c = sub.add_parser("checkpoint", help="publish a checkpoint that new replicas start from",
                       description="Read the entity-changes topic (from its newest "
                                   "checkpoint) until it is idle, then publish the whole "
                                   "state read as a new checkpoint on TOPIC.checkpoints: a "
                                   "new replica (c360.replica_from_kafka) loads it and reads "
                                   "only the changes after it.")
    c.add_argument("--changes", default=None, metavar="TOPIC",
                   help="the changes topic (default: PREFIX + 'changes')")
    c.add_argument("--idle", type=seconds(zero=False), default=3.0, metavar="SECONDS",
                   help="caught up once nothing new came for this long (default 3)")
    c.add_argument("--bootstrap", type=_bootstrap, default=None, metavar="HOST:PORT",
                   help="Kafka bootstrap host:port (default: C360_KAFKA_BOOTSTRAP)")
    c.set_defaults(func=_cmd_checkpoint)

    _add_plugins(sub, plugins)

    bn = sub.add_parser("bench", help="benchmarks: ratios to the Python limit, peers, latency",
                        description="Benchmarks in one run: ratios to a bare Python Kafka "
                                    "loop, peers, streams, latency, memory and fan-out.")
    bn.add_argument("--quick", action="store_true", help="every section at small scale")
    bn.add_argument("--out", default="bench.json", metavar="PATH.json",
                    help="the JSON result (default bench.json)")
    bn.add_argument("--sections", type=_sections, default=None, metavar="N,N",
                    help="e.g. 1,2,4 (default: all six)")
    bn.add_argument("--plots", default=None, metavar="DIR", help="write PNG plots there")
    bn.add_argument("--no-peers", action="store_true", help="skip Quix Streams and Pathway")
    bn.add_argument("--flink", action=argparse.BooleanOptionalAction, default=None,
                    help="run section 3's PyFlink leg (default: in full runs only)")
    bn.add_argument("--quiet", action="store_true", help="no progress bar")
    bn.set_defaults(func=_cmd_bench)
    return p


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: list[str] | None = None,
         plugins: Mapping[str, Callable[[], PluginCommand]] | None = None) -> int:
    parser = build_parser(plugins)
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "_any_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")  # as parse_args says
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # Both Kafka clients log every retry of an unreachable broker (kafka-python 21-27
        # lines, librdkafka thousands, measured); c360 raises one error that says what to do.
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
    try:
        with quiet_kafka_clients(None if args.verbose else 2):
            return args.func(args)
    except C360Error as exc:
        print(f"c360: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: one line, the traceback with -v
        if args.verbose:
            raise
        print(f"c360: error: unexpected {type(exc).__name__}: {_one_line(exc)} "
              "(run with -v for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
