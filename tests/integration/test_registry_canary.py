"""Canary weights on the prod alias, rollback of a canary, and the alias's conditional writes."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from maas.core.registry import (
    OPTIMIZING,
    PROD,
    READY,
    TRAINING,
    Conflict,
    NotFound,
    Registry,
)


def make_ready(registry: Registry, model: str, n: int) -> list[int]:
    versions = []
    for i in range(n):
        claim = registry.claim_job(
            job_name=f"maas-{model}-{i}",
            model=model,
            run=f"run-{i}",
            source=f"s3://maas-data/datasets/{model}/run-{i}/job.json",
            actor="test",
        )
        registry.transition(
            model, claim.version, expected=(TRAINING,), status=OPTIMIZING, actor="t"
        )
        registry.transition(model, claim.version, expected=(OPTIMIZING,), status=READY, actor="t")
        versions.append(claim.version)
    return versions


@pytest.fixture
def three(registry: Registry) -> Registry:
    """iris v1..v3 READY, v1 prod."""
    make_ready(registry, "iris", 3)
    registry.promote("iris", 1, actor="alice", reason="first")
    return registry


def test_set_canary_records_version_and_weight_beside_prod(three: Registry) -> None:
    alias = three.set_canary("iris", 3, 0.1, actor="bob", reason="try v3")
    assert (alias.version, alias.canary_version, alias.canary_weight) == (1, 3, 0.1)
    again = three.get_alias("iris", PROD)
    assert again is not None and (again.canary_version, again.canary_weight) == (3, 0.1)
    assert again.updated_by == "bob" and again.reason == "try v3"


def test_canary_weight_zero_clears_it(three: Registry) -> None:
    three.set_canary("iris", 3, 0.5, actor="bob", reason="try")
    alias = three.set_canary("iris", None, 0.0, actor="bob", reason="enough")
    assert (alias.version, alias.canary_version, alias.canary_weight) == (1, None, 0.0)


@pytest.mark.parametrize("weight", [-0.1, 1.5, float("nan")])
def test_canary_weight_outside_0_1_is_refused(three: Registry, weight: float) -> None:
    with pytest.raises(ValueError, match="within"):
        three.set_canary("iris", 3, weight, actor="bob", reason="x")


def test_canary_of_the_prod_version_is_refused(three: Registry) -> None:
    with pytest.raises(Conflict, match="already prod"):
        three.set_canary("iris", 1, 0.2, actor="bob", reason="x")


def test_canary_of_a_version_not_ready_is_refused(three: Registry) -> None:
    three.transition("iris", 2, expected=(READY,), status="REJECTED", actor="t", reason="bad")
    with pytest.raises(Conflict, match="REJECTED"):
        three.set_canary("iris", 2, 0.2, actor="bob", reason="x")
    with pytest.raises(NotFound):
        three.set_canary("iris", 9, 0.2, actor="bob", reason="x")


def test_canary_without_prod_alias_is_not_found(registry: Registry) -> None:
    make_ready(registry, "wine", 2)
    with pytest.raises(NotFound, match="promote a version first"):
        registry.set_canary("wine", 2, 0.2, actor="bob", reason="x")


def test_promoting_the_canary_completes_it(three: Registry) -> None:
    three.set_canary("iris", 3, 0.1, actor="bob", reason="try")
    alias = three.promote("iris", 3, actor="bob", reason="v3 is good")
    assert (alias.version, alias.canary_version, alias.previous) == (3, None, [1])


def test_promoting_another_version_keeps_the_canary(three: Registry) -> None:
    three.set_canary("iris", 3, 0.1, actor="bob", reason="try")
    alias = three.promote("iris", 2, actor="bob", reason="hotfix")
    assert (alias.version, alias.canary_version, alias.canary_weight) == (2, 3, 0.1)


def test_rollback_during_a_canary_removes_it_and_keeps_prod(three: Registry) -> None:
    # GIVEN v2 promoted over v1, then a canary of v3
    three.promote("iris", 2, actor="bob", reason="v2")
    three.set_canary("iris", 3, 0.1, actor="bob", reason="try v3")

    # WHEN rolled back: THEN the canary is gone and v2 stays prod
    first = three.rollback("iris", actor="carol", reason="v3 errors")
    assert (first.version, first.canary_version, first.previous) == (2, None, [1])

    # WHEN rolled back again: THEN prod returns to v1
    second = three.rollback("iris", actor="carol", reason="v2 too")
    assert (second.version, second.canary_version) == (1, None)


def test_every_alias_change_is_audited_with_actor_and_reason(three: Registry) -> None:
    three.promote("iris", 2, actor="bob", reason="v2")
    three.set_canary("iris", 3, 0.25, actor="bob", reason="try v3")
    three.rollback("iris", actor="carol", reason="v3 errors")
    entries = [(e["actor"], e["action"], e["detail"]) for e in three.audit_log("iris")]
    alias_entries = [e for e in entries if e[1].split(":")[0] in ("promote", "canary", "rollback")]
    assert alias_entries == [
        ("alice", "promote:prod", "v1: first"),
        ("bob", "promote:prod", "v2: v2"),
        ("bob", "canary:prod", "v3 at 0.25 beside v2: try v3"),
        ("carol", "rollback:prod", "canary v3 removed, v2 stays: v3 errors"),
    ]


def test_alias_write_from_a_stale_read_loses(three: Registry) -> None:
    # GIVEN a writer that read the alias, then another writer moved it
    stale = three.get_alias("iris", PROD)
    assert stale is not None
    three.set_canary("iris", 3, 0.1, actor="bob", reason="first")

    # WHEN the first writer writes from what it read: THEN it loses, and nothing changed
    with pytest.raises(Conflict, match="moved concurrently"):
        three._write_alias("iris", PROD, 2, [], stale, "alice", "late")
    alias = three.get_alias("iris", PROD)
    assert alias is not None and (alias.version, alias.canary_version) == (1, 3)
    assert alias.revision == stale.revision + 1


def test_concurrent_canary_changes_each_apply_once_or_conflict(
    three: Registry, atomic_requests: None
) -> None:
    # GIVEN eight people setting different canary weights at the same moment
    outcomes: list[Any] = []
    barrier = threading.Barrier(8)

    def set_weight(i: int) -> None:
        barrier.wait()
        try:
            outcomes.append(three.set_canary("iris", 3, (i + 1) / 10, actor=f"u{i}", reason="x"))
        except Conflict as e:
            outcomes.append(e)

    threads = [threading.Thread(target=set_weight, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # THEN every write either applied (one revision each) or lost with a Conflict
    won = [o for o in outcomes if not isinstance(o, Exception)]
    assert won and len(won) + sum(isinstance(o, Conflict) for o in outcomes) == 8
    final = three.get_alias("iris", PROD)
    assert final is not None and final.revision == 1 + len(won)  # promote wrote revision 1
    audited = [e for e in three.audit_log("iris") if e["action"] == "canary:prod"]
    assert len(audited) == len(won)


def test_alias_rows_from_before_revisions_still_move(three: Registry, aws: Any) -> None:
    # GIVEN a prod alias row written by the previous code (no revision attribute)
    aws.dynamodb.update_item(
        TableName=aws.table,
        Key={"pk": {"S": "MODEL#iris"}, "sk": {"S": "ALIAS#prod"}},
        UpdateExpression="REMOVE revision",
    )
    # THEN it can still be promoted, conditionally, and gains a revision
    alias = three.promote("iris", 2, actor="bob", reason="v2")
    assert (alias.version, alias.revision) == (2, 1)
