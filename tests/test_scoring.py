"""A trained scikit-learn model deployed as a rule (c360.entity.scoring): it scores as
scikit-learn does, explains itself by its largest contributions, decides in a real fold, and
refuses what it cannot score in one line."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import PolynomialFeatures, StandardScaler

from c360.entity.rules import RuleBook
from c360.entity.scoring import Feature, LinearScore, days_since
from c360.errors import ConfigError, DataError, ModelError
from c360.models.retail import RETAIL
from c360.run.pipeline import Pipeline
from tests.factories import T0, at
from tests.test_rules import Story, only, signup

FEATURES: list[str | Feature] = ["order_count", "total_spent", "avg_review_score",
                                 days_since("last_order_at", name="days_since_last_order")]
NAMES = ["order_count", "total_spent", "avg_review_score", "days_since_last_order"]


def entities(n: int, seed: int) -> list[dict]:
    """Random customers as the store holds them: some never reviewed, some never ordered."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        orders = int(rng.integers(0, 6))
        last = T0 + timedelta(days=float(rng.uniform(0, 400)))
        out.append({"order_count": orders, "total_spent": round(float(rng.gamma(2, 80)), 2),
                    "avg_review_score": float(rng.integers(1, 6)) if rng.random() < 0.6
                    else None,
                    "last_order_at": last - timedelta(days=float(rng.uniform(0, 200)))
                    if orders else None,
                    "last_seen": last, "name": "x"})
    return out


def table(rows: list[dict]) -> pd.DataFrame:
    """The features of ``rows`` as the notebook computes them, in pandas."""
    df = pd.DataFrame(rows)
    return pd.DataFrame({
        "order_count": df["order_count"], "total_spent": df["total_spent"],
        "avg_review_score": df["avg_review_score"],
        "days_since_last_order": (pd.to_datetime(df["last_seen"])
                                  - pd.to_datetime(df["last_order_at"])) / pd.Timedelta(days=1),
    }).astype(float)


def trained(seed: int = 0, **imputer: object):
    rows = entities(600, seed)
    X = table(rows)
    logit = 0.8 * X["order_count"] - 0.01 * X["days_since_last_order"].fillna(300) - 0.5
    y = (np.random.default_rng(seed + 1).random(len(X)) < 1 / (1 + np.exp(-logit))).astype(int)
    model = make_pipeline(SimpleImputer(strategy="median", **imputer), StandardScaler(),
                          LogisticRegression(C=0.5, max_iter=1000)).fit(X, y)
    return model, X


@pytest.mark.parametrize("add_indicator", [True, False])
def test_the_live_score_is_scikit_learns_probability_for_random_customers(
        add_indicator: bool) -> None:
    model, _ = trained(add_indicator=add_indicator)
    score = LinearScore.from_sklearn(model, FEATURES, target="p_return")
    rows = entities(400, seed=7)
    expected = model.predict_proba(table(rows))[:, 1]
    got = np.array([score.score(c) for c in rows])
    assert np.abs(got - expected).max() < 1e-12
    # The linear value is scikit-learn's decision function: the log-odds.
    assert np.allclose([score.linear(c) for c in rows], model.decision_function(table(rows)),
                       rtol=0, atol=1e-12)


def test_without_a_pipeline_or_a_scaler_and_for_a_regression_too() -> None:
    _, X = trained()
    full = X.fillna(0.0)
    y = (full["order_count"] > 2).astype(int)
    alone = LogisticRegression(max_iter=1000).fit(full.to_numpy(), y)
    score = LinearScore.from_sklearn(alone, FEATURES)
    rows = [r for r in entities(200, seed=3)
            if r["avg_review_score"] is not None and r["last_order_at"] is not None]
    assert np.allclose([score.score(c) for c in rows],
                       alone.predict_proba(table(rows).to_numpy())[:, 1], rtol=0, atol=1e-12)
    assert score.score({"order_count": 1}) is None  # not imputed: a missing value, no score
    ols = make_pipeline(StandardScaler(), LinearRegression()).fit(full, full["total_spent"] * 2)
    linear = LinearScore.from_sklearn(ols)  # fitted on a DataFrame: its columns are the features
    assert not linear.logistic and [f.name for f in linear.features] == NAMES
    row = {"order_count": 2, "total_spent": 50.0, "avg_review_score": 4.0,
           "days_since_last_order": 10.0}
    assert linear.score(row) == pytest.approx(100.0, abs=1e-9)


