"""Live entity sync: real WebSocket clients against the sync server, real Kafka underneath.

The "raw" clients here use only ``websockets``, ``jsonpatch`` and ``json`` -- what a
program outside the network would use -- so they check the protocol, not c360's client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import jsonpatch
import msgspec
import pytest
import websockets

import c360
from c360.dev.simulator import simulate
from c360.model.delta import Delta, Lifecycle
from c360.run.pipeline import Pipeline
from c360.store.memory import EntityStore
from c360.sync import Limits, SyncServer, TokenBook

LOYALTY = ["loyalty_points", "loyalty_tier", "loyalty_program_tier"]
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def normalised(entity: dict[str, Any]) -> dict[str, Any]:
    """The entity as JSON would carry it (datetimes as ISO strings), without its version."""
    return json.loads(msgspec.json.encode({k: v for k, v in entity.items() if k != "version"}))


def wait_for(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(0.02)


class RawClient:
    """A sync client made of websockets + jsonpatch only, run in its own thread."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url, self.token = url, token
        self.copies: dict[str, Any] = {}
        self.versions: dict[str, int] = {}
        self.messages: list[dict[str, Any]] = []
        self.gaps = 0
        self.unapplied: list[tuple[dict[str, Any], str]] = []
        self._loop = asyncio.new_event_loop()
        self._ws: Any = None
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        self._call(self._open())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(20)

    async def _open(self) -> None:
        self._ws = await websockets.connect(self.url, max_size=None)
        if self.token is not None:
            await self._ws.send(json.dumps({"type": "auth", "token": self.token}))
        self._loop.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self._ws:
            m = json.loads(raw)
            self.messages.append(m)
            if m["type"] == "snapshot":
                self.copies[m["entity"]] = m["data"]
                self.versions[m["entity"]] = m["version"]
            elif m["type"] == "patch":
                eid = m["entity"]
                if self.versions.get(eid) != m["from"]:
                    self.gaps += 1
                    continue
                try:
                    self.copies[eid] = jsonpatch.apply_patch(self.copies[eid], m["ops"])
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException,
                        TypeError) as exc:  # a patch that cannot apply: a protocol bug
                    self.unapplied.append((m, repr(exc)))
                    continue
                self.versions[eid] = m["version"]

    def send(self, **message: Any) -> None:
        self._call(self._ws.send(json.dumps(message)))

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in list(self.messages) if m["type"] == kind]

    def close(self) -> None:
        self._call(self._ws.close())
        self._loop.call_soon_threadsafe(self._loop.stop)


@pytest.fixture()
def tokens() -> TokenBook:
    return TokenBook.from_tokens({
        "admin": {"name": "admin", "pii": True, "commands": ["*"]},
        "loyalty": {"name": "loyalty", "fields": LOYALTY, "commands": ["grant_points"]},
    })


def test_raw_clients_converge_on_100_live_customers_and_field_filters_hold(settings,
                                                                           tokens) -> None:
    stop = threading.Event()
    with Pipeline(settings) as pipeline, SyncServer(pipeline.store, tokens, settings) as server:
        store = pipeline.store
        sim = threading.Thread(target=simulate, args=(settings,), daemon=True,
                               kwargs=dict(customers=150, rate=2000, duration=30, seed=3,
                                           progress=False, stop=stop))
        sim.start()
        wait_for(lambda: store.count() >= 100, what="100 customers")
        ids = sorted(store.ids())[:100]
        full, narrow = RawClient(server.url, "admin"), RawClient(server.url, "loyalty")
        for eid in ids:
            full.send(type="sync", entity=eid)
            narrow.send(type="sync", entity=eid, fields=LOYALTY)
        time.sleep(3)  # patches flow while the simulator runs
        stop.set()
        sim.join(60)
        # The store's final state, logically: no more deltas once the dataflow has stopped
        # (two equal polls 20 ms apart were no proof: a busy dataflow was still draining).
        pipeline.stop()
        final = {eid: store.get(eid)["version"] for eid in ids}
        wait_for(lambda: all(full.versions.get(e) == v and narrow.versions.get(e) == v
                             for e, v in final.items()), 60, "clients at the store's versions")
        assert full.gaps == 0
        patches = full.of_type("patch")
        assert len(patches) > 100
        for eid in ids:
            assert full.copies[eid] == normalised(store.get(eid)), eid
        # The narrow client saw only the loyalty fields, at the same versions.
        allowed = {"/" + f for f in LOYALTY}
        narrow_patches = narrow.of_type("patch")
        assert narrow_patches
        for m in narrow_patches:
            assert {op["path"] for op in m["ops"]} <= allowed, m
        for eid in ids:
            e = store.get(eid)
            assert narrow.copies[eid] == {k: v for k, v in normalised(e).items()
                                          if k in ("id", "kind", *LOYALTY)}
        full.close()
        narrow.close()


