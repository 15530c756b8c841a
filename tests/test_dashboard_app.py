"""The dashboard (``panel serve dashboards/app.py``) behind basic auth, in a real Chromium.

One server for the module, started exactly as an operator would (``panel serve`` with
``--basic-auth`` and a scopes file) on the session's embedded broker, fed by a bounded
simulator in this process. A manager logs in, finds a customer, watches a field change
after an event for that customer is produced to Kafka, and sends commands; an analyst
(no PII scope) sees names and emails redacted and may send nothing. The pure parts
(search, table patching, scopes) have unit tests below.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import pandas as pd
import pytest

from c360.config import Settings
from c360.dev.broker import EmbeddedBroker, free_port
from c360.dev.simulator import backfill, simulate
from c360.errors import ConfigError
from c360.model.events import Catalogue, CustomerDetails, encode
from c360.sync.auth import REDACTED, Scope
from c360.topics.admin import create_topics
from dashboards.access import NARROW, load_scopes, scope_for
from dashboards.finder import display_row, find
from dashboards.tables import PatchedTable
from tests.test_notebook_dashboard import CHROMIUM, CHROMIUM_ARGS, OUR_FRAME, _stop
from tests.test_notebook_dashboard import _wait_for_server as wait_for_server

REPO = Path(__file__).resolve().parent.parent
CUSTOMERS = 30
USERS = {"manager": "manager-pw", "analyst": "analyst-pw"}
SCOPES = {"users": {"manager": {"pii": True, "commands": ["*"]},
                    "analyst": {"pii": False, "commands": []}}}
EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[a-z]{2,}")
# Text of the page including Panel's shadow roots (page.content() stops at them).
DEEP_TEXT = """() => { const out = [];
  const walk = (n) => { if (n.shadowRoot) walk(n.shadowRoot);
    for (const c of n.childNodes) {
      if (c.nodeType === 3) out.push(c.textContent); else walk(c); } };
  walk(document.body); return out.join(' '); }"""
# True once the element with this id, anywhere in the shadow roots, has this text.
DEEP_HAS_TEXT = """([id, text]) => { const find = (n) => { const hit = n.getElementById ?
    n.getElementById(id) : null; if (hit) return hit;
    for (const c of n.querySelectorAll('*')) if (c.shadowRoot) { const h = find(c.shadowRoot);
      if (h) return h; } return null; };
  const el = find(document); return !!el && el.textContent === text; }"""


# -- unit tests of the pure parts -------------------------------------------------------------
def _table() -> pd.DataFrame:
    return pd.DataFrame(
        [("c1", "Ana Lima", "ana@x.com", "vip", "gold", 900.0, 0.1, 3),
         ("c2", "Bruno Dias", "bruno@y.com", "new, vip", "", 100.0, 0.9, 2),
         ("c3", "Carla Reis", "carla@z.com", "new", "", 500.0, 0.5, 1)],
        columns=["id", "name", "email", "segments", "loyalty_tier", "lifetime_value",
                 "churn_risk", "version"])


def test_find_searches_filters_sorts_and_redacts() -> None:
    full = Scope(pii=True)
    assert find(_table(), full)["id"].tolist() == ["c1", "c3", "c2"]
    assert find(_table(), full, sort="churn_risk")["id"].tolist() == ["c2", "c3", "c1"]
    assert find(_table(), full, segment="new")["id"].tolist() == ["c3", "c2"]
    assert find(_table(), full, text="BRUNO@")["id"].tolist() == ["c2"]
    narrow = find(_table(), NARROW, text="bruno")
    assert narrow.empty, "a search on a field the scope may not see must not find it"
    shown = find(_table(), NARROW, text="c2")
    assert shown["name"].tolist() == [REDACTED] and shown["email"].tolist() == [REDACTED]
    loyalty = Scope(fields=["loyalty_tier", "lifetime_value"])
    row = find(_table(), loyalty, sort="lifetime_value").iloc[0]
    assert (row["id"], row["loyalty_tier"], row["churn_risk"], row["segments"]) == (
        "c1", "gold", "", ""), "fields outside the scope are shown empty"
    assert display_row(tuple(find(_table(), full).iloc[0])) == (
        "c1", "Ana Lima", "ana@x.com", "vip", "gold", "R$ 900.00", "0.10")
    assert display_row(tuple(row))[5:] == ("R$ 900.00", ""), "hidden stays empty"
    new_only = msgspec.convert({"pii": True, "entities": {"segment": "new"}}, Scope)
    assert sorted(find(_table(), new_only)["id"]) == ["c2", "c3"]


def test_patched_table_sends_only_changes() -> None:
    t = PatchedTable(["k", "v"])
    assert t.update([("a", 1), ("b", 2)]) and t.rebuilds == 0
    source = t.widget.get_root().source  # the Bokeh model a browser session would hold

    def shown() -> list[list[Any]]:
        return [list(r) for r in zip(source.data["k"], source.data["v"], strict=True)]

    assert not t.update([("a", 1), ("b", 2)]), "nothing changed: nothing sent"
    t.update([("a", 1), ("b", 3), ("c", 4)])  # one patched cell and one streamed row
    assert t.widget.value.values.tolist() == [["a", 1], ["b", 3], ["c", 4]] == shown()
    t.update([("a", 5), ("b", 3), ("c", 4), ("d", 1)])
    assert shown() == [["a", 5], ["b", 3], ["c", 4], ["d", 1]] and t.rebuilds == 0
    t.update([("z", 0)])  # fewer rows: the one case that replaces the table
    assert t.widget.value.values.tolist() == [["z", 0]] and t.rebuilds == 1


def test_scopes_file(tmp_path: Path) -> None:
    path = tmp_path / "scopes.json"
    path.write_text(json.dumps(SCOPES))
    scopes = load_scopes(path)
    assert scope_for("manager", scopes).pii and scope_for("manager", scopes).name == "manager"
    stranger = scope_for("stranger", scopes)
    assert not stranger.pii and stranger.commands == [], "an unlisted user gets no more"
    assert scope_for(None, scopes) is NARROW
    path.write_text('{"users": {"x": {"pii": "maybe"}}}')
    with pytest.raises(ConfigError, match="user 'x'"):
        load_scopes(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_scopes(tmp_path / "missing.json")


def test_customer_view_coalesces_and_flashes_changes() -> None:
    from c360.model.delta import Delta
    from c360.store.memory import EntityStore
    from dashboards.access import FULL
    from dashboards.customer import CustomerView

    store = EntityStore()
    t0 = datetime(2024, 5, 1, tzinfo=timezone.utc)

    def delta(version: int, **changes: Any) -> Delta:
        return Delta("c1", "customer", version, t0, "loyalty", f"e{version}", changes)

    store.apply([delta(1, name="Ana Lima", loyalty_points=10, email="ana@x.com")])
    view = CustomerView(store, FULL)
    view.open("c1")
    assert view.redraws == 1 and view.kpis["loyalty_points"].value == 10
    store.apply([delta(v, loyalty_points=10 * v) for v in range(2, 52)])  # 50 events
    assert view.refresh() and view.redraws == 2, "50 versions between looks: one redraw"
    assert view.kpis["loyalty_points"].value == 510
    assert not view.refresh(), "no new version: nothing redrawn"
    store.apply([delta(52, email="ana@y.com")])
    view.refresh()
    assert 'data-field="email" class="c360-flash">ana@y.com' in view.profile.object
    assert 'class="c360-flash"' not in view.card.object.split("last seen")[0]


def test_wishlist_follows_stock_without_a_customer_change(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import dashboards.customer as customer
    from c360.model.delta import Delta
    from c360.store.memory import EntityStore
    from dashboards.access import FULL

    monkeypatch.setattr(customer, "STOCK_EVERY_S", 0.0)
    t0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
    store = EntityStore()
    store.apply([Delta("p1", "product", 1, t0, "inventory", "i1",
                       {"name": "Raincoat", "total_stock": 0}),
                 Delta("c1", "customer", 1, t0, "wishlist", "w1", {"wishlist": ["p1"]})])
    view = customer.CustomerView(store, FULL)
    view.open("c1")
    assert view.tables["wishlist"].rows == [("Raincoat", "0", "out of stock")]
    store.apply([Delta("p1", "product", 2, t0, "inventory", "i2", {"total_stock": 7})])
    assert not view.refresh(), "the customer did not change"
    assert view.tables["wishlist"].rows == [("Raincoat", "7", "in stock")]


T0 = datetime(2024, 5, 1, 10, 0, tzinfo=timezone.utc)
PRODUCT = {"name": "Voltix Lite Earbuds", "total_stock": 3,
           "stock": {"store-sp-paulista": 3, "store-rj-copacabana": 0}}
CUSTOMER = {
    "name": "Ana Lima", "email": "ana@x.com", "phone": "+55 11 92095-8541",
    "birthdate": "1982-03-06",
    "address": {"street": "Avenida Brasil, 2658", "city": "São Paulo", "state": "SP",
                "zip": "09593-913", "country": "BR"},
    "last_payment": {"order_id": "o1", "method": "credit_card", "amount": 5065.9,
                     "payment_date": T0},
    # No city: named after the nearest known one; 20 m from a store of the shop.
    "location": {"latitude": -23.5615, "longitude": -46.6557, "at": T0},
    "recent_locations": [{"latitude": -23.5615, "longitude": -46.6557, "at": T0},
                         {"latitude": 38.7223, "longitude": -9.1393, "city": "Lisbon",
                          "at": T0}],
    "demographics": {"age": 44, "income": 20990.0, "education_level": "doctorate",
                     "marketing_opt_in": False},
    "psychographics": {"interests": ["technology", "travel"], "values": ["quality"],
                       "personality_traits": ["cautious"]},
    "last_review": {"product_id": "p1", "order_id": "o1", "rating": 5,
                    "text": "Loved it, will buy again.", "at": T0},
    "weather": {"event_type": "forecast", "condition": "rain", "temperature": 16.6, "at": T0},
    "last_social": {"event_type": "post", "details": "Loving it", "sentiment": 0.72, "at": T0},
    "social_sentiment": 0.4, "tp_purchase_count": 2, "tp_spend": 1387.39,
    "lifetime_value": 23917.6, "spend_30d": 1234.5, "loyalty_points": 24016,
    "recent_orders": [{"order_id": "o1", "order_date": T0, "status": "shipped",
                       "total_amount": 1234.5,
                       "lines": [{"product_id": "p1", "quantity": 2, "price": 617.25}]}],
    "recent_views": [{"product_id": "p1", "at": T0}],
    "recent_returns": [{"order_id": "o1", "product_id": "p1", "reason": "wrong size",
                        "status": "requested", "at": T0}],
    "wishlist": ["p1"],
}


def _store(**customer: Any) -> Any:
    from c360.model.delta import Delta
    from c360.store.memory import EntityStore

    store = EntityStore()
    store.apply([Delta("p1", "product", 1, T0, "products", "p1", dict(PRODUCT)),
                 Delta("c1", "customer", 1, T0, "customer_details", "e1",
                       {**CUSTOMER, **customer})])
    return store


def _shown_text(view: Any) -> str:
    """Everything the view would send to a browser: its HTML panes and table cells."""
    parts = [view.card.object, view.profile.object, view.offer.object]
    parts += [str(w.value) for w in view.kpis.values()]
    parts += [" ".join(map(str, row)) for t in view.tables.values() for row in t.rows]
    return "\n".join(parts)


def test_customer_view_reads_as_text_not_json() -> None:
    from dashboards.access import FULL
    from dashboards.customer import CustomerView

    view = CustomerView(_store(), FULL)
    view.open("c1")
    profile = view.profile.object
    visible = re.sub(r"<[^>]+>", " ", profile)  # the text, without tags and attributes
    for raw in ("{", '"street"', "credit_card", "tp_", "_at", "+00:00"):
        assert raw not in visible, f"{raw!r} shown raw in the profile"
    for text in ("Avenida Brasil, 2658, 09593-913 São Paulo, SP, BR", ">1982-03-06<",
                 "R$ 5,065.90 by credit card on 2024-05-01 10:00:00 UTC (order o1)",
                 "São Paulo (at c360 Paulista, ",
                 "age 44 · income R$ 20,990.00 a month · doctorate · marketing opt-in: no",
                 "interests: technology, travel · values: quality · traits: cautious",
                 "5/5 for Voltix Lite Earbuds: “Loved it, will buy again.”",
                 "rain, 16.6 °C (forecast, 2024-05-01 10:00:00 UTC)",
                 "<dt>Third-party purchases</dt>", "<dt>Third-party spend</dt>",
                 "R$ 1,387.39"):
        assert text in profile, text
    t = view.tables
    assert t["orders"].rows == [("o1", "2024-05-01 10:00:00", "shipped", "R$ 1,234.50",
                                 "2× Voltix Lite Earbuds")]
    assert t["views"].rows == [("Voltix Lite Earbuds", "2024-05-01 10:00:00")]
    assert t["returns"].rows[0][1] == "Voltix Lite Earbuds"
    assert t["wishlist"].rows == [("Voltix Lite Earbuds", "3", "in stock")]
    assert [r[0] for r in t["locations"].rows] == ["São Paulo (at c360 Paulista, 23 m)",
                                                   "Lisbon"]
    for name, table in t.items():
        titles = table.widget.titles
        assert all("_" not in titles[c] for c in table.columns), (name, titles)
    assert all("{" not in value for _, value in t["fields"].rows), "all fields: no JSON"
    assert ("Lifetime value", "R$ 23,917.60") in t["fields"].rows
    assert view.kpis["lifetime_value"].format.startswith("R$")


def test_an_unknown_id_clears_the_customer_shown_before() -> None:
    import msgspec

    from dashboards.access import FULL
    from dashboards.customer import CustomerView

    view = CustomerView(_store(), FULL)
    view.open("c1")
    assert "ana@x.com" in _shown_text(view) and "Avenida Brasil" in _shown_text(view)
    view.open("cust-nope")
    shown = _shown_text(view)
    assert "No customer with id <code>cust-nope</code>." in view.card.object
    for pii in ("Ana Lima", "ana@x.com", "Avenida Brasil", "92095", "Voltix"):
        assert pii not in shown, f"{pii} of the previous customer is still on screen"
    assert all(t.rows == [] for t in view.tables.values())
    assert all(w.value == 0 for w in view.kpis.values())
    assert view.sentiment.data.empty

    # Outside the scope: the same words, so the answer does not tell that it exists.
    only_c2 = msgspec.convert({"pii": True, "entities": ["c2"]}, Scope)
    narrow = CustomerView(_store(), only_c2)
    narrow.open("c1")
    assert "No customer with id <code>c1</code>." in narrow.card.object
    assert "Ana" not in _shown_text(narrow)


def test_an_offer_for_an_item_out_of_stock_is_withdrawn(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import dashboards.customer as customer
    from c360.model.commands import CommandError
    from c360.model.delta import Delta
    from dashboards.access import FULL

    monkeypatch.setattr(customer, "STOCK_EVERY_S", 0.0)
    wish = {"rule": "wishlist_back_in_stock", "action": "offer_wishlist_item",
            "reason": "p1 on the wishlist is back in stock", "fields": ["wishlist"],
            "at": T0, "key": "p1"}
    retention = {"rule": "churn_risk", "action": "retention_offer", "reason": "churn risk",
                 "fields": ["churn_risk"], "at": T0, "key": ""}
    store = _store(decisions=[wish, retention])
    view = customer.CustomerView(store, FULL)
    view.open("c1")
    assert "offer_wishlist_item" in view.offer.object
    assert view.command_args("send_offer")["action"] == "offer_wishlist_item"

    def stock(version: int, total: int) -> None:
        store.apply([Delta("p1", "product", version, T0, "inventory", f"i{version}",
                           {"total_stock": total, "stock": {"store-sp-paulista": total}})])

    stock(2, 0)
    assert not view.refresh(), "the customer did not change"
    assert "offer_wishlist_item</code>" not in view.offer.object.split("Withdrawn")[0]
    assert "retention_offer" in view.offer.object
    assert "Withdrawn: <code>offer_wishlist_item</code> — Voltix Lite Earbuds is out of stock" \
        in view.offer.object
    assert view.command_args("send_offer")["action"] == "retention_offer"
    stock(3, 4)
    view.refresh()
    assert "Withdrawn" not in view.offer.object
    assert view.command_args("send_offer")["action"] == "offer_wishlist_item"

    # A pick-up offer follows the stock of its store; with no offer left, none is sent.
    pickup = {**wish, "action": "offer_in_store_pickup", "key": "store-rj-copacabana:p1",
              "reason": "within 500 m of store-rj-copacabana, which stocks viewed p1"}
    alone = customer.CustomerView(_store(decisions=[pickup]), FULL)
    alone.open("c1")
    assert "none" in alone.offer.object and "Withdrawn" in alone.offer.object
    assert alone.buttons["send_offer"].disabled and not view.buttons["send_offer"].disabled
    with pytest.raises(CommandError, match="no next-best offer"):
        alone.command_args("send_offer")


def test_the_sentiment_chart_starts_with_the_current_value() -> None:
    from dashboards.access import FULL
    from dashboards.customer import CustomerView

    view = CustomerView(_store(), FULL)
    view.open("c1")
    data = view.sentiment.data
    assert data["sentiment"].tolist() == [0.4]
    assert data["time"].tolist() == [pd.Timestamp("2024-05-01 10:00:00")]


# -- the served dashboard in a real browser ---------------------------------------------------
@pytest.fixture(scope="module")
def served(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[dict[str, Any]]:
    """``panel serve dashboards/app.py`` with basic auth, fed by a running simulator."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)")
    tmp = tmp_path_factory.mktemp("dashboard")
    settings = Settings(bootstrap=broker.bootstrap, partitions=2,
                        topic_prefix=f"t{uuid.uuid4().hex[:8]}.")
    cat = Catalogue(settings.topic_prefix)
    create_topics(settings, [*cat.input_topics, cat.dlq_topic, cat.late_topic,
                             cat.decisions_topic])
    (tmp / "users.json").write_text(json.dumps(USERS))
    (tmp / "scopes.json").write_text(json.dumps(SCOPES))
    stop = threading.Event()
    failures: list[BaseException] = []

    def produce() -> None:
        try:  # a shop with 90 days of past (3,000 events in a second or two), then live
            history = backfill(settings, customers=CUSTOMERS, events=3_000, seed=5, stop=stop)
            simulate(settings, customers=CUSTOMERS, rate=100, duration=150, progress=False,
                     stop=stop, simulation=history)
        except BaseException as exc:  # reported by the tests
            failures.append(exc)

    simulator = threading.Thread(target=produce, name="simulator", daemon=True)
    simulator.start()
    port = free_port()
    panel = REPO / ".venv" / "bin" / "panel"
    argv = [str(panel)] if panel.exists() else [sys.executable, "-m", "panel"]
    argv += ["serve", "dashboards/app.py", "--port", str(port), "--address", "127.0.0.1",
             "--allow-websocket-origin", f"127.0.0.1:{port}",
             "--basic-auth", str(tmp / "users.json"), "--cookie-secret", uuid.uuid4().hex]
    env = {k: v for k, v in os.environ.items() if not k.startswith("C360_")}
    env.update(C360_KAFKA_BOOTSTRAP=settings.bootstrap, C360_TOPIC_PREFIX=settings.topic_prefix,
               C360_PARTITIONS=str(settings.partitions), PYTHONUNBUFFERED="1",
               C360_DASHBOARD_SCOPES=str(tmp / "scopes.json"))
    log = tmp / "panel-serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_server(proc, port, log)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                yield {"url": f"http://127.0.0.1:{port}/app", "browser": browser,
                       "settings": settings, "failures": failures, "log": log}
            finally:
                browser.close()
        log_text = log.read_text()
        assert not OUR_FRAME.search(log_text), f"panel serve logged an error:\n{log_text}"
    finally:
        _stop(proc)
        stop.set()
        simulator.join(30)


