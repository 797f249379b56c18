"""The committed fixtures: a missing one fails the suite, it never skips a test.

events/README.md lists the event files `sam local invoke -e` replays (and the tests replay);
bench/baseline.json is what the handler-overhead regression check compares with.
"""

from __future__ import annotations

import json
import re

import pytest
from maas_devkit.events import event_file
from maas_devkit.repo import EVENTS_DIR, REPO

LISTED = re.findall(r"^\| `([\w.-]+\.json)` \|", (EVENTS_DIR / "README.md").read_text(), re.M)


def test_the_events_readme_lists_every_event_file_and_only_those() -> None:
    assert len(LISTED) >= 8, LISTED
    assert sorted(LISTED) == sorted(p.name for p in EVENTS_DIR.glob("*.json"))


@pytest.mark.parametrize("name", LISTED)
def test_each_listed_event_file_is_there_and_parses(name: str) -> None:
    doc = event_file(name)
    assert doc, name


def test_a_missing_event_file_is_an_error_not_a_skip() -> None:
    with pytest.raises(FileNotFoundError):
        event_file("no-such-event.json")


def test_the_bench_baseline_is_committed_with_its_overhead_ratio() -> None:
    doc = json.loads((REPO / "bench" / "baseline.json").read_text())
    assert doc["overhead_ratio"] > 0


def test_the_unit_tier_refuses_subprocesses_and_connections() -> None:
    import socket
    import subprocess

    with pytest.raises(RuntimeError, match="no subprocess"):
        subprocess.run(["true"], check=False)
    with socket.socket() as s, pytest.raises(RuntimeError, match="no network"):
        s.connect(("127.0.0.1", 9))