def test_a_command_is_applied_once_acked_with_its_version_and_seen_by_every_subscriber(
        settings, tokens) -> None:
    with Pipeline(settings) as pipeline, SyncServer(pipeline.store, tokens, settings) as server:
        simulate(settings, customers=5, rate=0, events=200, seed=5, progress=False)
        store = pipeline.store
        wait_for(lambda: store.count() == 5, what="5 customers")
        eid = sorted(store.ids())[0]
        sender, watcher = RawClient(server.url, "loyalty"), RawClient(server.url, "admin")
        for c in (sender, watcher):
            c.send(type="sync", entity=eid)
            wait_for(lambda c=c: eid in c.versions, what="snapshot")
        # Refused before anything is produced: unknown name, bad args, not in the scope.
        sender.send(type="command", id="bad1", entity=eid, name="launch", args={})
        sender.send(type="command", id="bad2", entity=eid, name="grant_points",
                    args={"points": -5})
        sender.send(type="command", id="bad3", entity=eid, name="add_note", args={"text": "x"})
        wait_for(lambda: len(sender.of_type("error")) == 3, what="3 errors")
        codes = {m["id"]: m["code"] for m in sender.of_type("error")}
        assert codes == {"bad1": "forbidden", "bad2": "bad_args", "bad3": "forbidden"}
        before = store.get(eid).get("loyalty_points", 0)
        sender.send(type="command", id="c1", entity=eid, name="grant_points",
                    args={"points": 250})
        wait_for(lambda: sender.of_type("ack"), what="the ack")
        ack = sender.of_type("ack")[0]
        assert ack["id"] == "c1" and ack["entity"] == eid
        version = ack["version"]
        for c in (sender, watcher):
            wait_for(lambda c=c: c.versions[eid] >= version, what="the applied version")
            assert c.copies[eid]["loyalty_points"] == before + 250
        time.sleep(1)  # a second application would show up by now
        assert store.get(eid)["loyalty_points"] == before + 250
        assert store.get(eid)["version"] == version
        # The Python client: the same, through c360.connect, plus the admin's other commands.
        with c360.connect(server.url, "admin") as replica:
            replica.sync(eid)
            v2 = replica.command(eid, "add_note", text="called about the refund")
            assert replica.versions[eid] >= v2
            assert replica.entities[eid]["notes"][0]["text"] == "called about the refund"
            assert replica.entities[eid]["notes"][0]["by"] == "admin"
            replica.command(eid, "opt_out_marketing")
            replica.command(eid, "mark_contacted", channel="phone")
            assert replica.entities[eid]["marketing_opt_out"] is True
            assert replica.dataframe().loc[eid, "last_contact_channel"] == "phone"
        sender.close()
        watcher.close()


# -- in-memory store: scopes, flow control, resume -------------------------------------------

PII = {"name", "email", "phone", "address", "birthdate"}


def _seed(store: EntityStore, n: int = 30) -> None:
    deltas = []
    for i in range(n):
        eid = f"c{i:02d}"
        deltas.append(Delta(eid, "customer", 1, at(i), "customer_details", f"d{i}", {
            "name": f"PII-name-{i}", "email": f"PII-email-{i}", "phone": f"PII-phone-{i}",
            "address": {"city": f"PII-addr-{i}"}, "birthdate": f"PII-bd-{i}",
            "segments": ["vip"] if i < 10 else [], "loyalty_points": i, "order_count": i}))
    store.apply(deltas)


