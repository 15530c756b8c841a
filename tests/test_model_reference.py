"""The retail model declares every field the retail fold produces, with the type of its values;
docs/fields.md is generated from it; rules and segments name declared fields; the social
sentiment is computed once (the windows' decayed mean)."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from c360.dev.simulator import generate
from c360.entity import windows
from c360.entity.derive import EntityHooks
from c360.entity.logic import first_logic
from c360.entity.rules import CHURN_INPUTS, RuleBook
from c360.entity.segments import SegmentBook
from c360.entity.shard import Routed, Shard
from c360.model import declare as d
from c360.model import events as ev
from c360.model.commands import COMMANDS
from c360.model.delta import Delta
from c360.model.reference import reference
from c360.models.retail import REFERENCE, RETAIL, main
from c360.run.pipeline import check_names

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
ARGS: dict[str, dict[str, Any]] = {  # one of each command, with the arguments it takes
    "grant_points": {"points": 10}, "add_note": {"text": "called back"},
    "mark_contacted": {"channel": "phone"}, "opt_out_marketing": {},
    "send_offer": {"action": "retention_offer", "reason": "churn risk"},
}
Seen = dict[str, dict[str, list[Any]]]  # entity kind -> field -> values seen


def routed(stream: str, event: ev.Event, n: int) -> Routed:
    kind = "product" if stream in ("products", "inventory") else "customer"
    return Routed(stream, kind, ev.key_of(event), event, (stream, 0, n))


def fold_retail(events: int = 4_000) -> Seen:
    """Simulated events (25 customers, 10 minutes of event time each: about four weeks), a
    loyalty tier and every command, folded with the default hooks and first_logic, then
    aged 120 days past the end (months roll up, detail is evicted): every value seen."""
    items = [(s, e) for s, _, e in itertools.islice(
        generate(25, seed=5, start=START, tick=timedelta(minutes=10)), events)]
    end = max(e.event_time for _, e in items)
    who = next(ev.key_of(e) for s, e in items if s == "orders")
    tier = ev.Loyalty(event_id="tier", event_time=end, customer_id=who, points_earned=5,
                      tier="gold")
    later: list[tuple[str, ev.Event]] = [("loyalty", tier)]
    later += [("commands", ev.Command(event_id=f"cmd-{name}", event_time=end,
                                      customer_id=who, name=name, args=args,
                                      issued_by="test")) for name, args in ARGS.items()]
    assert set(ARGS) == set(COMMANDS)
    shard = Shard(EntityHooks(allowed_lateness=timedelta(hours=1)))
    seen: Seen = defaultdict(lambda: defaultdict(list))
    out = []
    batch = [routed(s, e, n) for n, (s, e) in enumerate([*items, *later])]
    for i in range(0, len(batch), 500):
        deltas, failed = shard.apply(batch[i:i + 500], first_logic)
        assert failed == []
        out += deltas
    out += shard.finish(as_of=(end + timedelta(days=120)).timestamp())
    for delta in out:
        if isinstance(delta, Delta):
            for name, value in delta.changes.items():
                seen[delta.kind][name].append(value)
    return seen


@pytest.fixture(scope="module")
def seen() -> Seen:
    return fold_retail()


def declared(kind: str) -> dict[str, d.Field]:
    return {f.name: f for f in RETAIL.fields if f.entity == kind}


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def type_of_value_ok(type_: str, v: Any) -> bool:
    """Whether ``v`` is a value of a field declared ``type_`` (None: forgotten or unset)."""
    if v is None:
        return True
    if type_ == "int":
        return type(v) is int
    if type_ in ("float", "share"):
        return type(v) is float and (type_ == "float" or 0.0 <= v <= 1.0)
    if type_ == "money":
        return type(v) is float and round(v, 2) == v  # cents
    if type_ in ("str", "bool", "list"):
        return type(v) is {"str": str, "bool": bool, "list": list}[type_]
    if type_ == "time":  # an aware datetime
        return isinstance(v, datetime) and v.tzinfo is not None
    if type_ == "date":  # a calendar day (as_of_day)
        return type(v) is date
    if type_ == "map":  # data as keys, numbers as values
        return isinstance(v, dict) and all(isinstance(k, str) and _number(x)
                                           for k, x in v.items())
    if type_ == "record":
        return isinstance(v, dict) and all(isinstance(k, str) for k in v)
    raise AssertionError(f"unknown type {type_!r}")


@pytest.mark.parametrize("kind", ["customer", "product"])
def test_every_field_the_retail_fold_produces_is_declared_and_every_declared_one_produced(
        seen: Seen, kind: str) -> None:
    produced, fields = set(seen[kind]), set(declared(kind))
    assert produced - fields == set(), "produced, not declared in c360/models/retail.py"
    assert fields - produced == set(), "declared, never produced"
    assert len(produced) == {"customer": 62, "product": 10}[kind]


@pytest.mark.parametrize("kind", ["customer", "product"])
def test_every_declared_fields_type_is_the_type_of_its_values(seen: Seen, kind: str) -> None:
    wrong = {name: sorted({type(v).__name__ for v in seen[kind][name]
                           if not type_of_value_ok(f.type, v)})
             for name, f in declared(kind).items()}
    assert {k: v for k, v in wrong.items() if v} == {}
    assert set(RETAIL.dtypes("customer")) >= {"order_count", "total_spent", "last_seen"}


def test_the_type_check_tells_the_types_apart() -> None:
    ok = type_of_value_ok
    assert ok("int", 3) and not ok("int", 3.0) and not ok("int", True)
    assert ok("money", 12.5) and not ok("money", 12.345) and not ok("money", 12)
    assert ok("share", 0.25) and not ok("share", 1.5)
    assert ok("time", START) and not ok("time", START.date()) and ok("date", START.date())
    assert not ok("time", START.replace(tzinfo=None)) and not ok("time", START.isoformat())
    assert ok("map", {"books": 1.5}) and not ok("map", {"books": {"n": 1}})
    assert ok("record", {"city": "Lyon"}) and not ok("record", ["Lyon"]) and ok("list", None)


def test_the_products_name_and_gender_are_fields_of_their_own() -> None:
    assert RETAIL.field("name", "product").pii is False
    assert RETAIL.field("name").pii is True
    assert RETAIL.field("gender", "product").description != RETAIL.field("gender").description


def test_the_model_holds_together_and_marks_todays_personal_data() -> None:
    assert RETAIL.check() is RETAIL
    assert RETAIL.pii_fields == {"name", "email", "phone", "address", "birthdate"}
    assert {f.name for f in RETAIL.fields_of("customer") if f.pii} == RETAIL.pii_fields
    assert RETAIL.money_fields >= {"lifetime_value", "total_spent", "spend_30d", "price"}
    assert all(isinstance(f.fold, d.Custom) for f in RETAIL.fields)


# What dashboards/text.py showed before it read the model (commit c78f6f4): the titles,
# money and shares of entity fields. spend_90d was listed there too; no fold produces it.
SHOWN_TITLES = {
    "tp_purchase_count": "Third-party purchases", "tp_spend": "Third-party spend",
    "marketing_opt_out": "Marketing opt-out", "last_contacted_at": "Last contacted",
    "last_contact_channel": "Contacted by", "avg_review_score": "Average review",
    "social_sentiment": "Social sentiment (7-day)", "last_social": "Last social post",
    "loyalty_tier": "Loyalty tier", "loyalty_program_tier": "Loyalty programme tier",
    "spend_1d": "Spend, 1 day", "spend_7d": "Spend, 7 days", "spend_30d": "Spend, 30 days",
    "orders_1d": "Orders, 1 day", "orders_7d": "Orders, 7 days",
    "orders_30d": "Orders, 30 days", "orders_90d": "Orders, 90 days",
    "returns_90d": "Returns, 90 days", "returns_rate_90d": "Returns rate, 90 days",
    "as_of_day": "As of (day)", "first_seen": "First seen", "last_seen": "Last seen",
    "last_order_at": "Last order", "recent_orders": "Recent orders",
    "recent_returns": "Recent returns", "recent_searches": "Recent searches",
    "recent_views": "Recent views", "recent_locations": "Recent locations",
    "nearby_events": "Events nearby", "offers_sent": "Offers sent", "churn_risk": "Churn risk",
    "lifetime_value": "Lifetime value",
}
SHOWN_MONEY = {"lifetime_value", "total_spent", "orders_value", "tp_spend", "price", "discount",
               "spend_1d", "spend_7d", "spend_30d"}
SHOWN_SHARES = {"returns_rate_90d"}


def test_labels_money_and_shares_are_what_the_dashboard_showed() -> None:
    """The dashboard reads them from the model now: nothing it shows may change."""
    fields = list(RETAIL.fields)
    words = {f.name: f.name.replace("_", " ").capitalize() for f in fields}
    assert {f.name: f.title for f in fields} == {**words, **SHOWN_TITLES}
    assert {f.name for f in fields if f.type == "money"} == SHOWN_MONEY
    assert {f.name for f in fields if f.type == "share"} == SHOWN_SHARES


def test_relevance_is_read_from_the_windows_declarations() -> None:
    rel = {f.name: f.relevance for f in RETAIL.fields_of("customer")}
    named = {r.field for r in windows.RELEVANCE if not isinstance(r, windows.Evicted)}
    assert named - set(rel) == set() and set(windows.EVICTED.fields) - set(rel) == set()
    for r in windows.RECENT:
        assert f"last {r.limit}, none older than {r.max_age.days} day" in rel[r.field]
    for w in windows.WINDOWED:
        assert f"last {w.days} day" in rel[w.field]
    for dec in windows.DECAYED:
        assert f"half-life {dec.half_life.days} days" in rel[dec.field]
    assert f"the last {windows.ROLLED_UP.months} months kept" in rel["monthly_spend"]
    assert all(f"evicted after {windows.EVICTED.after.days} days quiet" in rel[f]
               for f in windows.EVICTED.fields)
    assert rel["total_spent"] == "kept"


def test_builtin_rules_and_segments_name_declared_fields() -> None:
    names = {f.name for f in RETAIL.fields}
    rules, segments = RuleBook.builtin(), SegmentBook.builtin()
    when = {f for r in rules for f in rules[r].when or ()}
    reads = {f for s in segments for f in segments[s].fields}
    assert when and reads
    assert when - names == set() and reads - names == set() and CHURN_INPUTS - names == set()
    check_names(RETAIL, rules, segments)  # what the pipeline checks at start


def test_docs_fields_md_is_the_reference_of_the_retail_model(tmp_path: Path) -> None:
    want = reference(RETAIL)
    assert REFERENCE.read_text(encoding="utf-8") == want, (
        "docs/fields.md differs from c360/models/retail.py: run "
        "`.venv/bin/python -m c360.models.retail` and commit docs/fields.md")
    assert main([str(tmp_path / "fields.md")]) == 0
    assert (tmp_path / "fields.md").read_text(encoding="utf-8") == want
    rows = [line for line in want.splitlines() if line.startswith("| `")]
    assert len(rows) == len(RETAIL.streams) + len(RETAIL.fields)
    assert ("| `social_sentiment` | float | social, (windows) | decayed mean of post "
            "sentiment, as of the customer's event time; none with windows off | decays, "
            "half-life 7 days |  |") in want
    assert ("| `email` | str | customer_details | last applied (arrival order) | kept | yes |"
            in want)


def test_the_reference_of_a_declared_model_says_each_fold() -> None:
    s = d.stream("app_sessions", {"device": str, "duration_s": float, "reason": (str, "")},
                 key="user_id", time="ts")
    model = d.EntityModel("apps", (s,), (
        d.Field("sessions_7d", "int", d.Windowed("app_sessions", days=7), "Sessions | 7 days"),
        d.Field("app_time", "float", d.Decayed("app_sessions", timedelta(hours=12),
                                               "duration_s"), "Time in the app, lately"),
        d.Field("devices", "list", d.LastN("app_sessions", 3, "device"), "Devices used",
                pii=True),
        d.Field("busy", "bool", d.Derived(("sessions_7d",), lambda sessions_7d: True),
                "Many sessions"),
    )).check()
    text = reference(model, command="make fields")
    assert "`make fields`" in text
    assert "| `app_sessions` | customer | `user_id` | `ts` | device, duration_s, reason |" in text
    assert ("| `sessions_7d` | int | app_sessions | count over 7 days | kept |  | "
            "Sessions \\| 7 days |") in text
    assert "| `app_time` | float | app_sessions | decayed sum of duration_s, half-life 12 hours |" \
        in text
    assert "| `devices` | list | app_sessions | last 3 of device | kept | yes | Devices used |" \
        in text
    assert "| `busy` | bool | (derived) | derived from sessions_7d |" in text


def social(n: int, hours: float, sentiment: float) -> ev.Social:
    return ev.Social(event_id=f"s{n}", event_time=START + timedelta(hours=hours),
                     customer_id="c1", event_type="post", details="", sentiment=sentiment)


POSTS = [social(0, 0, 1.0), social(1, 30, -0.5), social(2, 80, 0.2), social(3, 81, -1.0)]


def fold_posts(posts: list[ev.Social], hooks: EntityHooks) -> tuple[dict[str, Any], list]:
    shard = Shard(hooks, allowed_lateness=timedelta(days=30))
    changes = []
    for n, post in enumerate(posts):
        deltas, failed = shard.apply([routed("social", post, n)], first_logic)
        assert failed == []
        changes += [x.changes for x in deltas if isinstance(x, Delta)]
    fields = shard.entity("c1")
    assert fields is not None
    return fields, changes


def test_social_sentiment_is_the_windows_decayed_mean_in_any_order() -> None:
    """One place computes it: the fold's exponential average (order-dependent) was
    overwritten by the windows' decayed mean on every post."""
    half_life = next(x.half_life for x in windows.DECAYED if x.field == "social_sentiment")
    now = max(p.event_time for p in POSTS)
    w = [2.0 ** -((now - p.event_time) / half_life) for p in POSTS]
    want = round(sum(wi * p.sentiment for wi, p in zip(w, POSTS, strict=True)) / sum(w), 4)
    in_order, changes = fold_posts(POSTS, EntityHooks())
    reversed_, _ = fold_posts(POSTS[::-1], EntityHooks())
    assert in_order["social_sentiment"] == reversed_["social_sentiment"] == want
    # weights 0.716, 0.810, 0.996, 1 (ages 81, 51, 1, 0 hours; half-life 168 hours); the
    # fold's old 0.7/0.3 average of the same posts in this order was 0.0115
    assert math.isclose(want, -0.1391, abs_tol=5e-5)
    assert in_order["social_count"] == 4 and in_order["last_social"]["sentiment"] == -1.0
    assert all("social_sentiment" in c for c in changes[1:])