def _login(served: dict[str, Any], user: str) -> Any:
    from playwright.sync_api import expect

    page = served["browser"].new_page(viewport={"width": 1500, "height": 1100})
    page.goto(served["url"], wait_until="domcontentloaded", timeout=30_000)
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", USERS[user])
    # Judged by the page that comes, not by the click's navigation: the first session
    # starts the server's dataflow (and its backfill) and took over 30 s at load 18.
    page.click("button[type=submit]", no_wait_after=True)
    expect(page.locator(".c360-user")).to_have_text(user, timeout=120_000)
    return page


def _tab(page: Any, title: str) -> None:
    page.locator(".bk-tab", has_text=title).click()


def _cell(row: Any, column: str) -> str:
    return row.locator(f'.tabulator-cell[tabulator-field="{column}"]').text_content() or ""


def _finder_rows(page: Any) -> Any:
    return page.locator(".c360-finder .tabulator-row")


@pytest.mark.browser
def test_wrong_password_is_refused(served: dict[str, Any]) -> None:
    page = served["browser"].new_page()
    try:
        page.goto(served["url"], wait_until="domcontentloaded", timeout=30_000)
        page.fill("input[name=username]", "manager")
        page.fill("input[name=password]", "not-the-password")
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r"/login\?.*error="), timeout=15_000)
        assert "Invalid username or password" in page.content()
    finally:
        page.close()


