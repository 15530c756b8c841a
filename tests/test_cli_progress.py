"""``c360 run --until-idle`` says what it is doing while it runs, on stderr.

On a terminal (here a real pseudo-terminal) it redraws one line every second; in a log
(stderr not a terminal) it writes a plain line every 10 s and a summary at the end.
Nothing here depends on speed: a bounded run lasts at least its idle time (4 s) after its
last event, and the line is redrawn every second meanwhile.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys

from c360.config import REPO_ROOT, Settings
from c360.dev.simulator import simulate


def test_a_bounded_run_redraws_its_progress_on_a_terminal(settings: Settings) -> None:
    report = simulate(settings, customers=30, events=1_500, rate=0, seed=3, progress=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("C360_")}
    env.update({"C360_KAFKA_BOOTSTRAP": settings.bootstrap,
                "C360_TOPIC_PREFIX": settings.topic_prefix, "COLUMNS": "200"})
    main, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "c360", "run", "--until-idle", "4"],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=child)
    os.close(child)
    seen = b""
    try:
        while True:
            ready, _, _ = select.select([main], [], [], 120)
            assert ready, "no output for 120 s"
            try:
                chunk = os.read(main, 4096)
            except OSError:  # the child closed the terminal: it has exited
                break
            if not chunk:
                break
            seen += chunk
        out = proc.communicate(timeout=120)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)
    assert proc.returncode == 0, seen.decode(errors="replace")[-2000:]
    text = seen.decode()
    redraws = re.findall(r"\rc360 run: ([\d,]+) events read \(([\d,]+)/s\)([^\r\n]*)", text)
    # While the topics were quiet (4 s), the line was redrawn every second, with the events
    # read, the event time reached and how long the topics have been idle.
    assert len(redraws) >= 2, text
    last_count, _, last_rest = redraws[-1]
    assert int(last_count.replace(",", "")) == report.events, text
    assert "event time 20" in last_rest and re.search(r"idle \d+s of 4s", text), text
    # The live line is erased at the end and replaced by a summary; stdout keeps the result.
    assert re.search(rf"\r\x1b\[Kc360 run: {report.events:,} events read in [\d.]+s", text)
    assert re.search(r"products as of 20\S+ \(event time\)$", out.strip()), out


def test_progress_never_keeps_stderr_empty(settings: Settings) -> None:
    simulate(settings, customers=5, events=500, rate=0, seed=4, progress=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("C360_")}
    env.update({"C360_TOPIC_PREFIX": settings.topic_prefix})
    done = subprocess.run([sys.executable, "-m", "c360", "run", "--until-idle", "1",
                           "--progress", "never", "--bootstrap", settings.bootstrap],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    # The summary says which event time the bounded run's answer is as of (the end of the data).
    assert re.fullmatch(r"\d+ customers, \d+ products as of 20\S+ \(event time\)\n",
                        done.stdout), done.stdout
