"""Downstream of the declared model: PII redaction, export dtypes and the dashboard's fields.

Issue 16, item 3: the sync server redacts the model's PII fields, the export types its
columns as the model declares them, and the dashboard's labels, money and share formats
come from the model; every field a dashboard names is declared (or is documented as not
an entity field).
"""

from __future__ import annotations

import ast
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from websockets.sync.client import ClientConnection, connect

from c360.model.declare import DTYPES, Custom, EntityModel, Field
from c360.model.delta import Delta, Lifecycle
from c360.models.retail import RETAIL
from c360.store.memory import EntityStore
from c360.sync import SyncServer, TokenBook
from c360.sync.auth import PII_FIELDS, REDACTED, Scope
from c360.sync.server import lifecycle_detail
from dashboards import customer, feed, finder, live, text

T0 = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)
DASHBOARDS = Path(__file__).resolve().parents[1] / "dashboards"

# One more personal field, declared in this file only: the model says it is PII.
CARD = Field("loyalty_card", "str", Custom(("(commands)",), "set by the test"),
             "The customer's loyalty card number", pii=True)
# And one more float field, so that an all-empty column has a declared dtype to take.
SCORE = Field("fraud_score", "float", Custom(("(rules)",), "set by the test"),
              "A score no event sets in this test")
MINE = RETAIL.extend(name="retail+card", fields=[CARD, SCORE])


def _delta(eid: str, version: int, **changes: Any) -> Delta:
    return Delta(eid, "customer", version, T0 + timedelta(seconds=version), "test",
                 f"{eid}-{version}", changes)


def _recv(ws: ClientConnection, kind: str) -> dict[str, Any]:
    """The next message of type ``kind`` (others -- authenticated, synced -- skipped)."""
    for _ in range(20):
        m = json.loads(ws.recv(timeout=10))
        if m["type"] == kind:
            return m
        assert m["type"] != "error", m
    raise AssertionError(f"no {kind} message")


def _session(url: str, token: str) -> ClientConnection:
    ws = connect(url, max_size=None)
    ws.send(json.dumps({"type": "auth", "token": token, "id": 0}))
    assert _recv(ws, "authenticated")["id"] == 0
    ws.send(json.dumps({"type": "sync", "entity": "c1", "id": 1}))
    return ws


# -- PII redaction and token field scopes ------------------------------------------------------

def test_the_retail_models_pii_fields_are_the_sync_servers_default() -> None:
    assert RETAIL.pii_fields == PII_FIELDS
    assert {"name", "email", "phone", "address", "birthdate"} <= PII_FIELDS
    assert EntityStore().model is RETAIL
    assert MINE.pii_fields == PII_FIELDS | {"loyalty_card"}


def test_a_field_the_model_declares_pii_is_redacted_over_a_real_websocket() -> None:
    """A store of the extended model: a token without the pii scope gets the new field
    redacted in the snapshot and in later patches; a pii token sees it; a token limited to
    some fields does not get it at all. The same entity served from a retail store shows
    the field to everyone: the redaction follows the model, not a list in the server."""
    store = EntityStore(model=MINE)
    store.apply([_delta("c1", 1, name="Ana Lima", loyalty_card="LC-0001", order_count=3)])
    book = TokenBook.from_tokens({"narrow": {}, "admin": {"pii": True},
                                  "counts": {"fields": ["order_count", "loyalty_card"]}})
    with SyncServer(store, book) as server:
        narrow, admin, counts = (_session(server.url, t) for t in ("narrow", "admin", "counts"))
        try:
            seen = {t: _recv(ws, "snapshot")["data"]
                    for t, ws in (("narrow", narrow), ("admin", admin), ("counts", counts))}
            assert (seen["narrow"]["loyalty_card"], seen["narrow"]["name"]) == (REDACTED,
                                                                                  REDACTED)
            assert seen["narrow"]["order_count"] == 3
            assert (seen["admin"]["loyalty_card"], seen["admin"]["name"]) == ("LC-0001",
                                                                              "Ana Lima")
            assert seen["counts"] == {"id": "c1", "kind": "customer", "order_count": 3,
                                      "loyalty_card": REDACTED}
            store.apply([_delta("c1", 2, loyalty_card="LC-0002", order_count=4)])
            ops = {t: {o["path"]: o["value"] for o in _recv(ws, "patch")["ops"]}
                   for t, ws in (("narrow", narrow), ("admin", admin), ("counts", counts))}
            assert ops["narrow"] == {"/loyalty_card": REDACTED, "/order_count": 4}
            assert ops["admin"] == {"/loyalty_card": "LC-0002", "/order_count": 4}
            assert ops["counts"] == {"/loyalty_card": REDACTED, "/order_count": 4}
        finally:
            for ws in (narrow, admin, counts):
                ws.close()
        assert server.error is None

    retail = EntityStore()
    retail.apply([_delta("c1", 1, name="Ana Lima", loyalty_card="LC-0001")])
    with SyncServer(retail, book) as server:
        ws = _session(server.url, "narrow")
        try:
            data = _recv(ws, "snapshot")["data"]
        finally:
            ws.close()
    assert (data["loyalty_card"], data["name"]) == ("LC-0001", REDACTED)
    # ...and a server given the model redacts it whatever the store's model is.
    assert SyncServer(retail, book, model=MINE).pii_fields == MINE.pii_fields


