"""Builds notebooks/08_time_travel.ipynb: narrative and thin glue over c360.History.

    .venv/bin/python notebooks/builders/build_08.py
"""

from common import code, finish
from nbformat.v4 import new_markdown_cell as md
from nbformat.v4 import new_notebook

nb = new_notebook(cells=[
    md("""# Time travel: any customer as of any moment, and training sets without leakage

A model of churn or of the next best offer learns from each customer's fields *as they were*
at each label's time. Take them from today's entity and the model trains on the future: it
looks excellent offline and fails live. c360 already folds every event into a versioned
entity, so it can keep every version: `c360.History` does, and answers `history(id)` (every
version and the event that made it), `as_of(id, t)` (the entity exactly as c360 showed it once
it had folded the events up to `t`) and `training_set(labels, fields)` (each label row's fields
as of just *before* its time, for many rows at once).

This notebook streams a quarter of the real Olist data (CC BY-NC-SA 4.0, © Olist) through an
embedded Kafka broker and the dataflow into a `History`, makes churn labels from the data,
builds a point-in-time training set, checks it is leakage-free, and trains a scikit-learn model
on a time-based split, then deploys it as a live rule that explains its decisions.
The last cell stops the broker it started."""),
    code("""import json
import time

import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import c360
from c360.dev import olist"""),
    md("""## A quarter of Olist, through Kafka, into a History

Every fourth person (Olist's `customer_unique_id`) with all their orders, items, payments and
reviews, written by `olist.sample` as the Kaggle CSV files so that `c360.replay` reads them
like the real download. A `History` is handed to the run as its store: the pipeline does not
know the difference, and every delta it applies is also kept, version by version."""),
    code("""# NBVAL_CHECK_OUTPUT
data_dir, people = olist.sample(every=4)
len(people)"""),
    code("""# NBVAL_CHECK_OUTPUT
began = time.monotonic()
broker = c360.EmbeddedBroker().start()
settings = c360.Settings.from_env().with_bootstrap(broker.bootstrap)
replayed = c360.replay(settings, data_dir=data_dir, progress=False)
history = c360.History()
store = c360.run_until_idle(3, settings, store=history.store)
# Every version the store went through is in the history, once.
kept_all = len(history) == sum(e["version"] for e in store.entities(kind=None))
store.count("customer"), kept_all"""),
    code("""print(f"{replayed.events:,} events, {len(history):,} versions kept, "
      f"streamed in {time.monotonic() - began:.1f} s")"""),
    md("""## One customer, version by version

`history(id)` lists each version with the event that made it and the fields it changed;
`known_at` is when c360 knew it (the event's time; for aging deltas, the time of the event whose
watermark aged them). `as_of(id, t)` is the entity as it was then."""),
    code("""busiest = max(history.ids(),
              key=lambda cid: (store.get(cid).get("order_count", 0), cid))
h = history.history(busiest)
h[["version", "stream", "event_time", "known_at", "lifecycle"]].assign(
    changed=h["changes"].map(lambda c: sorted(c)[:6]))"""),
    code("""# NBVAL_CHECK_OUTPUT
second_order = h[h["stream"] == "orders"]["event_time"].iloc[1]
before = history.as_of(busiest, second_order - pd.Timedelta(seconds=1))
after = history.as_of(busiest, second_order)
same = after == history.as_of(busiest, version=after["version"])
before["order_count"], after["order_count"], same"""),
    md("""## Labels from the data: no order in the 180 days after a cutoff

At each monthly cutoff, every person who had ordered before it is a row; the label is whether
they order again within 180 days. Training cutoffs end early enough that their 180 days end
before the test cutoffs begin: a time-based split where no training label looks into the test
period. (Olist shoppers rarely come back, so positives are few: a hard, honest problem.)"""),
    code("""# NBVAL_CHECK_OUTPUT
quarter = olist.load(data_dir)
orders = quarter.orders.merge(quarter.customers, on="customer_id")
orders["t"] = pd.to_datetime(orders["order_purchase_timestamp"]).dt.tz_localize("UTC")
HORIZON = pd.Timedelta(days=180)


def labels_at(cutoff: pd.Timestamp) -> pd.DataFrame:
    \"\"\"Who had ordered before ``cutoff``, and whether they order again within HORIZON.\"\"\"
    seen = orders.loc[orders["t"] < cutoff, "customer_unique_id"].unique()
    again = orders.loc[(orders["t"] >= cutoff) & (orders["t"] < cutoff + HORIZON),
                       "customer_unique_id"].unique()
    return pd.DataFrame({"customer_id": seen, "time": cutoff,
                         "ordered_again": np.isin(seen, again).astype(int)})


train_cutoffs = pd.date_range("2017-02-01", "2017-09-01", freq="MS", tz="UTC")
test_cutoffs = pd.date_range("2018-03-01", "2018-04-01", freq="MS", tz="UTC")
labels = pd.concat([labels_at(c) for c in [*train_cutoffs, *test_cutoffs]], ignore_index=True)
labels["split"] = np.where(labels["time"] < test_cutoffs[0], "train", "test")
assert (train_cutoffs + HORIZON <= test_cutoffs[0]).all()  # no training label sees the test period
labels.groupby("split")["ordered_again"].agg(["size", "sum"]).to_dict()"""),
    md("""## The training set: every field as of just before each row's time

One call, vectorised (a `merge_asof` per field by customer). `as_of_version` and `as_of_time`
say which version each row was read from."""),
    code("""FIELDS = ["order_count", "total_spent", "items_bought", "avg_review_score",
          "review_count", "payment_count", "last_order_at", "first_seen", "spend_30d",
          "orders_90d", "churn_risk"]
t0 = time.perf_counter()
ts = history.training_set(labels, FIELDS)
print(f"{len(ts):,} rows x {len(FIELDS)} fields in {time.perf_counter() - t0:.2f} s")
ts.head()"""),
    md("""### Leakage-free, checked

Every row was read from a version known strictly before its time; and for a sample of rows the
order count equals a plain pandas count of the orders placed strictly before the row's time
(an order placed exactly at a cutoff is not counted)."""),
    code("""# NBVAL_CHECK_OUTPUT
read_before = bool((ts["as_of_time"] < ts["time"]).all())
sample = ts.sample(300, random_state=0)
counted = sample.apply(lambda r: orders.loc[(orders["customer_unique_id"] == r["customer_id"])
                                            & (orders["t"] < r["time"]), "order_id"].nunique(),
                       axis=1)
at_cutoff = ts.merge(orders, left_on=["customer_id", "time"], right_on=["customer_unique_id", "t"])
read_before, bool((sample["order_count"] == counted).all()), len(at_cutoff) == 0 or bool(
    (at_cutoff["as_of_time"] < at_cutoff["t"]).all())"""),
    md("""## A model on a time-based split

Features are the fields as they were, plus two ages computed from them. The model is a
scikit-learn logistic regression on standardised features, missing values (a customer who
never reviewed has no average score) imputed with the median and flagged. (A gradient-boosted
tree did no better here and took seconds of threads the machine shares.)"""),
    code("""# NBVAL_CHECK_OUTPUT
def features(ts: pd.DataFrame) -> pd.DataFrame:
    days = pd.Timedelta(days=1)
    return ts[["order_count", "total_spent", "items_bought", "avg_review_score", "review_count",
               "payment_count", "spend_30d", "orders_90d", "churn_risk"]].assign(
        days_since_last_order=(ts["time"] - ts["last_order_at"]) / days,
        days_as_customer=(ts["time"] - ts["first_seen"]) / days).astype(float)


X, y = features(ts), ts["ordered_again"]
train = (ts["split"] == "train").to_numpy()
model = make_pipeline(SimpleImputer(strategy="median", add_indicator=True), StandardScaler(),
                      LogisticRegression(C=0.3, max_iter=1000)).fit(X[train], y[train])
auc = roc_auc_score(y[~train], model.predict_proba(X[~train])[:, 1])
print(f"test AUC {auc:.2f} on {(~train).sum():,} rows ({y[~train].sum()} positives), "
      f"trained on {train.sum():,} rows ({y[train].sum()} positives)")"""),
    md("""Which fields carry signal on their own: each feature's AUC alone on the test rows
(0.5 is none; below 0.5, the signal is reversed)."""),
    code("""alone = {c: roc_auc_score(y[~train], X.loc[~train, c].fillna(X.loc[train, c].median()))
         for c in X.columns}
pd.Series(alone).sort_values(ascending=False).round(3)"""),
    md("""## The model, deployed as a live rule

`LinearScore.from_sklearn` keeps the fitted pipeline's numbers (the imputer's medians and
missing-value flags, the scaler's means and scales, the coefficients): the fold never imports
scikit-learn. Each feature is a field, or an age computed from fields: `days_since` counts to
the entity's `last_seen`, its latest event time, as the training set counted to each row's
time; never to the wall clock. `add_to` puts it in a rule book as an ordinary rule: it decides
when the score is at or above a threshold, and its reason names the features with the largest
contributions (coefficient × scaled value) and their values.

First, offline: the deployed score of each test row, read as a customer as of the row's time,
is the model's `predict_proba`."""),
    code("""# NBVAL_CHECK_OUTPUT
from c360.entity.scoring import LinearScore, days_since

LIVE = [*X.columns[:9], days_since("last_order_at", name="days_since_last_order"),
        days_since("first_seen", name="days_as_customer")]
score = LinearScore.from_sklearn(model, LIVE, target="p_order_again")
as_rows = ts[~train].assign(last_seen=ts["time"]).to_dict("records")
deployed = np.array([score.score(r) for r in as_rows])
float(np.abs(deployed - model.predict_proba(X[~train])[:, 1]).max()) < 1e-9"""),
    md("""Then live: the same quarter of Olist streamed again from the topics, through a
pipeline whose rule book has the built-in rules and this one, deployed with `add_to` (checked
against the pipeline's model: a feature on an undeclared field is refused in one line). The
threshold is the score of the top 2% of training rows: a second-order offer for the customers
likeliest to come back, at most once per 90 days of event time. Decisions go to the decisions
topic, read back here (an entity's own `decisions` field keeps only recent ones: a quiet
Olist customer's decay with the rest of its detail)."""),
    code("""from kafka import KafkaConsumer, TopicPartition


def read_topic(topic: str) -> list[dict]:
    \"\"\"Every record of ``topic``, from the beginning until two polls come back empty.\"\"\"
    consumer = KafkaConsumer(**settings.kafka_python(), enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    records, empty = [], 0
    while empty < 2:
        got = consumer.poll(1000)
        empty = 0 if got else empty + 1
        records += [json.loads(r.value) for batch in got.values() for r in batch]
    consumer.close()
    return records


threshold = round(float(np.quantile(model.predict_proba(X[train])[:, 1], 0.98)), 2)
pipeline = c360.Pipeline(settings, idle_timeout=3)
score.add_to(pipeline.rules, "likely_to_order_again", threshold=threshold,
             action="second_order_offer", cooldown=pd.Timedelta(days=90).to_pytimedelta(),
             marketing=True, model=pipeline.model)
t0 = time.monotonic()
pipeline.run()
decided = pd.DataFrame([d for d in read_topic(pipeline.catalogue.decisions_topic)
                        if d["rule"] == "likely_to_order_again"])
print(f"threshold {threshold}: {len(decided):,} decisions for "
      f"{decided['customer_id'].nunique():,} customers; streamed and read in "
      f"{time.monotonic() - t0:.1f} s")"""),
    code("""pd.set_option("display.max_colwidth", None)
decided.sort_values("at")[["customer_id", "at", "action", "reason", "fields"]].head(5)"""),
    md("""Each decision's score is the one of the entity as c360 showed it right after the event
that made the decision (the first of its `event_ids`), as the history kept it: the rule scored
the live entity and nothing later."""),
    code("""# NBVAL_CHECK_OUTPUT
def rescored(d: pd.Series) -> str:
    h = history.history(d["customer_id"])
    version = int(h.loc[h["event_id"] == d["event_ids"][0], "version"].iloc[0])
    return f"{score.score(history.as_of(d['customer_id'], version=version)):.3f}"


said = decided["reason"].str.extract(r"p_order_again ([0-9.]+)")[0]
len(decided) > 0, bool((decided.apply(rescored, axis=1) == said).all())"""),
    md("""## 100,000 label rows

The same call on 100,000 random (customer, time) rows, timed."""),
    code("""rng = np.random.default_rng(8)
lo, hi = pd.Timestamp("2016-10-01", tz="UTC"), pd.Timestamp("2018-10-01", tz="UTC")
many = pd.DataFrame({"customer_id": rng.choice(history.ids(), 100_000),
                     "time": lo + (hi - lo) * rng.random(100_000)})
t0 = time.perf_counter()
big = history.training_set(many, FIELDS)
print(f"{len(big):,} rows x {len(FIELDS)} fields in {time.perf_counter() - t0:.2f} s")"""),
    code("""# NBVAL_CHECK_OUTPUT
len(big), bool((big["as_of_time"].dropna() < big.loc[big["as_of_time"].notna(), "time"]).all())"""),
    md("""## Stop what we started"""),
    code("""broker.stop()"""),
])

finish(nb, "08_time_travel")
