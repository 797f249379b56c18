"""cfn-lint over template.yaml, in process (it loads every resource schema: seconds, not pure)."""

from __future__ import annotations

from typing import Any

from maas_devkit.repo import TEMPLATE


def test_cfn_lint_is_clean(reliability_report: Any) -> None:
    from cfnlint.api import ManualArgs, lint_file

    matches = lint_file(TEMPLATE, config=ManualArgs(regions=["us-east-1"]))
    problems = [f"{m.rule.id} {m.message} ({m.linenumber})" for m in matches]
    assert not problems, "\n".join(problems)
    reliability_report.tried("Security", "cfn-lint on template.yaml", "no finding")