def test_ten_thousand_random_requests_never_leak_outside_scope() -> None:
    import random

    rng = random.Random(7)
    past = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    soon = (datetime.now(timezone.utc) + timedelta(seconds=1.5)).isoformat()
    scopes = {
        "narrow": {"fields": ["loyalty_points"], "entities": ["c01", "c02", "c11"]},
        "vip": {"entities": {"segment": "vip"}, "fields": ["loyalty_points", "email"]},
        "nopii": {"commands": ["grant_points"]},
        "expired": {"pii": True, "expires_at": past},
        "expiring": {"pii": True, "entities": ["c03"], "expires_at": soon},
    }
    book = TokenBook.from_tokens(scopes)
    store = EntityStore()
    _seed(store)
    stop = threading.Event()

    def churn() -> None:  # patches flow during the attempts; segments stay put
        v = 1
        while not stop.is_set():
            v += 1
            store.apply([Delta(f"c{i:02d}", "customer", v, at(v), "loyalty", f"l{i}-{v}",
                               {"loyalty_points": v, "email": f"PII-email-{i}-{v}",
                                "order_count": v}) for i in range(30)])
            time.sleep(0.01)

    presented = ["narrow", "vip", "nopii", "expired", "expiring", None, "wrong-token", ""]
    entities = [f"c{i:02d}" for i in range(30)] + ["*", "nobody"]
    fields = [None, ["loyalty_points"], ["email"], ["name", "loyalty_points"], ["order_count"]]

    def attempt() -> dict[str, Any]:
        kind = rng.choice(["sync", "resume", "command", "unsync"])
        m: dict[str, Any] = {"type": kind, "entity": rng.choice(entities)}
        if kind in ("sync", "resume"):
            m["fields"] = rng.choice(fields)
        if kind == "resume":
            m["from_version"] = rng.randint(0, 50)
        if kind == "command":
            m["name"] = rng.choice(["grant_points", "add_note", "nuke"])
            m["args"] = {"points": 5}
        return m

    # After its attempts, a connection of a token in scope syncs one entity it may see and
    # reads until that snapshot came: every reply and snapshot owed before it came too (both
    # queues are in order), however slowly a loaded machine gets there.
    last_sync = {"narrow": "c01", "vip": "c00", "nopii": "c05"}

    async def one(token: str | None, n: int, url: str) -> tuple[str | None, list, float]:
        received: list[tuple[float, dict]] = []
        async with websockets.connect(url, max_size=None) as ws:
            if token is not None:
                await ws.send(json.dumps({"type": "auth", "token": token}))
            last = last_sync.get(token or "")
            sent_all = asyncio.Event()

            async def read() -> None:
                start = time.monotonic()
                # expiring: reads on until the server said token_expired; a token in scope:
                # until its last sync's snapshot (after that sync's reply); others: 3 s.
                synced_last = done = last is None and token != "expiring"
                while True:  # 60 s: a generous bound, not a margin
                    waited = time.monotonic() - start
                    if waited > 60 or (waited > 3 and sent_all.is_set() and done):
                        break
                    try:
                        raw = await asyncio.wait_for(ws.recv(), 0.2)
                    except asyncio.TimeoutError:
                        continue
                    m = json.loads(raw)
                    received.append((time.time(), m))
                    if token == "expiring":
                        done = done or m.get("code") == "token_expired"
                    elif m["type"] == "synced" and m.get("id") == "last":
                        synced_last = True
                    elif synced_last and m["type"] == "snapshot" and m["entity"] == last:
                        done = True

            reader = asyncio.create_task(read())
            for _ in range(n):
                await ws.send(json.dumps(attempt()))
                await asyncio.sleep(0)
            if last is not None:
                await ws.send(json.dumps({"type": "sync", "entity": last, "id": "last"}))
            sent_all.set()
            await reader
        return token, received, time.time()

    async def all_clients(url: str) -> list:
        jobs = [one(presented[i % len(presented)], 200, url) for i in range(50)]
        return await asyncio.gather(*jobs)

    churner = threading.Thread(target=churn, daemon=True)
    with SyncServer(store, book, limits=Limits(tick=0.1)) as server:
        churner.start()
        results = asyncio.run(all_clients(server.url))
        stop.set()
    churner.join()
    data_messages = 0
    for token, received, _ in results:
        scope = scopes.get(token or "")
        for _, m in received:
            if m["type"] not in ("snapshot", "patch", "ack"):
                continue
            data_messages += 1
            assert scope is not None and token != "expired", (token, m)
            text = json.dumps(m)
            if not scope.get("pii"):
                assert "PII-" not in text, (token, m)
            ents = scope.get("entities", "*")
            if isinstance(ents, list):
                assert m["entity"] in ents, (token, m)
            elif isinstance(ents, dict):
                assert int(m["entity"][1:]) < 10, (token, m)
            if m["type"] == "ack":
                continue
            keys = (set(m["data"] or {}) if m["type"] == "snapshot"
                    else {op["path"][1:] for op in m["ops"]})
            allowed = set(scope.get("fields", []) or []) | {"id", "kind"}
            if "fields" in scope:
                assert keys <= allowed, (token, m)
        if token in (None, "wrong-token", "", "expired"):
            codes = {m.get("code") for _, m in received if m["type"] == "error"}
            assert codes & {"unauthenticated", "invalid_token", "token_expired"}
    # The in-scope requests did get data: on every connection of a token in scope, its last
    # sync's snapshot (logically implied), and with it whatever its attempts were owed.
    for token, received, _ in results:
        if token in last_sync:
            assert any(m["type"] == "snapshot" and m["entity"] == last_sync[token]
                       for _, m in received), token
    assert data_messages > len([r for r in results if r[0] in last_sync])
    # Expiry is judged by what the server did, not by when a busy machine delivered it: on
    # every connection of the expiring token, the server says token_expired once and sends no
    # data after it (scope is checked as each message is built; a receive-time margin failed
    # at random on a loaded 2-core machine).
    for tok, rec, _ in results:
        if tok != "expiring":
            continue
        kinds = [m["type"] if m["type"] != "error" else m.get("code") for _, m in rec]
        assert "token_expired" in kinds, kinds
        after = kinds[kinds.index("token_expired") + 1:]
        assert not set(after) & {"snapshot", "patch", "ack"}, after


