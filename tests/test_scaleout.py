"""Scale-out: the dataflow as 2 processes (bytewax -a/-i) publishing entity changes to a topic
partitioned by customer id; replicas built from that topic equal the primary store and the
single-process run, and a sync server on a replica serves them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone

import msgspec

from c360.config import REPO_ROOT, Settings
from c360.dev.broker import free_port
from c360.dev.simulator import simulate
from c360.model.events import Catalogue
from c360.run.pipeline import Pipeline
from c360.store.memory import EntityStore
from c360.store.replica import ChangesReplica, replica_from_kafka
from c360.sync import SyncServer, TokenBook, connect
from tests.factories import by_id


def versions(store: EntityStore) -> dict[str, int]:
    return {e["id"]: e["version"] for e in store.entities(None)}


def caught_up(replica: ChangesReplica, store: EntityStore, timeout: float = 90) -> None:
    want = versions(store)
    assert replica.wait_for(want, timeout), "the replica did not reach the primary's versions"


def every(store: EntityStore) -> dict[str, dict]:
    return {e["id"]: e for e in store.entities(None)}


def normalised(entity: dict) -> dict:
    return json.loads(msgspec.json.encode({k: v for k, v in entity.items() if k != "version"}))


def test_two_processes_equal_one_and_replicas_equal_the_primary(settings: Settings) -> None:
    cat = Catalogue(settings.topic_prefix)
    simulate(settings, customers=200, rate=0, events=12_000, seed=21, progress=False,
             start=datetime(2026, 4, 1, tzinfo=timezone.utc))

    # One process, publishing its changes: a replica from the topic equals its store exactly.
    primary = Pipeline(settings, idle_timeout=5, changes_topic=cat.changes_topic).run()
    assert primary.count("customer") == 200
    with replica_from_kafka(settings) as replica:
        caught_up(replica, primary)
        assert every(replica.store) == every(primary)
        assert replica.bad_records == 0

    # Two processes of one bytewax cluster, each with half the partitions and shards.
    topic2 = settings.topic_prefix + "changes2"
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    env = {**os.environ, "C360_KAFKA_BOOTSTRAP": settings.bootstrap,
           "C360_TOPIC_PREFIX": settings.topic_prefix, "PYTHONPATH": str(REPO_ROOT)}
    procs = [subprocess.Popen([sys.executable, "-m", "c360", "run", "--until-idle", "5",
                               "--changes", topic2, "--addresses", addresses,
                               "--process-id", str(i)],
                              env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        outputs = [p.communicate(timeout=180)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], outputs
    # Each process held only its own shards' customers; together they are all of them.
    counts = [int(out.strip().splitlines()[-1].split()[0]) for out in outputs]
    assert sum(counts) == 200 and all(0 < n < 200 for n in counts), outputs

    with replica_from_kafka(settings, topic=topic2) as two:
        caught_up(two, primary)
        assert by_id(two.store) == by_id(primary)
        # The replica serves syncs like the primary's store would.
        tokens = TokenBook.from_tokens({"admin": {"name": "admin", "pii": True}})
        with SyncServer(two.store, tokens, port=free_port()) as server, \
                connect(server.url, "admin") as client:
            for eid in primary.ids()[:5]:
                client.sync(eid)
                deadline = time.monotonic() + 20
                while client.get(eid) is None and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert normalised(client.get(eid)) == normalised(two.store.get(eid))
                assert client.versions[eid] == primary.get(eid)["version"]