def test_a_decision_about_a_declared_pii_field_has_its_reason_redacted() -> None:
    e = Lifecycle("c1", "customer", 3, T0, "decision",
                  {"rule": "card", "action": "call", "reason": "card LC-0001 blocked",
                   "key": "LC-0001", "fields": ["loyalty_card"]})
    narrow = lifecycle_detail(Scope(), e, MINE.pii_fields)
    assert narrow is not None and (narrow["reason"], narrow["key"]) == (REDACTED, REDACTED)
    assert lifecycle_detail(Scope(pii=True), e, MINE.pii_fields) == e.detail
    assert lifecycle_detail(Scope(), e) == e.detail  # not PII in the retail model
    assert Scope().redacts("loyalty_card", MINE.pii_fields)
    assert not Scope().redacts("loyalty_card") and Scope().redacts("email")


# -- the export's dtypes ------------------------------------------------------------------------

def _store(model: EntityModel | None = None) -> EntityStore:
    store = EntityStore(model=model)
    store.apply([
        _delta("a", 1, order_count=3, lifetime_value=120, email=None, marketing_opt_out=True,
               last_seen=T0, recent_orders=[{"order_id": "o1"}], odd_extra=7),
        _delta("b", 1, lifetime_value=80.5, email=None, last_seen=T0 + timedelta(days=1),
               odd_extra=8),
    ])
    return store


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_the_export_types_every_declared_column_as_the_model_declares_it(
        tmp_path: Path, suffix: str) -> None:
    store = _store()
    path = store.export(tmp_path / f"out{suffix}")
    declared = RETAIL.dtypes("customer")
    if suffix == ".parquet":
        df = pd.read_parquet(path)
        # Every declared scalar field is a column, of its declared dtype: also a field empty
        # everywhere (email) or that no entity has (phone, spend_7d, churn_risk...).
        assert {c: str(df[c].dtype) for c in declared} == declared
        assert df["email"].isna().all() and df["phone"].isna().all()
    else:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        assert set(declared) <= set(df.columns)
    # An int column with an entity lacking the field stays int (pandas alone: 3.0 and NaN).
    assert df["order_count"].tolist()[0] in (3, "3")
    assert pd.isna(df["order_count"].tolist()[1]) or df["order_count"].tolist()[1] == ""
    # A money column is float even when one entity's value is an int.
    assert df["lifetime_value"].tolist() in ([120.0, 80.5], ["120.0", "80.5"])
    # Undeclared fields are as pandas reads them; lists stay in the .jsonl export.
    assert "odd_extra" in df.columns and "recent_orders" not in df.columns
    assert df["customer_id"].tolist() == ["a", "b"]


def test_the_typed_export_equals_pandas_reading_the_jsonl_export_with_declared_dtypes(
        tmp_path: Path) -> None:
    """The parquet export holds the same values as the .jsonl export read by pandas and
    cast to the declared dtypes by hand."""
    store = _store()
    got = pd.read_parquet(store.export(tmp_path / "out.parquet"))
    raw = pd.read_json(store.export(tmp_path / "out.jsonl"), lines=True, dtype=False)
    want = pd.DataFrame({"customer_id": raw["customer_id"]})
    for name, dtype in RETAIL.dtypes("customer").items():
        column = raw[name] if name in raw else pd.Series(None, index=raw.index, dtype=object)
        want[name] = (pd.to_datetime(column, utc=True).astype(dtype)
                      if dtype.startswith("datetime64") else column.astype(dtype))
    pd.testing.assert_frame_equal(got[list(want.columns)].reset_index(drop=True), want)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_an_empty_store_exports_the_declared_columns(tmp_path: Path, suffix: str) -> None:
    path = EntityStore().export(tmp_path / f"empty{suffix}")
    df = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path)
    assert len(df) == 0 and set(RETAIL.dtypes("customer")) <= set(df.columns)
    if suffix == ".parquet":
        assert {c: str(df[c].dtype) for c in RETAIL.dtypes()} == RETAIL.dtypes()


def test_a_store_given_a_model_exports_that_models_columns(tmp_path: Path) -> None:
    df = pd.read_parquet(_store(MINE).export(tmp_path / "out.parquet"))
    assert str(df["fraud_score"].dtype) == DTYPES["float"] and df["fraud_score"].isna().all()
    assert str(df["loyalty_card"].dtype) == DTYPES["str"]
    assert "fraud_score" not in pd.read_parquet(_store().export(tmp_path / "r.parquet"))


def test_a_store_takes_the_pipelines_model_unless_it_was_given_its_own() -> None:
    store = EntityStore()
    store.use_model(MINE)
    assert store.model is MINE and SyncServer(store, TokenBook()).pii_fields == MINE.pii_fields
    own = EntityStore(model=RETAIL)
    own.use_model(MINE)
    assert own.model is RETAIL


