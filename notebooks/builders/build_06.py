"""Builds notebooks/06_performance.ipynb: narrative and thin glue over benchmarks.harness.

    .venv/bin/python notebooks/builders/build_06.py
"""

from common import code, finish
from nbformat.v4 import new_markdown_cell as md
from nbformat.v4 import new_notebook

nb = new_notebook(cells=[
    md("""# Performance: the benchmark at small scale

`c360 bench` measures c360 against baselines **run in the same invocation**, because absolute
rates on a shared machine are noise: the dataflow against a bare confluent-kafka loop that does
the least any consumer must (decode, one dict update per event), more streams against one, and
the memory an entity costs. Its results are ratios, mostly of events per CPU-second of the
processing process.

This notebook runs three sections of it at the quick scale (10,000 events over 2,000 customers,
one run per engine, each leg in its own child process against its own embedded broker) and plots
what they measured: about half a minute on an idle machine. The full run, its numbers and the
profile are in `docs/benchmarks.md`; from a shell, the same as here is
`c360 bench --quick --sections 1,3,5 --no-peers`."""),
    code("""import json
import math
import tempfile
from pathlib import Path

import holoviews as hv
import pandas as pd
import psutil

from c360.cli import bench_harness
from c360.dev.notebook import offline

runner = bench_harness()  # benchmarks/harness of the source checkout: it is not in the wheel
SECTIONS, run_bench = runner.SECTIONS, runner.run_bench
COUNTS = runner.s3_streams.COUNTS

offline()  # BokehJS, Panel's JS and CSS from the kernel, not a CDN: plots draw offline
{number: name for number, (name, _) in SECTIONS.items()}  # every section of `c360 bench`"""),
    md("""## Run sections 1, 3 and 5

`run_bench` is what the `c360 bench` command calls: it writes the result as JSON (here into a
temporary folder) and returns it. A section that fails is recorded with its error and does not
stop the others, so the first check is that each section is there and none failed."""),
    code("""workdir = tempfile.TemporaryDirectory()
out = Path(workdir.name) / "bench.json"
result = run_bench(quick=True, out=out, sections=[1, 3, 5], peers=False, progress=False)
sections = result["sections"]
(sorted(sections), [name for name, s in sections.items() if "error" in s],
 json.loads(out.read_text())["sections"].keys() == sections.keys())""", check=True),
    md("""## 1. The dataflow against the Python limit

Both engines read the same pre-produced topics (every stream of the shop). The bare loop is the
ceiling for any Python consumer; the ratio says how much of it the full dataflow — validation,
entity folds, windows, rules, segments, deltas into the store — keeps. The checks are structural:
both read exactly the events produced, and the ratio is a positive, finite number. How large it
is depends on the machine and its load; `docs/benchmarks.md` discusses it."""),
    code("""s1 = sections["1_python_limit"]
produced = s1["dataset"]["events"]
{"produced as configured": produced == result["scale"]["events"],
 "bare loop read them all": s1["bare_loop"]["events"] == produced,
 "c360 read them all": s1["c360"]["events"] == produced,
 "ratio positive and finite": 0 < s1["ratio"] < math.inf}""", check=True),
    code("""engines = pd.DataFrame({"bare loop": s1["bare_loop"], "c360": s1["c360"]}).T
engines["k events / CPU-s"] = engines["events_per_cpu_s"] / 1000
engines[["events", "cpu_s", "wall_s", "k events / CPU-s"]]"""),
    code("""hv.Bars(engines.rename_axis("engine").reset_index(), "engine", "k events / CPU-s").opts(
    title=f"Section 1: c360 = {s1['ratio']:.2f} x the bare loop (target {s1['target']})",
    width=500, height=280, color="#4c72b0")"""),
    md("""## 3. More streams, one entity

The same number of events spread over 1, 4, 8 and 15 customer streams. Every stream updates its
slice of the one customer entity — no stream join — so throughput should stay flat (the ratio to
the 1-stream run, target ≥ 0.9 at 15 streams) and the entity should stay about the size of the
latest record of each stream (target ≤ 1.2x). A run that does not see all its events reach the
store is recorded with an error instead of a rate."""),
    code("""s3 = sections["3_streams"]
streams = pd.DataFrame(s3["c360"])
ratios = streams["throughput_vs_1_stream"]
{"every stream count measured": list(streams["streams"]) == list(COUNTS)
                                and "error" not in streams.columns,
 "same events at every count": bool((streams["events"] == produced).all()),
 "ratios positive and finite": bool(((ratios > 0) & (ratios < math.inf)).all())}""",
         check=True),
    code("""target = hv.HLine(s3["target_throughput"]).opts(color="red", line_dash="dashed")
throughput = hv.Curve(streams, "streams", "throughput_vs_1_stream") * target
size = (hv.Curve(streams, "streams", "entity_json_bytes", label="c360 entity")
        * hv.Curve(streams, "streams", "latest_record_bytes", label="latest record per stream"))
(throughput.opts(title="Throughput vs 1 stream (target 0.9 at 15)", width=420, height=280,
                 ylabel="x the 1-stream run", ylim=(0, None))
 + size.opts(title="Bytes per customer", width=420, height=280, ylabel="bytes per customer",
             legend_position="bottom_right"))"""),
    md("""## 5. Memory per customer

The simulator's events folded straight through the dataflow's shards into a store in a child
process; the resident memory it grew by, per customer entity (entity state and the store's
mirror together), against the 2 KB target."""),
    code("""s5 = sections["5_memory"]
memory = pd.DataFrame(s5["rows"])
limit = hv.HLine(s5["target_bytes_per_customer"]).opts(color="red", line_dash="dashed")
(hv.Curve(memory, "customers", "bytes_per_customer") * limit).opts(
    title="Section 5: memory per customer", width=500, height=280, ylim=(0, None),
    ylabel="bytes per customer (RSS growth)")"""),
    md("""## Every ratio against its target

Where c360 stands at this scale: each bar is the measured ratio over the target ratio, so 1 means
the target is just met; for the two "at most" targets (entity size, memory) it is target over
measured, so above 1 is better everywhere."""),
    code("""goals = pd.DataFrame([
    ("c360 / bare loop", s1["ratio"] / s1["target"]),
    ("15 / 1 streams throughput", s3["throughput_15_vs_1"] / s3["target_throughput"]),
    ("entity / latest records", s3["target_state"] / s3["state_15_vs_latest_records"]),
    ("memory per customer", s5["target_bytes_per_customer"] / s5["bytes_per_customer"]),
], columns=["measure", "of target"])
bars = hv.Bars(goals, "measure", "of target").opts(color="#0f766e", xrotation=15)
(bars * hv.HLine(1).opts(color="red", line_dash="dashed")).opts(
    title="Measured / target (1 = target met)", width=650, height=300)"""),
    md("""## Clean up

Every leg ran in a child process that has exited, and every section stopped its broker: remove
the temporary folder and check that nothing this kernel started is still running."""),
    code("""workdir.cleanup()
out.exists(), [p.name() for p in psutil.Process().children(recursive=True)]""", check=True),
])

finish(nb, "06_performance")
