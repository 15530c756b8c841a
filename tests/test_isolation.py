"""Two pipelines in one process (one notebook kernel) keep their own rules, segments and
product stock: a rule, a segment or a restock of one is never seen by the other (issue 15).

Before, the rules, the segments and the product index were module globals: a rule a
notebook added ran in every pipeline of the kernel, and an offer rule of one pipeline read
the stock another pipeline's products had left in the shared index."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from kafka import KafkaProducer

from c360.config import Settings
from c360.entity.derive import EntityHooks
from c360.entity.logic import first_logic
from c360.entity.rules import Decision, decide
from c360.entity.shard import Routed, Shard
from c360.model import events as ev
from c360.model.events import Catalogue, encode
from c360.run.pipeline import Pipeline
from c360.store.memory import EntityStore
from tests.factories import CAT, at

C = "ana"


def big_basket(c: Any, changes: Any, event: Any) -> Decision | None:
    if "order_count" in changes and event.total_amount >= 1000:
        return decide("thank_you_voucher", f"an order of {event.total_amount:.2f}",
                      ["order_count"], key=event.order_id)
    return None


def _signup(t: float) -> list[tuple[str, ev.Event]]:
    return [("customer_details", ev.CustomerDetails(event_id="d1", event_time=at(t),
                                                     customer_id=C, name="Ana")),
            ("tp_demographics", ev.Demographics(event_id="d2", event_time=at(t + 1),
                                                customer_id=C, marketing_opt_in=True)),
            ("products", ev.Product(event_id="p1", event_time=at(t + 2), product_id="coat",
                                    name="coat", category="fashion", subcategory="raincoats",
                                    brand="Aurora", price=200.0)),
            ("inventory", ev.Inventory(event_id="i1", event_time=at(t + 3), product_id="coat",
                                       stock=[ev.StoreStock("store-sp-paulista", 0)])),
            ("wishlist", ev.Wishlist(event_id="w1", event_time=at(t + 4), customer_id=C,
                                     product_id="coat"))]


RESTOCK = ("inventory", ev.Inventory(event_id="i2", event_time=at(100), product_id="coat",
                                     stock=[ev.StoreStock("store-sp-paulista", 5)]))
LATER = [("search", ev.Search(event_id="s1", event_time=at(200), customer_id=C,
                              event_type="search", query="coat", results=3)),
         ("orders", ev.Order(event_id="o1", event_time=at(300), customer_id=C, order_id="o1",
                             order_date=at(300), status="created", total_amount=1500.0,
                             lines=[ev.OrderLine("tv", 1, 1500.0)]))]


class _Folded:
    """A pipeline's fold without Kafka: a customer shard and a product shard with the
    pipeline's hooks, as the dataflow builds them (one hooks object for every shard)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.shards = {kind: Shard(pipeline.hooks) for kind in ("customer", "product")}
        self.decisions: list[Decision] = []
        self.n = 0

    def feed(self, events: list[tuple[str, ev.Event]]) -> None:
        for stream, event in events:
            self.n += 1
            kind = "customer" if CAT.by_name[stream].key_field == "customer_id" else "product"
            routed = Routed(stream, kind, ev.key_of(event), event, ("t", 0, self.n))
            _, failed = self.shards[kind].apply([routed], first_logic, self.decisions)
            assert failed == []

    def fired(self) -> list[tuple[str, str]]:
        return [(d.rule, d.key) for d in self.decisions]

    def segments(self) -> list[str]:
        return (self.shards["customer"].entity(C) or {}).get("segments", [])


