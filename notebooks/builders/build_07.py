"""Builds notebooks/07_bring_your_own_streams.ipynb: narrative and thin glue over c360.

    .venv/bin/python notebooks/builders/build_07.py
"""

from common import code, finish
from nbformat.v4 import new_markdown_cell as md
from nbformat.v4 import new_notebook

nb = new_notebook(cells=[
    md("""# Bring your own streams

Your shop has topics c360 has never heard of. Here the mobile app sends one event per session
to its own topic, with the customer in `user_id` and the time in `ts`, and you want two
numbers on every customer: **app sessions in the last 7 days** and **returns in the last 30
days, by reason** (returns are one of the retail streams c360 already reads).

You do not fork c360 for that: you *declare* the stream and the two fields in Python, extend
the retail model with them, and give the model to the pipeline. This notebook does it on an
embedded Kafka broker with a small, deterministic data set, and checks both numbers against
pandas. The last cell stops the broker it started."""),
    code("""import json
import random
from datetime import datetime, timedelta, timezone

import pandas as pd
from kafka import KafkaProducer

import c360
from c360.errors import ModelError
from c360.model import declare as d
from c360.model import events as ev

broker = c360.EmbeddedBroker().start()
settings = c360.Settings.from_env().with_bootstrap(broker.bootstrap)"""),
    md("""## Declare the stream and the fields

A stream is a name, its fields and their types, and which fields are the customer (`key=`)
and the event time (`time=`), as the app names them. Every event also carries `event_id`
(duplicates share it and are applied once). Inside c360 the key and the time read as
`customer_id` and `event_time`, as for every other stream.

A field is a name, a type, a **fold** (how events make the value) and one line saying what it
means. `Windowed` counts events (or sums a value) over the last N calendar days of event
time; `by=` keeps one number per key, a map. `where=` picks the events that count: a return
is counted when it is requested, not again when its status changes."""),
    code("""sessions = d.stream("app_sessions",
                    {"session_id": str, "device": str, "duration_s": float},
                    key="user_id", time="ts")

model = c360.RETAIL.extend(name="retail+app", streams=[sessions], fields=[
    d.Field("sessions_7d", "int", d.Windowed("app_sessions", days=7),
            "App sessions in the last 7 days"),
    d.Field("returns_30d_by_reason", "map",
            d.Windowed("returns", days=30, by="reason", where=lambda e: e.status == "requested"),
            "Returns requested in the last 30 days, per reason"),
]).check()

pd.DataFrame([{"field": f.name, "type": f.type, "from": ", ".join(f.fold.streams),
               "fold": f.fold.describe(), "means": f.description} for f in model.fields[-2:]])"""),
    md("""A model that does not hold together is refused before anything runs, with one line that
names the field. A typo in a stream's name:"""),
    code("""try:
    model.extend(fields=[d.Field("sessions_30d", "int", d.Windowed("app_session", days=30),
                                 "App sessions in the last 30 days")]).check()
except ModelError as exc:
    print(exc)"""),
    md("""## Forty days of sessions and returns, through Kafka

Twenty customers; the app's events are JSON as the app would send them (`user_id` and
`ts`), the returns are the retail stream's events. A few sessions arrive late (after a newer
one of the same customer), and one is sent twice."""),
    code("""START = datetime(2026, 3, 1, tzinfo=timezone.utc)
rng = random.Random(7)
customers = [f"cust-{n:02d}" for n in range(20)]


def at(day: float) -> datetime:
    return START + timedelta(days=day)


app = []
for n in range(300):
    cid = rng.choice(customers)
    t = at(rng.uniform(0, 40))
    app.append({"event_id": f"s{n}", "user_id": cid, "ts": t.isoformat(),
                "session_id": f"x{n}", "device": rng.choice(["ios", "android", "web"]),
                "duration_s": round(rng.uniform(10, 1200), 1)})
app.sort(key=lambda e: e["ts"])
for i in range(290, 0, -30):  # late: an older session of the customer, sent just after
    e = app[i]
    older = datetime.fromisoformat(e["ts"]) - timedelta(minutes=rng.randrange(5, 40))
    app.insert(i + 1, {**e, "event_id": e["event_id"] + "L", "ts": older.isoformat()})
app.append(app[42])  # a duplicate

returns = []
for n in range(80):
    returns.append(ev.Return(event_id=f"r{n}", event_time=at(rng.uniform(0, 40)),
                             customer_id=rng.choice(customers), return_id=f"ret{n}",
                             order_id=f"o{n}", product_id=f"p{n % 7}",
                             reason=rng.choice(["damaged", "late", "wrong_size"])))
    if n % 5 == 0:  # later, the same return is approved: not a second return
        returns.append(ev.Return(event_id=f"r{n}a", event_time=returns[-1].event_time
                                 + timedelta(days=2), customer_id=returns[-1].customer_id,
                                 return_id=f"ret{n}", order_id=f"o{n}", product_id=f"p{n % 7}",
                                 reason=returns[-1].reason, status="approved"))
returns.sort(key=lambda e: e.event_time)

pipeline = c360.Pipeline(settings, model=model, idle_timeout=2)
pipeline.ensure_topics()  # the model's topics, app_sessions included
producer = KafkaProducer(**settings.kafka_python(), linger_ms=20)
for e in app:
    producer.send(pipeline.catalogue.topic("app_sessions"), key=e["user_id"].encode(),
                  value=json.dumps(e).encode())
for e in returns:
    producer.send(pipeline.catalogue.topic("returns"), key=e.customer_id.encode(),
                  value=c360.encode(e))
producer.flush()
len(app), len(returns)"""),
    md("""## Run the dataflow with the model

A bounded run reads every topic until it has been quiet for two seconds. At its end every
customer is aged to the latest event time read (`store.as_of`), so a window means "the last 7
days of the data", the same for everyone."""),
    code("""store = pipeline.run()
store.as_of"""),
    code("""live = pd.DataFrame([{"customer": e["id"], "sessions_7d": e["sessions_7d"],
                      "returns_30d_by_reason": e["returns_30d_by_reason"]}
                     for e in store.entities()]).set_index("customer").sort_index()
live.head()"""),
    md("""## The same numbers in pandas

The windows are calendar days (UTC), today included: as of April 9 (the end of the data), the
last 7 days are April 3 to 9 and the last 30 are March 11 to April 9. Duplicates count once,
and a return counts once, when it is requested."""),
    code("""as_of = pd.Timestamp(store.as_of)
s = pd.DataFrame(app).drop_duplicates("event_id")
s["event_time"] = pd.to_datetime(s["ts"], utc=True)
r = pd.DataFrame([{"customer": e.customer_id, "reason": e.reason, "status": e.status,
                   "event_time": e.event_time} for e in returns])
r["event_time"] = pd.to_datetime(r["event_time"], utc=True)


def last_days(df, days):
    return df[df["event_time"] >= as_of.floor("D") - pd.Timedelta(days=days - 1)]


expected_7d = last_days(s, 7).groupby("user_id").size()
requested = last_days(r[r["status"] == "requested"], 30)
expected_30d = {cid: dict(sorted(g["reason"].value_counts().items()))
                for cid, g in requested.groupby("customer")}
expected = pd.DataFrame({
    "sessions_7d": [int(expected_7d.get(cid, 0)) for cid in live.index],
    "returns_30d_by_reason": [expected_30d.get(cid, {}) for cid in live.index]},
    index=live.index)
expected.head()"""),
    code("""assert sorted(live.index) == customers, live.index
assert (live["sessions_7d"] == expected["sessions_7d"]).all()
assert list(live["returns_30d_by_reason"]) == list(expected["returns_30d_by_reason"])
assert live["sessions_7d"].sum() > 0 and live["returns_30d_by_reason"].map(len).sum() > 0
print(f"streaming equals pandas for {len(live)} customers")"""),
    md("""## One customer

The declared fields sit beside the retail ones on the same entity; the dashboard, the sync
protocol and the exports read them from the model."""),
    code("""one = store["cust-03"]
{k: one.get(k) for k in ("sessions_7d", "returns_30d_by_reason", "first_seen", "last_seen")}"""),
    md("""## Clean up

Close the producer and stop the broker this notebook started (its topics and data go with
it)."""),
    code("""producer.close()
broker.stop()
assert not broker.alive()"""),
])

finish(nb, "07_bring_your_own_streams")