@pytest.mark.browser
def test_manager_finds_a_customer_sees_it_live_and_sends_commands(
        served: dict[str, Any], artifacts: Path) -> None:
    from kafka import KafkaProducer
    from playwright.sync_api import expect

    page = _login(served, "manager")
    try:
        # Overview: live figures from the shared feed.
        expect(page.locator(".c360-kpi-customers")).to_contain_text(str(CUSTOMERS),
                                                                    timeout=60_000)
        expect(page.locator(".c360-stream-rates")).to_contain_text("orders", timeout=30_000)
        page.wait_for_timeout(3000)  # a few chart points
        page.screenshot(path=str(artifacts / "dash-overview.png"), full_page=True)

        # Finder: search by a name seen in the list, open that customer.
        _tab(page, "Customer finder")
        rows = _finder_rows(page)
        expect(rows.first).to_contain_text(re.compile(r"cust-\d{5}"), timeout=30_000)
        customer, name = _cell(rows.first, "id"), _cell(rows.first, "name")
        assert customer and name and name != REDACTED
        page.locator(".c360-search input").fill(name)
        page.locator(".c360-search input").press("Enter")
        expect(page.locator(".c360-finder-count")).to_contain_text(re.compile(r"^\s*1 shown"),
                                                                    timeout=15_000)
        page.screenshot(path=str(artifacts / "dash-finder.png"), full_page=True)
        rows.first.locator('.tabulator-cell[tabulator-field="id"]').click()
        expect(page.locator(".c360-id")).to_have_text(customer, timeout=15_000)
        expect(page.locator("#c360-name")).to_have_text(name)
        # Nested fields as text, amounts as money, products by name (a 90-day past).
        profile = page.locator(".c360-profile")
        expect(profile).to_contain_text("Third-party spend", timeout=15_000)
        expect(profile).to_contain_text(re.compile(r"R\$ [\d,]+\.\d\d by "))
        expect(profile).not_to_contain_text('{"')
        expect(page.locator(".c360-orders")).to_contain_text("×", timeout=15_000)
        expect(page.locator(".c360-orders")).not_to_contain_text(re.compile(r"× prod-\d"))

        # An event for this customer, produced to Kafka, shows within a second.
        settings: Settings = served["settings"]
        topic = next(s.topic for s in Catalogue(settings.topic_prefix).streams
                     if s.name == "customer_details")
        producer = KafkaProducer(**settings.kafka_python(), acks="all", linger_ms=0)
        try:
            producer.send(topic, key=b"warm-up", value=b"{}").get(timeout=10)  # metadata
            latencies = []
            for i in range(5):
                new_name = f"Zélia Live {i} {uuid.uuid4().hex[:6]}"
                event = CustomerDetails(event_id=f"dash-{uuid.uuid4().hex}",
                                        event_time=datetime.now(timezone.utc),
                                        customer_id=customer, name=new_name)
                sent = time.monotonic()
                producer.send(topic, key=customer.encode(), value=encode(event))
                producer.flush(10)
                page.wait_for_function(DEEP_HAS_TEXT, arg=["c360-name", new_name],
                                       polling=20, timeout=15_000)
                latencies.append(time.monotonic() - sent)
        finally:
            producer.close(5)
        print(f"\nevent produced -> field shown in the browser: "
              f"{', '.join(f'{s * 1000:.0f} ms' for s in latencies)}")
        # Every change showed (within the 15 s bound above). How fast is printed, not
        # asserted: a wall-clock margin fails at random on a shared machine (a median of
        # 2.4 s at load average 15 on 2 cores, 30-250 ms when quiet); benchmarks measure it.
        assert len(latencies) == 5

        # Commands: through the command path, their effect shown.
        note = f"called about the delivery {uuid.uuid4().hex[:6]}"
        page.locator(".c360-note-text input").fill(note)
        page.locator(".c360-cmd-note button").click()
        result = page.locator(".c360-command-result")
        expect(result).to_contain_text(f"add_note applied to {customer} at version",
                                       timeout=45_000)
        expect(page.locator(".c360-notes")).to_contain_text(note, timeout=10_000)
        expect(page.locator(".c360-notes")).to_contain_text("manager")
        page.locator(".c360-cmd-grant button").click()
        expect(result).to_contain_text("grant_points applied", timeout=45_000)
        page.wait_for_timeout(1500)  # let the highlight fade in the screenshot
        page.screenshot(path=str(artifacts / "dash-customer.png"), full_page=True)

        # An unknown id: the customer shown before (PII included) goes away.
        email = next(iter(EMAIL.findall(page.evaluate(DEEP_TEXT))), None)
        assert email, "the manager sees the customer's email"
        page.locator(".c360-customer-id input").fill("cust-99999", timeout=60_000)
        page.locator(".c360-customer-id input").press("Enter")
        expect(page.locator(".c360-card360")).to_contain_text(
            "No customer with id cust-99999", timeout=15_000)
        page.wait_for_function(f"() => !({DEEP_TEXT})().includes({json.dumps(name)})",
                               timeout=15_000)
        text = page.evaluate(DEEP_TEXT)
        assert email not in text and not EMAIL.search(text), "PII left on screen"
    finally:
        page.close()
    assert not served["failures"], f"the simulator failed: {served['failures'][0]}"