def test_a_client_that_stops_reading_is_bounded_then_converges() -> None:
    store = EntityStore()
    _seed(store, 50)
    book = TokenBook.from_tokens({"admin": {"pii": True}})
    limits = Limits(max_pending=10)
    with SyncServer(store, book, limits=limits) as server:
        async def run() -> dict[str, Any]:
            async with websockets.connect(server.url, max_size=None, max_queue=4) as ws:
                await ws.send(json.dumps({"type": "auth", "token": "admin"}))
                await ws.send(json.dumps({"type": "sync", "entity": "*"}))
                # Stop reading; the store keeps changing, with big values to fill buffers.
                blob = "x" * 20_000
                for v in range(2, 400):
                    store.apply([Delta(f"c{i:02d}", "customer", v, at(v), "search", f"s{i}-{v}",
                                       {"search_count": v, "blob": blob + str(v)})
                                 for i in range(50)])
                    await asyncio.sleep(0)
                await asyncio.sleep(0.5)
                stats = server.stats()
                copies: dict[str, Any] = {}
                versions: dict[str, int] = {}
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    try:
                        m = json.loads(await asyncio.wait_for(ws.recv(), 1.0))
                    except asyncio.TimeoutError:
                        break
                    if m["type"] == "snapshot":
                        copies[m["entity"]], versions[m["entity"]] = m["data"], m["version"]
                    elif m["type"] == "patch":
                        assert versions[m["entity"]] == m["from"]
                        copies[m["entity"]] = jsonpatch.apply_patch(copies[m["entity"]],
                                                                    m["ops"])
                        versions[m["entity"]] = m["version"]
                return {"stats": stats, "copies": copies, "versions": versions}

        out = asyncio.run(run())
    stats = out["stats"]
    assert max(stats["pending"]) <= limits.max_pending
    # Whether the backlog overflowed into snapshots depends on how much the kernel's socket
    # buffers absorbed first (timing); the bound and the convergence are what must hold.
    for i in range(50):
        eid = f"c{i:02d}"
        assert out["versions"][eid] == 399
        assert out["copies"][eid] == normalised(store.get(eid))


def test_resume_sends_missed_patches_or_a_snapshot_and_segment_exits_unsync() -> None:
    store = EntityStore()
    _seed(store, 12)
    book = TokenBook.from_tokens({"admin": {"pii": True},
                                  "vip": {"entities": {"segment": "vip"}}})
    with SyncServer(store, book) as server:
        c = RawClient(server.url, "admin")
        c.send(type="sync", entity="c01")
        wait_for(lambda: c.versions.get("c01") == 1)
        for v in range(2, 7):
            store.apply([Delta("c01", "customer", v, at(v), "loyalty", f"r{v}",
                               {"loyalty_points": v})])
        wait_for(lambda: c.versions.get("c01") == 6)
        c.close()
        again = RawClient(server.url, "admin")
        again.copies["c01"], again.versions["c01"] = c.copies["c01"], 1
        again.send(type="resume", entity="c01", from_version=1)
        wait_for(lambda: again.versions.get("c01") == 6)
        assert not again.of_type("snapshot") and len(again.of_type("patch")) == 5
        assert again.copies["c01"] == normalised(store.get("c01"))
        again.close()
        for v in range(7, 100):  # more than the 64 versions held, while disconnected
            store.apply([Delta("c01", "customer", v, at(v), "loyalty", f"r{v}",
                               {"loyalty_points": v})])
        time.sleep(0.3)  # the server has seen them
        late = RawClient(server.url, "admin")
        late.copies["c01"], late.versions["c01"] = again.copies["c01"], 6
        late.send(type="resume", entity="c01", from_version=6)
        wait_for(lambda: late.versions.get("c01") == 99)
        assert len(late.of_type("snapshot")) == 1 and not late.of_type("patch")
        assert late.copies["c01"] == normalised(store.get("c01"))
        # A segment-scoped token: the entity leaves the segment -> unsynced, no more patches.
        seg = RawClient(server.url, "vip")
        seg.send(type="sync", entity="c02")
        seg.send(type="sync", entity="c11", id="out")
        wait_for(lambda: "c02" in seg.versions and seg.of_type("error"))
        assert seg.of_type("error")[0]["code"] == "forbidden"
        assert seg.copies["c02"]["name"] == "[redacted]"
        store.apply([Delta("c02", "customer", 2, at(2), "rules", "seg", {"segments": []})])
        wait_for(lambda: seg.of_type("unsynced"))
        store.apply([Delta("c02", "customer", 3, at(3), "loyalty", "x", {"loyalty_points": 1})])
        time.sleep(0.3)
        assert seg.versions["c02"] == 1 and not seg.of_type("patch")
        for client in (late, seg):
            client.close()


