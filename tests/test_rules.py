"""Business rules: per rule, a scripted story gives exactly the expected decisions, with
their explanation; opted-out customers get no marketing; segments enter and leave."""

from __future__ import annotations

from datetime import timedelta

from c360.entity.derive import EntityHooks
from c360.entity.logic import first_logic
from c360.entity.rules import Decision, RuleBook, decide
from c360.entity.segments import SegmentBook
from c360.entity.shard import Routed, Shard
from c360.model import events as ev
from c360.model.delta import Delta, Lifecycle
from tests.factories import CAT, at, message, run

C = "cust-1"


class Story:
    """Events applied one by one to a shard, as the dataflow does (its own rules, product
    index and segments: the built-in ones unless given)."""

    def __init__(self, rules: RuleBook | None = None,
                 segments: SegmentBook | None = None) -> None:
        self.shard = Shard(EntityHooks(rule_book=rules or RuleBook.builtin(),
                                       segment_book=segments or SegmentBook.builtin()))
        self.decisions: list[Decision] = []
        self.out: list[Delta | Lifecycle] = []
        self.n = 0

    def __call__(self, stream: str, seconds: float, **fields: object) -> list[Decision]:
        self.n += 1
        schema = CAT.by_name[stream].schema
        key = CAT.by_name[stream].key_field
        fields.setdefault(key, C)
        event = schema(event_id=f"e{self.n}", event_time=at(seconds), **fields)
        kind = "customer" if key == "customer_id" else "product"
        made: list[Decision] = []
        deltas, failed = self.shard.apply(
            [Routed(stream, kind, fields[key], event, ("t", 0, self.n))], first_logic, made)
        assert failed == []
        self.decisions += made
        self.out += deltas
        return made

    @property
    def entity(self) -> dict:
        return self.shard.entity(C) or {}


def only(made: list[Decision]) -> Decision:
    assert len(made) == 1, made
    return made[0]


def signup(s: Story, opt_in: bool = True) -> None:
    s("customer_details", 0, name="Ana")
    s("tp_demographics", 1, age=30, marketing_opt_in=opt_in)


def product(s: Story, pid: str, t: float, sub: str = "raincoats",
            stock: dict[str, int] | None = None) -> None:
    s("products", t, product_id=pid, name=pid, category="fashion", subcategory=sub,
      brand="Aurora", price=200.0)
    s("inventory", t, product_id=pid,
      stock=[ev.StoreStock(k, v) for k, v in (stock or {"store-sp-paulista": 3}).items()])


def test_loyalty_tier_upgrade_and_downgrade_explained() -> None:
    s = Story()
    signup(s)
    assert s("loyalty", 10, points_earned=500) == []  # bronze from the start: no change
    d = only(s("loyalty", 20, points_earned=600))
    assert (d.rule, d.action, d.fields) == ("loyalty_tier_change", "tier_upgrade",
                                            ["loyalty_tier", "loyalty_points"])
    assert d.reason == "loyalty tier bronze -> silver (1100 points)"
    assert d.event_ids == ["e4"] and d.at == at(20) and d.customer_id == C
    d = only(s("loyalty", 30, points_redeemed=500))
    assert d.action == "tier_downgrade" and "silver -> bronze" in d.reason
    assert s.entity["decisions"][0]["action"] == "tier_downgrade"  # newest first
    types = [e.type for e in s.out if isinstance(e, Lifecycle)]
    assert types.count("decision") == 2 and types.count("rule_fired") == 2


def test_wishlist_item_back_in_stock_once_per_restock() -> None:
    s = Story()
    signup(s)
    product(s, "p1", 2, stock={"store-sp-paulista": 0})
    s("wishlist", 3, product_id="p1")
    assert s("search", 4, event_type="search", query="coat", results=3) == []
    s("inventory", 100, product_id="p1", stock=[ev.StoreStock("store-sp-paulista", 5)])
    d = only(s("search", 110, event_type="search", query="coat", results=3))
    assert (d.rule, d.action, d.key) == ("wishlist_back_in_stock", "offer_wishlist_item", "p1")
    assert d.fields == ["wishlist", "catalog.stock"]
    assert d.event_ids == ["e8", "e7"]  # this event, and the inventory event that restocked
    assert s("search", 120, event_type="search", query="coat", results=3) == []  # deduped