@pytest.mark.browser
def test_narrow_account_is_refused_pii_and_commands(served: dict[str, Any],
                                                    artifacts: Path) -> None:
    from playwright.sync_api import expect

    page = _login(served, "analyst")
    try:
        expect(page.locator(".c360-scope")).to_contain_text("PII redacted")
        _tab(page, "Customer finder")
        rows = _finder_rows(page)
        expect(rows.first).to_contain_text(re.compile(r"cust-\d{5}"), timeout=30_000)
        customer = _cell(rows.first, "id")
        assert _cell(rows.first, "name") == REDACTED
        assert _cell(rows.first, "email") == REDACTED
        page.screenshot(path=str(artifacts / "dash-finder-narrow.png"), full_page=True)
        rows.first.locator('.tabulator-cell[tabulator-field="id"]').click()
        expect(page.locator(".c360-id")).to_have_text(customer, timeout=15_000)
        expect(page.locator("#c360-name")).to_have_text(REDACTED)
        page.locator(".c360-card360").wait_for()
        text = page.evaluate(DEEP_TEXT)
        assert not EMAIL.search(text), "an email address reached a browser without PII scope"
        assert REDACTED in text
        for button in ("grant", "note", "contacted", "offer"):
            expect(page.locator(f".c360-cmd-{button} button")).to_be_disabled()
        page.screenshot(path=str(artifacts / "dash-customer-narrow.png"), full_page=True)
    finally:
        page.close()