def test_with_windows_off_there_is_no_social_sentiment() -> None:
    """As declared: a field of the windows (EntityHooks(windows=False) keeps none)."""
    fields, changes = fold_posts(POSTS, EntityHooks(windows=False))
    assert "social_sentiment" not in fields and not any("social_sentiment" in c for c in changes)
    assert fields["social_count"] == 4 and fields["churn_risk"] == 0.0
    assert "windows off" in RETAIL.field("social_sentiment").fold.describe()


def test_a_rule_or_segment_naming_an_undeclared_field_is_refused_in_one_line() -> None:
    from c360.config import Settings
    from c360.errors import ModelError
    from c360.run.pipeline import Pipeline

    pipeline = Pipeline(Settings(bootstrap="127.0.0.1:1"))

    @pipeline.rule("likes_cats", when={"cat_affinity"})
    def likes_cats(c, changes, event):  # type: ignore[no-untyped-def]
        return None

    with pytest.raises(ModelError) as err:
        pipeline.build()  # added after the pipeline was made: refused when it is built
    assert str(err.value).startswith("rule 'likes_cats': field 'cat_affinity' (in when=) is "
                                     "not declared in model 'retail'")
    assert "\n" not in str(err.value)
    book = SegmentBook.builtin()
    book.add("dog_people", lambda c: True, fields=("dog_affinity",))
    with pytest.raises(ModelError, match="segment 'dog_people': field 'dog_affinity' is not "
                                         "declared in model 'retail'"):
        Pipeline(Settings(), segments=book)
    empty = d.EntityModel("mine")
    with pytest.raises(ModelError, match=r"not declared in model 'mine'; declare it, or leave "
                                         r"the rule out \(Pipeline\(rules=RuleBook\(\)\)"):
        Pipeline(Settings(), model=empty)
    from c360.entity.rules import RuleBook

    assert Pipeline(Settings(), model=empty, rules=RuleBook(),
                    segments=SegmentBook()).model is empty