def test_rain_forecast_with_rain_gear_wishlisted() -> None:
    s = Story()
    signup(s)
    product(s, "coat", 2)
    product(s, "pan", 2, sub="cookware")
    s("wishlist", 3, product_id="pan")
    assert s("weather", 4, event_type="forecast", temperature=18, condition="rain") == []
    s("wishlist", 5, product_id="umbrella")  # not in the catalogue: nothing to offer
    assert s("weather", 6, event_type="observation", temperature=18, condition="rain") == []
    d = only(s("weather", 7, event_type="forecast", temperature=18, condition="storm")
             + s("wishlist", 8, product_id="coat"))  # the forecast came first, then the coat
    assert (d.rule, d.action, d.key, d.fields) == ("rain_gear", "offer_rain_gear", "coat",
                                                   ["weather", "wishlist"])
    assert "storm forecast" in d.reason and d.event_ids == ["e12"]  # the wishlist event
    assert s("weather", 9, event_type="forecast", temperature=18, condition="rain") == []


def test_near_a_store_that_stocks_a_viewed_item() -> None:
    s = Story()
    signup(s)
    product(s, "shoe", 2, sub="sneakers", stock={"store-sp-paulista": 2, "store-bh-savassi": 0})
    s("search", 3, event_type="view", product_id="shoe")
    assert s("location", 4, latitude=-23.60, longitude=-46.70) == []  # kilometres away
    d = only(s("location", 5, latitude=-23.5615, longitude=-46.6560))
    assert (d.rule, d.key) == ("near_store_with_viewed_item", "store-sp-paulista:shoe")
    assert d.fields == ["location", "recent_views"]
    assert s("location", 6, latitude=-19.9380, longitude=-43.9370) == []  # no stock there


def test_physical_event_nearby_matching_interests() -> None:
    s = Story()
    signup(s)
    s("tp_psychographics", 2, interests=["music", "reading"])
    assert s("physical_events", 3, venue_event_id="v1", kind="sports", starts_at=at(9000),
             distance_km=1.0) == []
    assert s("physical_events", 4, venue_event_id="v2", kind="concert", starts_at=at(9000),
             distance_km=12.0) == []
    d = only(s("physical_events", 5, venue_event_id="v3", kind="concert", name="DJ",
               starts_at=at(9000), distance_km=2.5))
    assert (d.rule, d.key, d.fields) == ("event_nearby", "v3",
                                         ["nearby_events", "psychographics"])
    assert "matches interest music" in d.reason


def test_abandoned_search_and_cart() -> None:
    s = Story()
    signup(s)
    s("search", 100, event_type="search", query="tent", results=4)
    assert s("location", 1000, latitude=1, longitude=1) == []  # 15 minutes: not yet
    d = only(s("location", 100 + 1800, latitude=1, longitude=1))
    assert (d.rule, d.action, d.fields) == ("abandoned_search", "remind_search",
                                            ["recent_searches", "recent_views"])
    s("search", 2000, event_type="view", product_id="p9")  # looked at something after all
    s("search", 2001, event_type="add_to_cart", product_id="p9")
    assert s("location", 2100, latitude=1, longitude=1) == []
    d = only(s("location", 2001 + 3600, latitude=1, longitude=1))
    assert (d.rule, d.action, d.fields) == ("abandoned_cart", "remind_cart", ["cart"])
    assert s("location", 2001 + 3700, latitude=1, longitude=1) == []  # cool-down


def test_service_escalation_for_valuable_customers_only() -> None:
    s = Story()
    signup(s)
    assert s("reviews", 10, review_id="r1", rating=1) == []  # not (yet) valuable
    s("payments", 20, order_id="o1", payment_date=at(20), method="card", amount=1500.0)
    d = only(s("reviews", 30, review_id="r2", rating=2, text="broken"))
    assert (d.rule, d.action) == ("service_escalation", "escalate_to_service")
    assert d.fields == ["lifetime_value", "loyalty_tier", "last_review"]
    assert "2-star review" in d.reason and not d.marketing
    assert s("reviews", 40, review_id="r3", rating=5) == []
    d = only(s("returns", 50, return_id="x1", order_id="o1", product_id="p1"))
    assert d.fields[-1] == "recent_returns" and "a return" in d.reason


def test_payment_anomaly() -> None:
    s = Story()
    signup(s)
    for i in range(4):
        assert s("payments", 10 + i, order_id=f"o{i}", payment_date=at(10 + i), method="card",
                 amount=50.0) == []
    d = only(s("payments", 20, order_id="o9", payment_date=at(20), method="card", amount=900.0))
    assert (d.rule, d.action, d.key) == ("payment_anomaly", "review_payment", "o9")
    assert "18.0x" in d.reason


def test_churn_risk_decision_and_segment() -> None:
    s = Story()
    signup(s)
    s("orders", 10, order_id="o1", order_date=at(10), status="created", total_amount=10.0)
    s("social", 20, event_type="post", sentiment=-0.5)
    assert [d.rule for d in s("location", 40 * 86400, latitude=1, longitude=1)] == []
    d = only(s("location", 80 * 86400, latitude=1, longitude=1))
    assert (d.rule, d.action) == ("churn_risk", "retention_offer")
    assert s.entity["churn_risk"] >= 0.7 and "at_risk" in s.entity["segments"]