# -- what a token may learn, and what the server promises (issue 14: B1-B5, D1) -----------------

class _Story:
    """Real events through the real fold, rules and segments (in-process, no Kafka)."""

    def __init__(self, rules: Any = None) -> None:
        from c360.entity.derive import EntityHooks
        from c360.entity.shard import Shard

        self.shard = Shard(EntityHooks() if rules is None else EntityHooks(rule_book=rules))
        self.out: list[Delta | Lifecycle] = []
        self.n = 0

    def __call__(self, stream: str, seconds: float, **fields: Any) -> None:
        from c360.entity.logic import first_logic
        from c360.entity.shard import Routed
        from c360.model.events import Catalogue

        self.n += 1
        s = Catalogue("c360.").by_name[stream]
        fields.setdefault(s.key_field, "cust-1")
        event = s.schema(event_id=f"e{self.n}", event_time=at(seconds), **fields)
        deltas, failed = self.shard.apply(
            [Routed(stream, "customer", fields[s.key_field], event, ("t", 0, self.n))],
            first_logic, [])
        assert failed == []
        self.out += deltas


def _lifecycle(c: RawClient) -> list[dict[str, Any]]:
    return c.of_type("lifecycle")


def test_lifecycle_events_reveal_only_what_the_token_may_see() -> None:
    from c360.entity import rules

    def greet(c: Any, changes: Any, event: Any) -> rules.Decision:  # a notebook's rule
        return rules.decide("say_hello", f"hello {c['name']}", ["name"])

    rule_book = rules.RuleBook.builtin()  # a notebook's pipeline's rules
    rule_book.add("greet", greet, streams={"search"})
    story = _Story(rule_book)
    story("customer_details", 0, name="Ana", email="ana@example.com")
    story("tp_demographics", 1, age=30, marketing_opt_in=True)
    story("loyalty", 10, points_earned=500)
    story("loyalty", 20, points_earned=600)  # tier_upgrade: about loyalty fields only
    for i in range(4):
        story("payments", 30 + i, order_id=f"o{i}", payment_date=at(30 + i),
              method="card", amount=50.0)
    story("payments", 40, order_id="o9", payment_date=at(40), method="card",
          amount=900.0)  # review_payment: quotes the payments
    story("payments", 50, order_id="o10", payment_date=at(50), method="card",
          amount=2500.0)  # lifetime value >= 2000: enters segment vip
    story("reviews", 60, review_id="r1", rating=1)  # escalate: quotes the lifetime value
    story("search", 70, event_type="search", query="coat", results=3)  # greet: the name
    decayed = Lifecycle("cust-1", "customer", story.n, at(80), "decayed",
                        {"fields": ["category_affinity", "loyalty_points"]})
    book = TokenBook.from_tokens({
        "admin": {"pii": True},
        "loyalty": {"fields": LOYALTY},
        "seg": {"fields": [*LOYALTY, "segments"]},
        "nopii": {},
    })
    store = EntityStore()
    with SyncServer(store, book) as server:
        clients = {name: RawClient(server.url, name)
                   for name in ("admin", "loyalty", "seg", "nopii")}
        for c in clients.values():
            c.send(type="lifecycle", id="l")
            wait_for(lambda c=c: c.of_type("lifecycle_subscribed"), what="subscribed")
        store.apply([*story.out, decayed])
        # Logical end: a last event every token may see; the server keeps each connection's
        # lifecycle events in order, so whatever comes for the story came before it.
        store.apply([Lifecycle("zz-end", "customer", 1, at(99), "created", {"stream": "orders"})])
        for c in clients.values():
            wait_for(lambda c=c: any(m["entity"] == "zz-end" for m in _lifecycle(c)),
                     what="the last event")

        def decisions(name: str) -> dict[str, str]:
            return {m["detail"]["action"]: m["detail"]["reason"]
                    for m in _lifecycle(clients[name]) if m["event"] == "decision"}

        def events(name: str) -> set[str]:
            return {m["event"] for m in _lifecycle(clients[name])}

        admin = decisions("admin")
        # The story does make reasons that quote other fields (else this test proves nothing).
        assert {"tier_upgrade", "review_payment", "escalate_to_service",
                "say_hello"} <= set(admin), admin
        assert "lifetime value" in admin["escalate_to_service"]
        assert admin["say_hello"] == "hello Ana"
        assert {"segment_entered", "decayed"} <= events("admin")
        # A loyalty-only token: the decision about loyalty fields, nothing built from others.
        assert decisions("loyalty") == {"tier_upgrade": admin["tier_upgrade"]}
        fired = {m["detail"]["action"] for m in _lifecycle(clients["loyalty"])
                 if m["event"] == "rule_fired"}
        assert fired == {"tier_upgrade"}
        # A decayed event names only the fields the token may see (here one of two).
        assert events("loyalty") == {"created", "rule_fired", "decision", "decayed"}
        assert [m["detail"] for m in _lifecycle(clients["loyalty"])
                if m["event"] == "decayed"] == [{"fields": ["loyalty_points"]}]
        text = json.dumps(_lifecycle(clients["loyalty"]))
        for leak in ("lifetime value", "payment of", "Ana", "vip", "category_affinity"):
            assert leak not in text, leak
        # With `segments` in its fields, a token sees segment events.
        assert "segment_entered" in events("seg") and decisions("seg").keys() == {"tier_upgrade"}
        # Every field but no PII: a reason built from PII is redacted, like the field itself.
        nopii = decisions("nopii")
        assert nopii["say_hello"] == "[redacted]"
        assert nopii["escalate_to_service"] == admin["escalate_to_service"]
        assert "Ana" not in json.dumps(_lifecycle(clients["nopii"]))
        for c in clients.values():
            c.close()