def test_the_explanation_names_the_largest_contributions() -> None:
    model, _ = trained(add_indicator=True)
    score = LinearScore.from_sklearn(model, FEATURES, target="p_return")
    rows = entities(300, seed=11)
    imputer, scaler, lr = (model.named_steps[k] for k in
                           ("simpleimputer", "standardscaler", "logisticregression"))
    expected = lr.coef_[0] * scaler.transform(imputer.transform(table(rows)))
    columns = [*NAMES, *(f"{NAMES[i]} missing" for i in imputer.indicator_.features_)]
    for c, row in zip(rows, expected, strict=True):
        parts = score.contributions(c)
        assert parts is not None
        by_name = {p.name: p.contribution for p in parts}
        assert np.allclose([by_name[n] for n in columns], row, rtol=0, atol=1e-12)
        top3 = [columns[i] for i in np.argsort(-np.abs(row), kind="stable")[:3]]
        assert [p.name for p in parts[:3]] == top3
        sizes = [abs(p.contribution) for p in parts]
        assert sizes == sorted(sizes, reverse=True)
    c = rows[0]
    text = score.explain(c, top=2)
    first = score.contributions(c)[0]  # type: ignore[index]
    assert text.startswith(f"p_return {score.score(c):.3f}; top features: ")
    assert f"({first.contribution:+.2f})" in text and text.count("(") == 2


def test_the_deployed_rule_decides_in_a_real_fold_with_its_explanation() -> None:
    model, _ = trained(add_indicator=True)
    score = LinearScore.from_sklearn(model, FEATURES, target="p_return")
    book = RuleBook()
    rule = score.add_to(book, "likely_to_return", threshold=0.7, action="second_order_offer",
                        cooldown=timedelta(days=30), model=RETAIL)
    assert rule.when == score.inputs == {"order_count", "total_spent", "avg_review_score",
                                         "last_order_at", "last_seen"}
    s = Story(book)
    signup(s)
    assert s("orders", 10, order_id="o1", order_date=at(10), status="created",
             total_amount=20.0) == []  # one order, just now: under the threshold (0.62)
    assert score.score(s.entity) < 0.7  # type: ignore[operator]
    made, seen = [], []
    for i in range(2, 6):  # each order makes coming back likelier
        now = s("orders", 10 * i, order_id=f"o{i}", order_date=at(10 * i), status="created",
                total_amount=20.0)
        made += now
        seen += [dict(s.entity)] * len(now)  # the entity as folded when it decided
    d = only(made)  # it stays above, and the cool-down holds it back
    assert (d.rule, d.action, d.customer_id) == ("likely_to_return", "second_order_offer",
                                                 "cust-1")
    assert d.reason.startswith("p_return ") and ">= 0.7; top features: " in d.reason
    assert d.fields and set(d.fields) <= score.inputs
    assert s.entity["decisions"][0]["reason"] == d.reason
    # The score it decided on is scikit-learn's for the entity as it was at that event.
    row = table([{k: seen[0].get(k) for k in ("order_count", "total_spent",
                                              "avg_review_score", "last_order_at",
                                              "last_seen")}])
    p = model.predict_proba(row)[0, 1]
    assert p >= 0.7 and d.reason.startswith(f"p_return {p:.3f} >= 0.7")
    assert d.reason == "p_return " + score.explain(seen[0]).removeprefix(
        "p_return ").replace("; top", " >= 0.7; top", 1)


