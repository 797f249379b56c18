"""`maas local status` and `maas local logs`: read the work dir, whether the stack runs or not."""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

from maas_local.lock import WorkdirLock
from maas_local.state import StateStore


def print_status(workdir: Path) -> int:
    """What the work dir's stack holds (from its last snapshot); 0 when it runs, else 1."""
    holder = WorkdirLock(workdir).holder()
    snap = StateStore(workdir / "state").latest()
    if snap is None:
        where = "runs" if holder else "has never run"
        print(
            f"the local stack on {workdir} {where} and holds nothing yet: "
            "`maas local up` starts it, `maas upload FILE --model NAME` trains a model"
        )
        return 0 if holder else 1
    store = StateStore(workdir / "state")
    items = [item for items in snap.tables.values() for item in items]
    models = sorted({i["pk"]["S"].removeprefix("MODEL#") for i in items if i["sk"]["S"] == "META"})
    versions = Counter(
        (i["pk"]["S"].removeprefix("MODEL#"), i["status"]["S"])
        for i in items
        if i["sk"]["S"].startswith("V#")
    )
    if holder:
        print(
            f"running: pid {holder.get('pid')}, AWS port {holder.get('aws_port')}, "
            f"API port {holder.get('api_port')}"
        )
    else:
        print(f"not running (`maas local up --workdir {workdir}` starts it with this state)")
    print(f"saved at {snap.saved_at}")
    print(f"models: {len(models)}")
    for model in models:
        counts = ", ".join(f"{n} {s}" for (m, s), n in sorted(versions.items()) if m == model)
        print(f"  {model:<24} {counts}")
    for logical, entries in sorted(snap.buckets.items()):
        live = [e for e in entries if not e["delete_marker"]]
        size = sum(store.blob_size(e["blob"]) for e in live)
        print(f"{logical:<16} {len(live)} object versions, {_size(size)}")
    return 0 if holder else 1


def print_logs(workdir: Path, *, follow: bool = False) -> int:
    path = workdir / "logs" / "stack.log"
    if not path.exists():
        print(f"no log at {path}: the local stack has not run on {workdir} (`maas local up`)")
        return 1
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            sys.stdout.write(line)
        while follow:
            line = f.readline()
            if line:
                sys.stdout.write(line)
                sys.stdout.flush()
            else:
                time.sleep(0.2)
    return 0


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"