def test_opted_out_customers_get_service_decisions_but_no_offers() -> None:
    for opt_out in ("third_party", "command"):
        s = Story()
        signup(s, opt_in=opt_out != "third_party")
        if opt_out == "command":  # the sync server's opt_out_marketing command sets this
            s.shard.entities[C].fields["marketing_opt_out"] = True
        product(s, "coat", 2)
        s("wishlist", 3, product_id="coat")
        s("tp_psychographics", 2, interests=["music"])
        assert s("weather", 4, event_type="forecast", temperature=18, condition="rain") == []
        assert s("physical_events", 5, venue_event_id="v3", kind="concert",
                 starts_at=at(9000), distance_km=2.5) == []
        s("search", 100, event_type="search", query="tent", results=4)
        assert s("location", 4000, latitude=1, longitude=1) == []
        s("payments", 5000, order_id="o1", payment_date=at(5000), method="card", amount=1500.0)
        d = only(s("reviews", 5001, review_id="r2", rating=1))
        assert d.rule == "service_escalation"  # service still reaches them
        assert all(not d.marketing for d in s.decisions)


def test_a_rule_added_from_a_notebook_runs_and_can_be_removed() -> None:
    book = RuleBook.builtin()

    @book.rule("big_basket", cooldown=timedelta(days=7), marketing=True, streams={"orders"})
    def big_basket(c, changes, event):
        if event.total_amount > 1000:
            return decide("thank_you_voucher", "an order over 1000", ["recent_orders"])
        return None

    assert "big_basket" in book and "big_basket" not in RuleBook.builtin()
    s = Story(book)
    signup(s)
    d = only(s("orders", 10, order_id="o1", order_date=at(10), status="created",
               total_amount=1200.0))
    assert (d.rule, d.action, d.event_ids) == ("big_basket", "thank_you_voucher", ["e3"])
    book.remove("big_basket")  # from the next event on, also on a shard that ran it
    assert s("orders", 20, order_id="o2", order_date=at(20), status="created",
             total_amount=1300.0) == []
    assert "big_basket" not in book and len(book) == len(RuleBook.builtin())


def test_a_segment_added_to_a_book_keeps_its_members_live() -> None:
    segments = SegmentBook.builtin()
    calls = []

    @segments.segment("big_spender", fields=("total_spent",))
    def big_spender(c):
        calls.append(c["total_spent"])
        return c["total_spent"] >= 500

    s = Story(segments=segments)
    signup(s)
    s("payments", 10, order_id="o1", payment_date=at(10), method="card", amount=100.0)
    assert s.entity["segments"] == ["new"]
    s("payments", 20, order_id="o2", payment_date=at(20), method="card", amount=600.0)
    assert s.entity["segments"] == ["big_spender", "new"]
    assert calls == [100.0, 700.0]  # only on events that changed the field it reads
    segments.remove("big_spender")
    s("payments", 30, order_id="o3", payment_date=at(30), method="card", amount=10.0)
    assert calls == [100.0, 700.0] and "big_spender" not in SegmentBook.builtin()


def test_segments_enter_and_leave_as_deltas_and_lifecycle() -> None:
    s = Story()
    signup(s)
    assert s.entity["segments"] == ["new"]
    s("payments", 10, order_id="o1", payment_date=at(10), method="card", amount=2500.0)
    assert s.entity["segments"] == ["new", "vip"]
    s("location", 40 * 86400, latitude=1, longitude=1)
    assert "new" not in s.entity["segments"]
    events = [(e.type, e.detail["segment"]) for e in s.out
              if isinstance(e, Lifecycle) and e.type.startswith("segment")]
    assert events == [("segment_entered", "new"), ("segment_entered", "vip"),
                      ("segment_left", "new")]
    changed = [d.changes["segments"] for d in s.out
               if isinstance(d, Delta) and "segments" in d.changes]
    assert changed == [["new"], ["new", "vip"], ["vip"]]


def test_decisions_reach_the_decisions_sink_in_the_flow() -> None:
    msgs = [message(CAT, "customer_details", ev.CustomerDetails(
                event_id="d1", event_time=at(0), customer_id=C, name="Ana"), 0),
            *(message(CAT, "loyalty", ev.Loyalty(event_id=f"l{i}", event_time=at(i + 1),
                                                customer_id=C, points_earned=600), i)
              for i in range(2))]
    out: list = []
    from bytewax.testing import TestingSink
    store, _ = run(msgs, 1, decisions_sink=TestingSink(out))
    assert len(out) == 1
    assert b'"rule":"loyalty_tier_change"' in out[0].value and out[0].key == C.encode()
    assert store[C]["decisions"][0]["rule"] == "loyalty_tier_change"