def test_a_value_that_does_not_fit_its_declared_dtype_keeps_pandas_dtype_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = _store()
    store.apply([_delta("c", 1, order_count=2.5)])
    df = pd.read_parquet(store.export(tmp_path / "out.parquet"))
    assert df["order_count"].tolist()[2] == 2.5
    assert any("'order_count' does not fit its declared dtype Int64" in r.getMessage()
               for r in caplog.records)


# -- the dashboard's labels, formats and field lists ------------------------------------------

# Names the dashboards use that are not entity fields, and why.
ENTITY_OWN = {"id", "version"}  # every entity has them: the store's, not the model's
# Keys a formatter in dashboards/text.py matches on that are keys of nested records or table
# cells, not entity fields: a last_social's sentiment, a wishlist table's product, an order
# line's product_id, reviews (a record list some feeds send).
NESTED_KEYS = {"sentiment", "product", "product_id", "reviews"}
# Entity fields the feed's sample() sums for the overview (written as literals there).
FEED_TOTALS = ("orders_value", "order_count", "return_count")


def _named_in_text() -> set[str]:
    """The field names dashboards/text.py compares ``field`` with (``field == "x"``,
    ``field in ("x", "y")``): read from its source, so a new case is checked too."""
    tree = ast.parse((DASHBOARDS / "text.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Compare) and isinstance(node.left, ast.Name)
                and node.left.id == "field"):
            for c in node.comparators:
                items = c.elts if isinstance(c, (ast.Tuple, ast.List, ast.Set)) else [c]
                names |= {i.value for i in items
                          if isinstance(i, ast.Constant) and isinstance(i.value, str)}
    return names


def test_every_field_the_dashboards_name_is_declared_in_the_retail_model() -> None:
    customer_fields = {f.name for f in RETAIL.fields_of("customer")}
    lists = {
        "customer.KPI_FIELDS": customer.KPI_FIELDS, "customer.PROFILE": customer.PROFILE,
        "customer.CARD_FIELDS": customer.CARD_FIELDS,
        "customer.OFFER_FIELDS": customer.OFFER_FIELDS,
        "live.LEADING_FIELDS": live.LEADING_FIELDS, "finder.COLUMNS": finder.COLUMNS,
        "finder.SORT_FIELDS": finder.SORT_FIELDS, "finder.SEARCHED": finder.SEARCHED,
        "feed.FINDER_COLUMNS": feed.FINDER_COLUMNS, "feed.TRENDING_FIELDS": feed.TRENDING_FIELDS,
        "feed totals": FEED_TOTALS, "text.MONEY_MAPS": text.MONEY_MAPS,
        "text formatters": _named_in_text() - NESTED_KEYS,
    }
    undeclared = {where: sorted(set(names) - customer_fields - ENTITY_OWN)
                  for where, names in lists.items()}
    assert not any(undeclared.values()), {k: v for k, v in undeclared.items() if v}
    assert len(_named_in_text()) > 15  # the source scan finds the formatter's cases
    # The finder searches personal data, which only a pii token sees unredacted.
    assert set(finder.SEARCHED) <= RETAIL.pii_fields


def test_the_dashboards_local_maps_hold_only_names_the_model_does_not_declare() -> None:
    declared = {f.name for f in RETAIL.fields}
    for local in (text.NESTED_TITLES, text.NESTED_MONEY, text.NESTED_SHARES, NESTED_KEYS):
        assert not set(local) & declared, set(local) & declared
    shares = {f.name for f in RETAIL.fields if f.type == "share"}
    assert (RETAIL.money_fields | text.NESTED_MONEY, shares | text.NESTED_SHARES) == (
        text.MONEY, text.SHARES)
    assert {"returns_rate_90d"} <= text.SHARES and {"spend_30d", "price"} <= text.MONEY


def test_labels_and_formats_are_the_models_and_read_as_before() -> None:
    for f in RETAIL.fields:
        assert text.title(f.name) == f.title, f.name
    # What a person sees did not change (labels the dashboards had written by hand).
    assert [label for label, _ in customer.KPIS.values()] == [
        "Lifetime value", "Spend, 30 days", "Spend, 7 days", "Orders, 30 days",
        "Loyalty points", "Churn risk"]
    assert customer.KPIS["spend_7d"][1] == "R$ {value:,.2f}"
    assert customer.KPIS["orders_30d"][1] == "{value:,}"
    assert customer.KPIS["churn_risk"][1] == "{value:.2f}"
    assert list(finder.SORTS) == ["Lifetime value", "Churn risk"]
    assert [text.title(c) for c in finder.COLUMNS] == [
        "Customer id", "Name", "Email", "Segments", "Loyalty tier", "Lifetime value",
        "Churn risk"]
    assert text.readable("spend_30d", 1234.5) == "R$ 1,234.50"
    assert text.readable("returns_rate_90d", 0.125) == "12.5%"
    assert text.readable("monthly_spend", {"2026-01": 10}) == "2026-01 R$ 10.00"
