"""The ``c360`` command: broker, simulate, replay, run, demo."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from datetime import timedelta
from pathlib import Path

from c360.config import Settings
from c360.errors import C360Error


def _cmd_broker(args: argparse.Namespace) -> int:
    from c360.broker import EmbeddedBroker, create_topics
    from c360.events import Catalogue

    settings = Settings.from_env()
    broker = EmbeddedBroker(args.port or settings.broker_port).start()
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


def _settings_with_cluster(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    if getattr(args, "bootstrap", None):
        settings = settings.with_bootstrap(args.bootstrap)
    return settings


def _cmd_simulate(args: argparse.Namespace) -> int:
    from c360.simulator import simulate

    settings = _settings_with_cluster(args)
    simulate(settings.with_bootstrap(settings.require_bootstrap()), customers=args.customers,
             rate=args.rate, duration=args.duration, events=args.events, seed=args.seed,
             progress=not args.quiet)
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from c360.olist import replay

    settings = _settings_with_cluster(args)
    settings.require_bootstrap()
    data = Path(args.data) if args.data else settings.olist_dir
    replay(settings, data_dir=data, speed=args.speed, progress=not args.quiet)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from c360.events import Catalogue
    from c360.hooks import EntityHooks
    from c360.pipeline import Pipeline

    settings = _settings_with_cluster(args)
    settings.require_bootstrap()
    changes = args.changes
    if changes == "":  # --changes without a topic: the catalogue's
        changes = Catalogue(settings.topic_prefix).changes_topic
    addresses = [a for a in (args.addresses or "").split(";") if a]
    if addresses and not 0 <= args.process_id < len(addresses):
        raise C360Error(f"--process-id {args.process_id} is not an index of the "
                        f"{len(addresses)} --addresses")
    hooks = None
    if args.no_sweep:
        hooks = EntityHooks(sweep_per_batch=0,
                            allowed_lateness=timedelta(seconds=settings.allowed_lateness_s))
    pipeline = Pipeline(settings, workers=args.workers, idle_timeout=args.until_idle,
                        recovery_dir=args.recovery_dir, snapshot_interval=args.snapshot_interval,
                        changes_topic=changes, hooks=hooks, addresses=addresses,
                        process_id=args.process_id)
    store = pipeline.run()
    if args.export:
        store.export(args.export)
    print(f"{store.count('customer')} customers, {store.count('product')} products"
          + (f"; exported to {args.export}" if args.export else ""))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from c360.demo import run_demo

    return run_demo(port=args.port, customers=args.customers, rate=args.rate,
                    show=not args.no_browser, sync_port=args.sync_port)


def _cmd_bench(args: argparse.Namespace) -> int:
    from c360.bench.runner import run_bench

    sections = [int(x) for x in args.sections.split(",")] if args.sections else None
    out = Path(args.out)
    result = run_bench(quick=args.quick, out=out, sections=sections, peers=not args.no_peers,
                       flink=args.flink, plots=Path(args.plots) if args.plots else None,
                       progress=not args.quiet)
    print(f"wrote {out} ({len(result['sections'])} sections)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="c360", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("broker", help="run the embedded Kafka broker (Tansu)")
    b.add_argument("--port", type=int, default=0, help="listen port (default: a free one)")
    b.add_argument("--partitions", type=int, default=None, help="partitions per stream topic")
    b.set_defaults(func=_cmd_broker)

    s = sub.add_parser("simulate", help="produce every stream as a simulated retailer")
    s.add_argument("--customers", type=int, default=1000)
    s.add_argument("--rate", type=float, default=1000.0, help="events per second (0: flat out)")
    stop = s.add_mutually_exclusive_group()
    stop.add_argument("--duration", type=float, default=None, help="seconds to run")
    stop.add_argument("--events", type=int, default=None, help="events to produce")
    s.add_argument("--seed", type=int, default=42)
    s.add_argument("--bootstrap", default=None, 
                   help="Kafka bootstrap (default: C360_KAFKA_BOOTSTRAP)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_simulate)

    r = sub.add_parser("replay", help="replay a real dataset as events")
    r.add_argument("dataset", choices=["olist"])
    r.add_argument("--data", default=None,
                   help="data directory (default: C360_OLIST_DIR, else ../shared/data/olist)")
    r.add_argument("--speed", type=float, default=0.0,
                   help="event-time seconds per wall second (0: as fast as possible)")
    r.add_argument("--bootstrap", default=None)
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=_cmd_replay)

    u = sub.add_parser("run", help="run the dataflow until the topics are idle, then export")
    u.add_argument("--until-idle", type=float, default=None, metavar="SECONDS",
                   help="stop when every topic was idle this long (default: run until killed)")
    u.add_argument("--recovery-dir", default=None, metavar="DIR",
                   help="bytewax recovery partitions (created when missing); a restart with "
                        "the same DIR resumes where the last snapshot left off")
    u.add_argument("--snapshot-interval", type=float, default=1.0, metavar="SECONDS",
                   help="with --recovery-dir: seconds between snapshots (default 1)")
    u.add_argument("--changes", nargs="?", const="", default=None, metavar="TOPIC",
                   help="publish every entity change to TOPIC (default: PREFIX + 'changes')")
    u.add_argument("--no-sweep", action="store_true",
                   help="no relevance sweep of quiet customers (its deltas depend on batch "
                        "timing, so runs are then comparable entity for entity)")
    u.add_argument("--addresses", default=None, metavar="HOST:PORT;HOST:PORT",
                   help="every dataflow process of a cluster (bytewax -a)")
    u.add_argument("--process-id", type=int, default=0, help="this process's index (-i)")
    u.add_argument("--export", default=None, metavar="PATH", help=".parquet, .csv or .jsonl")
    u.add_argument("--workers", type=int, default=1)
    u.add_argument("--bootstrap", default=None)
    u.set_defaults(func=_cmd_run)

    d = sub.add_parser("demo", help="broker + simulator + dataflow + live page, until Ctrl-C")
    d.add_argument("--port", type=int, default=5006, help="web port (0: a free one)")
    d.add_argument("--customers", type=int, default=500)
    d.add_argument("--rate", type=float, default=200.0, help="simulated events per second")
    d.add_argument("--no-browser", action="store_true", help="do not open a browser")
    d.add_argument("--sync-port", type=int, default=0,
                   help="port of the sync WebSocket server (default: a free one)")
    d.set_defaults(func=_cmd_demo)
    bn = sub.add_parser("bench", help="benchmarks: ratios to the Python limit, peers, latency")
    bn.add_argument("--quick", action="store_true", help="every section at small scale")
    bn.add_argument("--out", default="bench.json", metavar="PATH.json")
    bn.add_argument("--sections", default=None, help="e.g. 1,2,4 (default: all six)")
    bn.add_argument("--plots", default=None, metavar="DIR", help="write PNG plots there")
    bn.add_argument("--no-peers", action="store_true", help="skip Quix Streams and Pathway")
    bn.add_argument("--flink", action=argparse.BooleanOptionalAction, default=None,
                    help="run section 3's PyFlink leg (default: in full runs only)")
    bn.add_argument("--quiet", action="store_true", help="no progress bar")
    bn.set_defaults(func=_cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except C360Error as exc:
        print(f"c360: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