def test_overview_charts_start_from_the_stores_series_and_break_at_gaps() -> None:
    import math

    from c360.model.delta import Delta
    from c360.store.memory import EntityStore
    from dashboards.feed import Feed
    from dashboards.overview import LIVE_GAP, OverviewPage, with_gaps

    # Closed minute windows (with a short allowed lateness, they close within the five
    # minutes the charts show); one is older than that, and two minutes had nothing.
    t0 = (datetime.now(timezone.utc) - timedelta(minutes=3)).replace(second=0, microsecond=0)
    minutes = [t0 - timedelta(hours=1), t0, t0 + timedelta(minutes=1), t0 + timedelta(minutes=3)]
    store = EntityStore()
    store.apply([
        Delta("global:events_per_minute", "global", 1, T0, "analytics", "a1",
              {"series": [{"minute": m, "events": {"orders": 60 * i, "search": 60}}
                          for i, m in enumerate(minutes)]}),
        Delta("global:revenue_per_minute", "global", 1, T0, "analytics", "a2",
              {"series": [{"minute": m, "revenue": 100.0 * i, "orders": 1}
                          for i, m in enumerate(minutes)]})])
    feed = Feed(store, period=3600)  # samples only when told: the thread's next is in an hour
    try:
        page = OverviewPage(feed)
        rate = page.rate_buffer.data
        naive = [pd.Timestamp(m).tz_localize(None) for m in minutes]
        assert rate["time"].tolist() == [naive[1], naive[2],
                                         naive[2] + timedelta(minutes=1), naive[3]]
        values = rate["events_per_s"].tolist()
        assert values[:2] == [2.0, 3.0] and math.isnan(values[2]) and values[3] == 4.0
        money = page.money_buffer.data["revenue_per_min"].tolist()
        assert money[:2] == [100.0, 200.0] and math.isnan(money[2]) and money[3] == 300.0

        # A session opened later starts with the live points the first one charted.
        for _ in range(3):
            feed.sample()
            page.refresh()
        later = OverviewPage(feed).rate_buffer.data
        assert len(later) == 3 and not later["events_per_s"].isna().any()
        assert later["time"].min() > naive[3], "the last minutes, not the older windows"
    finally:
        feed.stop()

    # Live points: a stalled second is a gap too, also across two batches.
    t = pd.Timestamp("2024-05-01 11:00:00")
    second = pd.Timedelta(seconds=1)
    batch = with_gaps([t, t + second, t + 10 * second], {"y": [1, 2, 3]}, LIVE_GAP,
                      after=t - second)
    assert batch["y"].isna().tolist() == [False, False, True, False]
    assert with_gaps([t], {"y": [1]}, LIVE_GAP, after=t - 60 * second)["y"].isna().tolist() \
        == [True, False]
