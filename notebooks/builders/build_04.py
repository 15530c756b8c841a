"""Builds notebooks/04_windows_and_analytics.ipynb: narrative and thin glue over c360.

    .venv/bin/python notebooks/builders/build_04.py
"""

from common import code, finish
from nbformat.v4 import new_markdown_cell as md
from nbformat.v4 import new_notebook

nb = new_notebook(cells=[
    md("""# Windows of relevance and global analytics

Data has a window of relevance. c360 keeps spend and orders over 1, 7, 30 and 90 days in daily
buckets, rolls old days up into months, decays category and brand affinity and social sentiment,
and forgets the detail of dormant customers. All of it runs in **event time**, so the numbers do
not depend on when they are computed. The same dataflow also keeps shop-wide analytics — revenue
and orders per minute, active customers, top products and categories, returns rate — as `global`
entities in the store.

This notebook streams a small simulated shop through an embedded Kafka broker and the dataflow,
checks the windows and the per-minute analytics against pandas, and plots decayed scores over
event time. Everything is bounded, and the last cell stops the broker it started."""),
    code("""import itertools
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import holoviews as hv
import pandas as pd
from kafka import KafkaProducer

import c360
from c360.model import events as ev
from c360.dev.notebook import offline
from c360.dev.simulator import generate
from c360.entity.windows import relevance_table

offline()  # BokehJS, Panel's JS and CSS from the kernel, not a CDN: plots draw offline
broker = c360.EmbeddedBroker().start()
settings = c360.Settings.from_env().with_bootstrap(broker.bootstrap)
producer = KafkaProducer(**settings.kafka_python(), linger_ms=20)
START = datetime(2026, 1, 1, tzinfo=timezone.utc)


def produce(items, settings):
    \"\"\"Send simulated (stream, key, event) items to the stream topics, keyed by entity id.\"\"\"
    pipeline = c360.Pipeline(settings)
    pipeline.ensure_topics()
    catalogue = pipeline.catalogue  # the topic of each stream
    for stream, key, event in items:
        producer.send(catalogue.topic(stream), key=key.encode(), value=c360.encode(event))
    producer.flush()"""),
    md("""## Every window, declared in one place

`c360/entity/windows.py` declares what is bounded, windowed, decayed, rolled up or evicted, and how
(`docs/analytics.md` explains each row)."""),
    code("""pd.DataFrame(relevance_table())"""),
    md("""## Three months of a small shop, through Kafka

`generate` is the simulator's deterministic event sequence. Here its clock runs at ten minutes
of event time per event, so 12,000 events of 25 customers span about three months: every window
fills and empties. While the bounded run folds them, a subscription collects every change of
the customers' social sentiment, for a plot further down."""),
    code("""items = list(itertools.islice(
    generate(25, seed=5, start=START, tick=timedelta(minutes=10)), 12_000))
produce(items, settings)

sentiment = []  # (customer, event time, stream, value) for every change of social_sentiment
store = c360.EntityStore()
sub = store.subscribe(lambda d: sentiment.append(
    (d.entity_id, d.event_time, d.stream, d.changes["social_sentiment"])),
    fields=["social_sentiment"])
c360.run_until_idle(2, settings, store=store)
store.count("customer")""", check=True),
    md("""## The windows equal pandas

A customer's windows are computed at its `as_of_day`: the day of its latest event, or a later
day when the shard's sweep has aged a quiet customer's windows to the shard's watermark (spend
drops out of the 1-day window even though the customer does nothing). So the batch computation
below takes each customer's own `as_of_day` from the store and sums the same events with plain
pandas: duplicates once, an order counted once however many status updates it gets, the 90-day
returns rate as returns over orders. Zero mismatches in every column means the streaming
windows equal the batch ones."""),
    code("""live = store.dataframe()
events = pd.DataFrame([
    {"stream": s, "customer": e.customer_id, "event_id": e.event_id, "t": e.event_time,
     "amount": getattr(e, "amount", None),
     "order_id": getattr(e, "order_id", None) if s == "orders" else None,
     "return_id": getattr(e, "return_id", None)}
    for s, _, e in items if hasattr(e, "customer_id")]).drop_duplicates("event_id")
as_of = pd.to_datetime(live["as_of_day"], utc=True)
events["age_days"] = (events["customer"].map(as_of) - events["t"].dt.floor("D")).dt.days

payments = events[events.stream == "payments"]
orders = events[events.stream == "orders"].drop_duplicates("order_id")
returns = events[events.stream == "returns"].drop_duplicates("return_id")
batch = pd.DataFrame(index=live.index)
for n in (1, 7, 30):
    batch[f"spend_{n}d"] = payments[payments.age_days < n].groupby("customer")["amount"].sum()
for n in (1, 7, 30, 90):
    batch[f"orders_{n}d"] = orders[orders.age_days < n].groupby("customer").size()
batch["returns_90d"] = returns[returns.age_days < 90].groupby("customer").size()
batch = batch.fillna(0)
batch["returns_rate_90d"] = (batch.returns_90d / batch.orders_90d.where(batch.orders_90d > 0)
                             ).fillna(0).round(4)

streaming = live[batch.columns].fillna(0).astype(float)
mismatches = ((streaming - batch).abs() > 0.005).sum()
mismatches.to_dict()""", check=True),
    code("""windows = streaming.assign(as_of_day=live["as_of_day"])
windows.sort_values("spend_30d", ascending=False).head(8)"""),
    md("""## Decay over event time

Category affinity is an exponentially decayed score per category (half-life 14 days): a view
adds 1, a unit bought adds 3, and every point loses half its weight in two weeks of event time.
To watch it, one scripted customer, Dana, views a book every day for a week, then a pair of
shoes every day for six weeks, on topics of her own. Her views are one stream, so they reach
her entity in event-time order and each change the store receives is her affinity at that
moment. The book affinity, no longer fed, must halve every 14 days."""),
    code("""def until(condition, timeout=30.0):
    \"\"\"Wait until `condition()` holds, at most `timeout` seconds; returns its last value.\"\"\"
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)
    return condition()


T0 = datetime(2026, 3, 1, 10, tzinfo=timezone.utc)
story = [("search", "dana", ev.Search(
    event_id=f"dana-{day}", event_time=T0 + timedelta(days=day), customer_id="dana",
    event_type="view", product_id=f"p{day}", category="books" if day < 7 else "shoes"))
    for day in range(49)]
decay_settings = replace(settings, topic_prefix="decay.")
produce(story, decay_settings)

trace = []  # (event time, category affinity) of every change, in version order
dana = c360.EntityStore()
dana_sub = dana.subscribe(lambda d: trace.append((d.event_time, d.changes["category_affinity"])),
                          ids="dana", fields=["category_affinity"])
c360.run_until_idle(2, decay_settings, store=dana)
until(lambda: len(trace) == len(story))  # every view changed the affinity"""),
    code("""affinity = pd.DataFrame([score for _, score in trace],
                        index=[t for t, _ in trace]).fillna(0)  # a column per category
books = affinity["books"].iloc[6:]  # from the last book view on
weeks2 = (books.index - books.index[0]) / timedelta(days=14)
halving = books.iloc[0] * 0.5 ** weeks2
(len(affinity), round(float(books.iloc[28] / books.iloc[14]), 3),
 bool(((books - halving).abs() < 2e-4).all()))""", check=True),
    code("""hv.Overlay([hv.Curve((affinity.index, affinity[c]), "event time", "affinity", label=c)
            for c in ("books", "shoes")]).opts(
    title="Dana's category affinity: a view adds 1, half-life 14 days",
    width=700, height=300, legend_position="top_left")"""),
    md("""Social sentiment is a decayed *mean* (half-life 7 days) of the sentiment of a customer's
posts: recent posts weigh more, so it follows a change of mood within days. Each line is the value
right after each post of a simulated customer; the dots are the posts themselves."""),
    code("""posts = pd.DataFrame(sentiment, columns=["customer", "t", "stream", "value"])
posts = posts[posts.stream == "social"]  # the value right after each post
who = posts.customer.value_counts().index[0]
raw = pd.DataFrame([(e.event_time, e.sentiment) for s, _, e in items
                    if s == "social" and e.customer_id == who], columns=["t", "sentiment"])
(hv.Scatter(raw, "t", "sentiment", label="post").opts(size=6, color="gray")
 * hv.Curve(posts[posts.customer == who][["t", "value"]].sort_values("t"), "t", "value",
            label="decayed mean")).opts(
    title=f"{who}: social sentiment (half-life 7 days)", xlabel="event time",
    width=700, height=300, legend_position="bottom_left")"""),
    md("""## Global analytics

Shop-wide numbers come out of the same flow: each shard pre-aggregates the events it applied per
minute and per five minutes, and bytewax tumbling windows merge them into `global:*` entities,
synced like customers. For minutes to mean something, a second shop runs at one second of event
time per event (2,700 events make 45 minutes) on topics of its own. pandas resamples the same
events per minute: revenue and orders placed (the first event of each order id), and distinct
active customers."""),
    code("""minutes_settings = replace(settings, topic_prefix="minutes.")
fast = list(itertools.islice(generate(40, seed=9, start=START, tick=timedelta(seconds=1)), 2_700))
produce(fast, minutes_settings)
shop = c360.run_until_idle(2, minutes_settings)
revenue = pd.DataFrame(shop["global:revenue_per_minute"]["series"]).set_index("minute")
active = pd.DataFrame(shop["global:active_customers"]["series"]).set_index("minute")
revenue.join(active).tail()"""),
    code("""df = pd.DataFrame([{"stream": s, "event_id": e.event_id, "t": e.event_time,
                    "customer": getattr(e, "customer_id", None),
                    "order_id": getattr(e, "order_id", None) if s == "orders" else None,
                    "amount": getattr(e, "total_amount", None)} for s, _, e in fast])
df = df.drop_duplicates("event_id").set_index("t").sort_index()
placed = df[df.stream == "orders"].drop_duplicates("order_id")
minutes = df.resample("1min").size().loc[lambda n: n > 0].index
expected = pd.DataFrame({
    "revenue": placed["amount"].resample("1min").sum().round(2),
    "orders": placed["amount"].resample("1min").size(),
    "customers": df["customer"].dropna().resample("1min").nunique(),
}).reindex(minutes).fillna(0)  # minutes without orders: zero
got = revenue.join(active)[expected.columns]
(len(got), list(got.index) == list(expected.index),
 {c: bool((got[c] == expected[c]).all()) for c in expected.columns})""", check=True),
    code("""hv.Curve((revenue.index, revenue["revenue"]), "minute", "revenue").opts(
    title="Revenue per minute (event time)", width=700, height=280) + \\
hv.Bars(shop["global:top_categories"]["top"], "category", "units").opts(
    title="Top categories, last five-minute window", width=450, height=280, xrotation=30)"""),
    code("""shop["global:returns_rate"]"""),
    md("""## Clean up

Close the subscriptions and the producer, and stop the broker this notebook started (its
topics and data go with it)."""),
    code("""sub.close()
dana_sub.close()
producer.close()
broker.stop()
broker.alive()""", check=True),
])

finish(nb, "04_windows_and_analytics")