def test_two_pipelines_in_one_process_keep_their_own_rules_stock_and_segments() -> None:
    shared = EntityHooks(sweep_per_batch=0)  # one hooks object given to both: copied
    one = Pipeline(Settings(), hooks=shared)
    two = Pipeline(Settings(), hooks=shared)
    one.rule("big_basket", cooldown=timedelta(days=7), marketing=True,
             streams={"orders"})(big_basket)
    one.segment("wishful", fields=("wishlist",))(lambda c: bool(c.get("wishlist")))
    assert one.hooks.rule_book is one.rules and two.hooks.rule_book is two.rules
    assert one.hooks.sweep_per_batch == two.hooks.sweep_per_batch == 0  # settings kept
    assert shared.rule_book is not one.rules and "big_basket" not in shared.rule_book

    a, b = _Folded(one), _Folded(two)
    for f in (a, b):
        f.feed(_signup(0))
    a.feed([RESTOCK])  # the coat is back in stock in the first pipeline's shop only
    for f in (a, b):
        f.feed(LATER)

    assert a.fired() == [("wishlist_back_in_stock", "coat"), ("big_basket", "o1")]
    assert b.fired() == []
    assert one.rules.products.by_id["coat"].stock == {"store-sp-paulista": 5}
    assert two.rules.products.by_id["coat"].stock == {"store-sp-paulista": 0}
    assert one.rules.products.restocks == 1 and two.rules.products.restocks == 0
    assert "wishful" in a.segments() and "wishful" not in b.segments()
    assert "big_basket" not in two.rules and "wishful" not in two.segments


def test_the_books_are_not_in_the_shard_snapshot() -> None:
    """A snapshot holds entities, never rules (code), settings or the product index; the
    resumed shard folds with the books of the pipeline that resumes it."""
    from c360.entity.codec import decode_shard, encode_shard

    pipeline = Pipeline(Settings())
    pipeline.rule("big_basket", streams={"orders"})(big_basket)
    folded = _Folded(pipeline)
    folded.feed(_signup(0) + [RESTOCK])
    fresh = Pipeline(Settings())
    for shard in folded.shards.values():
        data = encode_shard("customer", shard)
        assert b"big_basket" not in data and b"RuleBook" not in data
        assert b"SegmentBook" not in data and b"ProductIndex" not in data
        _, again = decode_shard(data, fresh.hooks, timedelta(hours=1))
        assert again.entities.keys() == shard.entities.keys()
        assert "big_basket" not in again.hooks.rule_book  # the resuming pipeline's books


def _produce(settings: Settings, events: list[tuple[str, ev.Event]]) -> None:
    cat = Catalogue(settings.topic_prefix)
    producer = KafkaProducer(**settings.kafka_python())
    for stream, event in events:
        producer.send(cat.topic(stream), key=ev.key_of(event).encode(), value=encode(event))
    producer.flush()
    producer.close()


def _has(entity_id: str, test: Callable[[dict[str, Any]], bool]
         ) -> Callable[[EntityStore], bool]:
    return lambda s: test(s.get(entity_id) or {})


def test_two_running_pipelines_on_kafka_do_not_share_rules_or_stock(settings: Settings) -> None:
    """The same, end to end: two pipelines running at once in this process, each on its own
    topics; only the first has the rule and sees the restock."""
    other = dataclasses.replace(settings, topic_prefix=f"t{uuid.uuid4().hex[:8]}.")
    one, two = Pipeline(settings), Pipeline(other)  # start() creates the topics
    one.rule("big_basket", cooldown=timedelta(days=7), marketing=True,
             streams={"orders"})(big_basket)
    with one, two:
        for s in (settings, other):
            _produce(s, _signup(0))
        _produce(settings, [RESTOCK])
        one.store.wait_until(_has("coat", lambda p: p.get("stock") == {"store-sp-paulista": 5}),
                             timeout=120, what="the restock")
        for p, s in ((one, settings), (two, other)):
            p.store.wait_until(_has(C, lambda c: bool(c.get("wishlist"))), timeout=120,
                               what="the wishlist")
            _produce(s, LATER)
        for p in (one, two):
            p.store.wait_until(_has(C, lambda c: c.get("order_count") == 1), timeout=120,
                               what="the order")
    fired = {p: sorted((d["rule"], d["key"]) for d in p.store[C].get("decisions") or ())
             for p in (one, two)}
    assert fired[one] == [("big_basket", "o1"), ("wishlist_back_in_stock", "coat")]
    assert fired[two] == []
    assert two.rules.products.by_id["coat"].stock == {"store-sp-paulista": 0}