@pytest.mark.parametrize("token, request_, expected", [
    ("narrow", {}, {"c01", "c02", "c11"}),
    ("vip", {}, {f"c{i:02d}" for i in range(10)}),
    ("admin", {"segment": "vip"}, {f"c{i:02d}" for i in range(10)}),
    ("admin", {}, {f"c{i:02d}" for i in range(30)}),
])
def test_wildcard_count_is_the_number_of_snapshots_the_token_gets(
        token: str, request_: dict[str, Any], expected: set[str]) -> None:
    store = EntityStore()
    _seed(store)
    book = TokenBook.from_tokens({"admin": {"pii": True},
                                  "narrow": {"entities": ["c01", "c02", "c11", "nobody"]},
                                  "vip": {"entities": {"segment": "vip"}}})
    with SyncServer(store, book) as server:
        c = RawClient(server.url, token)
        c.send(type="sync", entity="*", id="w", **request_)
        wait_for(lambda: c.of_type("synced"), what="synced")
        count = c.of_type("synced")[0]["count"]
        assert count == len(expected)
        wait_for(lambda: len(c.of_type("snapshot")) >= count, what=f"{count} snapshots")
        assert {m["entity"] for m in c.of_type("snapshot")} == expected
        c.close()


def _deep(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def test_malformed_requests_are_bad_requests_with_their_id_and_the_connection_lives(
        caplog: pytest.LogCaptureFixture) -> None:
    from websockets.sync.client import connect

    store = EntityStore()
    _seed(store, 3)
    frames = [
        ('{"type": "sync", "id": "a1", "entity": 5}', "a1"),  # a field of the wrong type
        ('{"type": "nope", "id": 7}', 7),  # an unknown type
        ('{"id": 8.5, "type": "sync", "entity": ', 8.5),  # not even JSON (cut short)
        ('{"type": "sync", "entity": "c01", "zz": 1, "id": "u"}', "u"),  # an unknown field
        ('{"type": "command", "entity": "c01", "name": "grant_points", "args": '
         + _deep(1_000) + ', "id": "deep"}', "deep"),  # B3: nested 1,000 deep
        ('{"id": "deeper", "type": "command", "entity": "c01", "name": "grant_points", '
         '"args": ' + _deep(100_000) + '}', "deeper"),  # 600 kB: the id in its first 64 kB
        ('{"type": "sync", "extra": ' + _deep(5_000) + ', "id": "x"}', "x"),
        ('{"type": "sync", "entity": {"id": "inner"}}', None),  # only a top-level id counts
        ('{"type": "sync", "entity": "c01", "id": [1]}', None),  # an id that is no id
        ('{"type": "sync", "entity": "c01", "id": "\\ud800"}', None),  # unencodable back
        ('[' * 3_000 + ']' * 3_000, None),
    ]
    book = TokenBook.from_tokens({"admin": {"pii": True}})
    caplog.set_level(logging.INFO)
    with SyncServer(store, book) as server, connect(server.url, max_size=None) as ws:
        ws.send(json.dumps({"type": "auth", "token": "admin", "id": 0}))
        assert json.loads(ws.recv(timeout=10))["type"] == "authenticated"
        for frame, _ in frames:
            ws.send(frame)
        ws.send(json.dumps({"type": "sync", "entity": "c01", "id": "after"}))
        got = [json.loads(ws.recv(timeout=10)) for _ in range(len(frames) + 2)]
        assert server.error is None
    for (frame, want), m in zip(frames, got[:len(frames)], strict=True):
        assert (m["type"], m["code"]) == ("error", "bad_request"), (frame[:80], m)
        assert m["id"] == want and type(m["id"]) is type(want), (frame[:80], m)
        assert m["message"] and len(m["message"]) < 500
    assert [m["type"] for m in got[len(frames):]] == ["synced", "snapshot"]
    assert got[-2]["id"] == "after"
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert noisy == [], [r.getMessage() for r in noisy]


def test_resume_from_version_0_or_from_before_the_servers_history_gives_a_copy_that_applies(
        ) -> None:
    store = EntityStore()
    # "old" is at version 5 before the server starts: the server never saw versions 1-5.
    store.apply([Delta("old", "customer", v, at(v), "loyalty", f"o{v}", {f"f{v}": v})
                 for v in range(1, 6)])
    book = TokenBook.from_tokens({"admin": {"pii": True}})
    with SyncServer(store, book) as server:
        watcher = RawClient(server.url, "admin")
        for eid in ("old", "new"):
            watcher.send(type="sync", entity=eid)
        wait_for(lambda: watcher.versions.get("old") == 5 and watcher.versions.get("new") == 0)
        store.apply([Delta("old", "customer", v, at(v), "loyalty", f"o{v}", {f"f{v}": v})
                     for v in (6, 7)])
        store.apply([Delta("new", "customer", v, at(v), "loyalty", f"n{v}", {f"g{v}": v})
                     for v in (1, 2, 3)])
        wait_for(lambda: watcher.versions.get("old") == 7 and watcher.versions.get("new") == 3,
                 what="the server saw every delta")
        c = RawClient(server.url, "admin")
        # The documented copy of an entity that did not exist yet, and a copy at version 3.
        c.copies["new"], c.versions["new"] = None, 0
        c.copies["old"], c.versions["old"] = {"id": "old", "kind": "customer",
                                              "f1": 1, "f2": 2, "f3": 3}, 3
        c.send(type="resume", entity="new", from_version=0, id="r-new")
        c.send(type="resume", entity="old", from_version=3, id="r-old")
        wait_for(lambda: len(c.of_type("resumed")) == 2, what="2 resumed")
        wait_for(lambda: c.versions.get("new") == 3 and c.versions.get("old") == 7
                 or bool(c.unapplied), what="the resumed copies")
        assert c.unapplied == [] and c.gaps == 0
        for eid in ("new", "old"):
            assert c.copies[eid] == normalised(store.get(eid)), eid
        resumed = {m["id"]: m for m in c.of_type("resumed")}
        assert resumed["r-new"]["snapshot"] is True and resumed["r-old"]["snapshot"] is True
        # Resuming from a version the server did see still comes as patches.
        again = RawClient(server.url, "admin")
        again.copies["old"], again.versions["old"] = dict(c.copies["old"]), 7
        store.apply([Delta("old", "customer", 8, at(8), "loyalty", "o8", {"f8": 8})])
        wait_for(lambda: watcher.versions.get("old") == 8)
        again.send(type="resume", entity="old", from_version=7)
        wait_for(lambda: again.versions.get("old") == 8)
        assert not again.of_type("snapshot") and again.copies["old"] == normalised(
            store.get("old"))
        for client in (watcher, c, again):
            client.close()


def _frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A masked client frame (RFC 6455 5.2), written by hand: no library between."""
    mask = os.urandom(4)
    n = len(payload)
    size = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
    return (bytes([0x80 | opcode]) + size + mask
            + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


def _read_frames(sock: socket.socket, frames: list[tuple[int, bytes]]) -> None:
    """Read server frames until the socket ends; never answer a ping."""
    buf = b""

    def need(n: int) -> bytes:
        nonlocal buf
        while len(buf) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise EOFError
            buf += chunk
        out, buf = buf[:n], buf[n:]
        return out

    try:
        while True:
            head = need(2)
            n = head[1] & 0x7F
            if n == 126:
                n = int.from_bytes(need(2), "big")
            elif n == 127:
                n = int.from_bytes(need(8), "big")
            frames.append((head[0] & 0x0F, need(n)))
    except (EOFError, OSError):
        pass


@pytest.mark.parametrize("reads", [False, True], ids=["reads-nothing", "reads-but-no-pong"])
def test_a_client_that_answers_no_ping_is_cut_after_the_ping_timeout(reads: bool) -> None:
    store = EntityStore()
    blob = "x" * 100_000  # 100 entities x 100 kB: more than the socket buffers hold
    store.apply([Delta(f"c{i:03d}", "customer", 1, at(i), "search", f"s{i}", {"blob": blob})
                 for i in range(100)])
    book = TokenBook.from_tokens({"admin": {"pii": True}})
    limits = Limits(ping_interval=0.2, ping_timeout=1.0, close_timeout=0.5, tick=0.05)
    with SyncServer(store, book, limits=limits) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)  # byte by byte: nothing past the handshake is read here
        assert head.startswith(b"HTTP/1.1 101"), head
        sock.sendall(_frame(b'{"type": "auth", "token": "admin"}')
                     + _frame(b'{"type": "sync", "entity": "*"}'))
        frames: list[tuple[int, bytes]] = []
        reader = threading.Thread(target=_read_frames, args=(sock, frames), daemon=True)
        if reads:
            reader.start()
        wait_for(lambda: server.stats()["disconnects"], timeout=30,
                 what="the server cut the connection")
        wait_for(lambda: server.stats()["connections"] == 0, timeout=30, what="no connection")
        (cut,) = server.stats()["disconnects"]
        assert cut["code"] == 1011 and "no pong" in cut["reason"], cut
        if reads:
            reader.join(30)
            # The client did get data and pings, and the close frame says why.
            opcodes = [op for op, _ in frames]
            assert 0x1 in opcodes and 0x9 in opcodes, opcodes[:20]
            assert frames[-1][0] == 0x8, opcodes[-5:]
            assert int.from_bytes(frames[-1][1][:2], "big") == 1011
        else:
            assert cut["unsent"] > 0  # the writer was stuck on a full socket buffer
        sock.close()


def _raw_connect(port: int) -> socket.socket:
    """A WebSocket connection opened by hand, with a small receive buffer; nothing read yet
    past the handshake."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Sec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)  # byte by byte: nothing past the handshake is read here
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def test_a_counted_entity_that_leaves_before_its_snapshot_comes_as_unsynced() -> None:
    store = EntityStore()
    blob = "x" * 100_000  # 100 x 100 kB: more than the kernel buffers take (4 MiB at most)
    ids = [f"c{i:03d}" for i in range(100)]
    store.apply([Delta(eid, "customer", 1, at(1), "search", f"s{eid}",
                       {"blob": blob, "segments": ["vip"]}) for eid in ids])
    book = TokenBook.from_tokens({"vip": {"entities": {"segment": "vip"}}})
    with SyncServer(store, book) as server:
        sock = _raw_connect(server.port)
        sock.sendall(_frame(b'{"type": "auth", "token": "vip"}')
                     + _frame(b'{"type": "sync", "entity": "*", "id": "w"}'))
        # The sync was handled (authenticated, synced, a first snapshot sent); the client
        # reads nothing, so most snapshots are still owed when every entity leaves "vip".
        wait_for(lambda: sum(server.stats()["sent"]) >= 3, what="the sync handled")
        store.apply([Delta(eid, "customer", 2, at(2), "rules", f"out{eid}", {"segments": []})
                     for eid in ids])
        frames: list[tuple[int, bytes]] = []
        threading.Thread(target=_read_frames, args=(sock, frames), daemon=True).start()

        def messages() -> list[dict[str, Any]]:
            return [json.loads(data) for op, data in list(frames) if op == 0x1]

        wait_for(lambda: {m["entity"] for m in messages() if m["type"] == "unsynced"}
                 >= set(ids), 60, "an unsynced for every entity")
        sock.close()
    got = messages()
    synced = next(m for m in got if m["type"] == "synced")
    assert synced["count"] == 100
    snapshots = {m["entity"] for m in got if m["type"] == "snapshot"}
    assert snapshots < set(ids)  # some snapshots were still owed when the entities left
    # Each counted entity came as a snapshot or as an unsynced: the client's count adds up.
    first = {}
    for m in got:
        if m["type"] in ("snapshot", "unsynced"):
            first.setdefault(m["entity"], m["type"])
    assert set(first) == set(ids)
    assert "unsynced" in first.values()
