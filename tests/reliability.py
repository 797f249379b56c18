"""The reliability figures a test run measures, and the README table made from them.

Tests record what they tried and what came out through the session fixture `reliability`
(tests/conftest.py); at the end of the run the figures are merged into
.maas/reliability-report.json (a section a run did not reach keeps its last figures).

    python tests/reliability.py           # print the table
    python tests/reliability.py --details # every item tried and its outcome
    python tests/reliability.py --readme  # write it into README.md between its markers
    (make reliability-table does the second)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / ".maas" / "reliability-report.json"
README = REPO / "README.md"
BEGIN = "<!-- reliability-table:begin (make reliability-table) -->"
END = "<!-- reliability-table:end -->"
SHOWN = 6  # items named per row; --details lists them all
SECTIONS = (
    "Bad input at the API",
    "Fuzzing",
    "Ingest events",
    "Pipeline faults",
    "Serving faults",
    "Load",
    "Security",
)


@dataclass
class Report:
    """What this run tried, per section: items (name -> outcome) and figures (name -> value)."""

    items: dict[str, dict[str, str]] = field(default_factory=dict)
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)

    def tried(self, section: str, name: str, outcome: str) -> None:
        self._check(section)
        self.items.setdefault(section, {})[name] = outcome

    def measured(self, section: str, **figures: Any) -> None:
        self._check(section)
        self.figures.setdefault(section, {}).update(figures)

    @staticmethod
    def _check(section: str) -> None:
        if section not in SECTIONS:
            raise ValueError(f"unknown section {section!r}; one of {SECTIONS}")

    def save(self, path: Path = REPORT) -> None:
        """Merge this run's sections into the report file."""
        if not self.items and not self.figures:
            return
        doc = load(path)
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        for section in SECTIONS:
            if section in self.items or section in self.figures:
                # A run of some tests updates what they measured and keeps the rest.
                old = doc.get(section) or {}
                doc[section] = {
                    "items": {**old.get("items", {}), **self.items.get(section, {})},
                    "figures": {**old.get("figures", {}), **self.figures.get(section, {})},
                    "run_at": stamp,
                }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2) + "\n")


def load(path: Path = REPORT) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _summary(section: str, entry: dict[str, Any]) -> tuple[str, str]:
    items: dict[str, str] = entry.get("items", {})
    f: dict[str, Any] = entry.get("figures", {})
    if section == "Fuzzing":
        tried = (
            f"{f.get('cases', 0):,} schemathesis cases over {f.get('operations', 0)} operations "
            f"of docs/openapi.json ({f.get('with_model', 0):,} against a published model), "
            f"through the handlers, in {f.get('seconds', 0):.0f} s"
        )
        outcome = (
            f"{f.get('server_errors', 0)} 5xx, {f.get('schema_violations', 0)} responses "
            f"outside the document; status codes seen: {f.get('statuses', '')}"
        )
        return tried, outcome
    if section == "Load":
        tried = (
            f"HTTP: {f.get('http_requests', 0):,} requests from {f.get('http_clients', 0)} "
            f"concurrent clients through the local stack; in-process: "
            f"{f.get('inproc_requests', 0):,} requests on one warm function"
        )
        outcome = (
            f"HTTP: {f.get('http_errors', 0)} errors, {f.get('http_rps', 0):.0f} req/s, "
            f"p50 {f.get('http_p50_ms', 0):.1f} ms, p99 {f.get('http_p99_ms', 0):.1f} ms; "
            f"in-process: {f.get('inproc_errors', 0)} errors ({f.get('inproc_rps', 0)} req/s), "
            f"resident memory {f.get('inproc_rss_growth_mb', 0):+.1f} MiB and live Python "
            f"objects {f.get('inproc_objects_growth', 0):+d} after warm-up (the test's bounds: "
            f"{f.get('inproc_rss_bound_mb', 0)} MiB, {f.get('inproc_objects_bound', 0):,})"
        )
        return tried, outcome
    shown = list(items)[:SHOWN]
    tried = f"{len(items)} kinds: {', '.join(shown)}" + (", ..." if len(items) > SHOWN else "")
    counts = Counter(items.values())
    return tried, "; ".join(f"{n}: {outcome}" for outcome, n in counts.most_common())


def details(doc: dict[str, Any]) -> str:
    """Every item tried, with its outcome (`python tests/reliability.py --details`)."""
    lines = []
    for section in SECTIONS:
        items = (doc.get(section) or {}).get("items", {})
        lines.append(f"{section}:")
        lines.extend(f"  - {name}: {outcome}" for name, outcome in items.items())
    return "\n".join(lines) + "\n"


def render(doc: dict[str, Any]) -> str:
    lines = ["| area | tried | outcome |", "|---|---|---|"]
    for section in SECTIONS:
        entry = doc.get(section)
        if not entry:
            lines.append(f"| {section} | not run yet | |")
            continue
        tried, outcome = _summary(section, entry)
        lines.append(f"| {section} | {tried} | {outcome} |")
    return "\n".join(lines) + "\n"


def write_readme(table: str, readme: Path = README) -> bool:
    text = readme.read_text()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{readme} has no {BEGIN} ... {END} block")
    updated = text[: start + len(BEGIN)] + "\n" + table + text[end:]
    if updated != text:
        readme.write_text(updated)
    return updated != text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--readme", action="store_true", help="write the table into README.md")
    p.add_argument("--details", action="store_true", help="list every item and its outcome")
    args = p.parse_args(argv)
    doc = load()
    if not doc:
        print(f"no figures yet: run the tests first ({REPORT})", file=sys.stderr)
        return 1
    table = render(doc)
    if args.details:
        print(details(doc), end="")
    elif args.readme:
        print("README.md updated" if write_readme(table) else "README.md already current")
    else:
        print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
