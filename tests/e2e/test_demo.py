"""What `make demo` prints: progress a person can read, then the summary, and nothing after.

Pins which lines appear and in what order, not the figures: no JSON line (metrics and logs go
to the stack's log file), no warning from a library.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]
MAAS = Path(sys.executable).with_name("maas")

# Each step in order; a step may print several lines (bars, candidates) or none (training
# bars are redrawn in place only on a terminal).
STEPS = [
    r"digits: 1797 real samples; \d+ uploaded for training, \d+ kept back",
    r"local stack up: AWS http://127\.0\.0\.1:\d+, API http://127\.0\.0\.1:\d+",
    r"upload seen +s3://maas-data/datasets/digits/digits\.csv",
    r"job started +digits v1: table, ",
    r"training +\[[#.]+\] epoch \d+/\d+",
    r"trained +test_accuracy 0\.\d+",
    r"optimizing +maas-digits-",
    r"candidate +[a-z0-9+-]+ ",  # compression students: <base>+<recipe>
    r"ready +digits v1: ",
    r"promoted +digits v1 -> prod",
    r"serving +http://127\.0\.0\.1:\d+/v2/models/digits/infer",
    r"scoring +450 kept-back rows over HTTP",
    "(?!.)",  # one empty line
    r"test accuracy over HTTP : 0\.\d+ \(\d+/450 rows\)",
    r"chosen recipe +: \S+",
    r"model size +: [\d.]+ KiB fp32 -> [\d.]+ KiB served",
    r"request latency \(HTTP\)  : p50 [\d.]+ ms, p99 [\d.]+ ms over 450 requests",
    r"upload -> serving +: [\d.]+ s; demo total [\d.]+ s",
]


def test_the_demo_prints_its_steps_in_order_then_the_summary_last(tmp_path: Path) -> None:
    # WHEN `maas demo` runs as `make demo` runs it (stdout a pipe here, not a terminal)
    done = subprocess.run(
        [str(MAAS), "demo"], capture_output=True, text=True, timeout=900, cwd=tmp_path
    )
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout + done.stderr

    # THEN every line belongs to a step, the steps come in order, each at least once, and
    # the summary's last line is the last line
    step = 0
    seen = set()
    for line in lines:
        while step < len(STEPS) and not re.fullmatch(STEPS[step] + ".*", line):
            step += 1
        assert step < len(STEPS), f"unexpected or out-of-order line: {line!r}\n{done.stdout}"
        seen.add(step)
    assert seen == set(range(len(STEPS))), [STEPS[i] for i in set(range(len(STEPS))) - seen]
    assert re.fullmatch(STEPS[-1], lines[-1])
    assert not [ln for ln in lines if ln.lstrip().startswith("{")], "a JSON line"
    assert not re.search(r"warn", done.stdout + done.stderr, re.I), done.stdout + done.stderr
