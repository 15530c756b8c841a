"""The dashboards' ``c360`` command: ``c360 demo``.

The library's CLI does not import the dashboards; it finds this command through the
entry point ``demo`` of the group ``c360.commands`` (pyproject.toml; see
:class:`c360.cli.PluginCommand`). Every ``c360`` invocation loads this module for its help, so it
imports only the CLI's argument types: the demo itself (Panel, the pipeline, the sync
server: 2.1 s to import, measured) only when it runs.
"""

from __future__ import annotations

import argparse
import os

from c360.cli import PORT, seconds, whole
from c360.config import Settings
from c360.errors import C360Error


class Demo:
    help = "broker + simulator + dataflow + live page, until Ctrl-C"
    description = ("Everything at once until Ctrl-C: the embedded broker (or "
                   "C360_KAFKA_BOOTSTRAP's cluster), a simulated shop, the dataflow, the live "
                   "page, the dashboard and the sync server.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--port", type=PORT, default=5006,
                            help="web port (default 5006; 0: a free one)")
        parser.add_argument("--customers", type=whole(1), default=500, metavar="N",
                            help="customers in the simulated shop (default 500)")
        parser.add_argument("--rate", type=seconds(zero=False), default=200.0,
                            help="simulated events per second (default 200)")
        parser.add_argument("--no-browser", action="store_true",
                            help="do not open a browser")
        parser.add_argument("--sync-port", type=PORT, default=0, metavar="PORT",
                            help="port of the sync WebSocket server (default: a free one)")

    def run(self, args: argparse.Namespace) -> int:
        """Check every setting the demo reads (one line, exit 2, nothing started), then run
        it until Ctrl-C."""
        from c360.dev.broker import check_port
        from c360.topics.admin import check_reachable

        if args.port and args.port == args.sync_port:
            raise C360Error(f"--port and --sync-port are both {args.port}: give two ports")
        check_port(args.port, "--port")
        check_port(args.sync_port, "--sync-port")
        settings = Settings.from_env()
        _check_logins()
        _check_tokens()
        if settings.bootstrap:
            check_reachable(settings)
        else:
            check_port(settings.broker_port, "C360_BROKER_PORT")

        from dashboards.demo import run_demo

        return run_demo(port=args.port, customers=args.customers, rate=args.rate,
                        show=not args.no_browser, sync_port=args.sync_port, settings=settings)


def _check_logins() -> None:
    """The dashboard's users (C360_DASHBOARD_USERS) and their scopes (C360_DASHBOARD_SCOPES),
    which only the dashboard reads."""
    users = os.environ.get("C360_DASHBOARD_USERS", "").strip()
    scopes = os.environ.get("C360_DASHBOARD_SCOPES", "").strip()
    if not (users or scopes):
        return  # none configured: nothing to check, and dashboards.access imports c360.sync
    from dashboards.access import check_users, load_scopes

    check_users(users)
    if scopes:
        load_scopes(scopes)


def _check_tokens() -> None:
    """Sync tokens (C360_TOKENS_FILE / C360_TOKENS): readable and valid, before the sync
    server that would serve them starts."""
    if not (os.environ.get("C360_TOKENS_FILE", "").strip()
            or os.environ.get("C360_TOKENS", "").strip()):
        return  # none configured: nothing to check, and c360.sync's imports take ~1 s
    from c360.sync import TokenBook

    TokenBook.from_env()


demo = Demo()