def test_a_pipeline_refuses_a_scoring_rule_on_fields_its_model_does_not_declare() -> None:
    model, X = trained()
    y = (X["order_count"] > 1).astype(int)
    unnamed = LogisticRegression().fit(X.fillna(0).to_numpy(), y)  # no column names to check
    renamed = LinearScore.from_sklearn(unnamed, ["order_count", "total_spent", "stars",
                                                 FEATURES[3]])
    with pytest.raises(ModelError) as raised:
        renamed.add_to(RuleBook(), "r", threshold=0.5, action="a", model=RETAIL)
    assert str(raised.value) == ("feature 'stars': field 'stars' is not declared in model "
                                 "'retail'; declare it, or train without it")
    book = RuleBook()
    renamed.add_to(book, "r", threshold=0.5, action="a")  # unchecked: the pipeline checks
    with pytest.raises(ModelError, match="rule 'r': field 'stars'"):
        Pipeline(rules=book)


@pytest.mark.parametrize("make, message", [
    (lambda m, X: LinearScore.from_sklearn(m, ["order_count", "total_spent", "stars",
                                               "days_since_last_order"]),
     "feature 'stars' is not one the model was trained on; it was trained on: "
     "order_count, total_spent, avg_review_score, days_since_last_order"),
    (lambda m, X: LinearScore.from_sklearn(m, NAMES[:3]),
     "the features are not the ones the model was trained on, in order; it was trained on: "
     "order_count, total_spent, avg_review_score, days_since_last_order"),
    (lambda m, X: LinearScore.from_sklearn(
        RandomForestClassifier(n_estimators=2).fit(X.fillna(0), X["order_count"] > 1)),
     "RandomForestClassifier is not a linear model (no coef_ and intercept_): only a linear "
     "model is scored live"),
    (lambda m, X: LinearScore.from_sklearn(
        make_pipeline(PolynomialFeatures(), LogisticRegression(max_iter=1000)).fit(
            X.fillna(0), X["order_count"] > 1)),
     "pipeline step PolynomialFeatures cannot be scored live: only a SimpleImputer, then a "
     "StandardScaler, then a linear model"),
    (lambda m, X: LinearScore.from_sklearn(
        LogisticRegression(max_iter=500).fit(X.fillna(0), X["order_count"].clip(0, 2))),
     "LogisticRegression has 3 rows of coefficients (multi-class): only a binary classifier "
     "or a regression is scored live"),
    (lambda m, X: LinearScore.from_sklearn(m, FEATURES).rule(1.5, "a"),
     "threshold must be a number from 0 to 1, not 1.5"),
    (lambda m, X: LinearScore.from_sklearn(
        make_pipeline(SimpleImputer(missing_values=-1.0), LogisticRegression()).fit(
            X.fillna(-1.0), X["order_count"] > 1)),
     "the imputer reads -1.0 as missing: only NaN (None in the entity) is scored live"),
])
def test_what_cannot_be_scored_is_refused_in_one_line(make, message: str) -> None:
    model, X = trained()
    with pytest.raises(ConfigError) as raised:
        make(model, X)
    assert str(raised.value) == message and "\n" not in message


def test_a_time_or_text_feature_is_refused_before_and_while_it_runs() -> None:
    times = LinearScore([Feature("last_order_at", ("last_order_at",))], (1.0,), 0.0)
    with pytest.raises(ModelError) as raised:
        times.check(RETAIL)
    assert str(raised.value) == ("feature 'last_order_at' is a time field, not a number; score "
                                 "a number of it (days_since('last_order_at') for a time)")
    with pytest.raises(DataError) as failed:  # unchecked, the fold's event fails, named
        times.score({"last_order_at": T0})
    assert "\n" not in str(failed.value) and "'last_order_at' is a datetime" in str(failed.value)
