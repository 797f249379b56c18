"""The registry against the stack's table under moto: idempotent claims, guarded state changes."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from maas.core.registry import (
    FAILED,
    OPTIMIZING,
    PROD,
    READY,
    TRAINING,
    Conflict,
    NotFound,
    Registry,
)


def claim(registry: Registry, job: str, model: str = "iris", actor: str = "test") -> Any:
    return registry.claim_job(
        job_name=job,
        model=model,
        run="run-1",
        source=f"s3://maas-data/datasets/{model}/run-1/job.json",
        actor=actor,
    )


def make_ready(registry: Registry, model: str, job: str) -> int:
    version = claim(registry, job, model).version
    registry.transition(model, version, expected=(TRAINING,), status=OPTIMIZING, actor="test")
    registry.transition(model, version, expected=(OPTIMIZING,), status=READY, actor="test")
    return version


# --- claims -------------------------------------------------------------------------------


def test_claim_job_twice_returns_the_same_version_and_creates_it_once(registry: Registry) -> None:
    # GIVEN a job claimed once
    first = claim(registry, "maas-iris-aaaa")

    # WHEN the same job is claimed again (a duplicate event)
    second = claim(registry, "maas-iris-aaaa")

    # THEN both name version 1, only the first created it, and one version row exists
    assert (first.version, first.created) == (1, True)
    assert (second.version, second.created, second.started) == (1, False, False)
    assert [v.version for v in registry.list_versions("iris")] == [1]


def test_claim_job_numbers_versions_per_model(registry: Registry) -> None:
    # GIVEN jobs for two models, interleaved
    a1 = claim(registry, "maas-iris-1", "iris")
    b1 = claim(registry, "maas-digits-1", "digits")
    a2 = claim(registry, "maas-iris-2", "iris")
    a3 = claim(registry, "maas-iris-3", "iris")

    # THEN each model counts its own versions from 1
    assert [a1.version, a2.version, a3.version] == [1, 2, 3]
    assert b1.version == 1
    record = registry.get_version("iris", 2)
    assert (record.status, record.job_name, record.run) == (TRAINING, "maas-iris-2", "run-1")


def test_claims_from_concurrent_threads_get_distinct_consecutive_versions(
    registry: Registry, aws: Any, atomic_requests: None
) -> None:
    # GIVEN eight distinct jobs for one model, each claimed from its own thread and client
    jobs = [f"maas-iris-{i}" for i in range(8)]
    registries = [Registry(aws.table) for _ in jobs]
    results: dict[str, int] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(jobs))

    def work(job: str, reg: Registry) -> None:
        try:
            start.wait()
            results[job] = claim(reg, job).version
        except BaseException as e:
            errors.append(e)

    threads = [
        threading.Thread(target=work, args=(j, r)) for j, r in zip(jobs, registries, strict=True)
    ]

    # WHEN they all claim at once
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # THEN every job got its own version, 1..8, with no gaps and no duplicates
    assert errors == []
    assert sorted(results.values()) == list(range(1, 9))
    assert sorted(v.version for v in registry.list_versions("iris")) == list(range(1, 9))
    by_version = {v.version: v.job_name for v in registry.list_versions("iris")}
    assert {job: v for v, job in by_version.items()} == results


def test_same_job_claimed_from_concurrent_threads_creates_one_version(
    registry: Registry, aws: Any, atomic_requests: None
) -> None:
    # GIVEN six deliveries of the same upload, handled at once
    registries = [Registry(aws.table) for _ in range(6)]
    claims: list[Any] = []
    start = threading.Barrier(len(registries))

    def work(reg: Registry) -> None:
        start.wait()
        claims.append(claim(reg, "maas-iris-same"))

    threads = [threading.Thread(target=work, args=(r,)) for r in registries]

    # WHEN they all claim it
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # THEN exactly one created version 1 and the others found it
    assert len(claims) == 6
    assert {c.version for c in claims} == {1}
    assert sum(c.created for c in claims) == 1
    assert [v.version for v in registry.list_versions("iris")] == [1]


def test_mark_started_is_visible_to_later_claims(registry: Registry) -> None:
    # GIVEN a claimed job that has been started
    claim(registry, "maas-iris-aaaa")
    registry.mark_started("maas-iris-aaaa")

    # WHEN it is claimed again, or looked up
    again = claim(registry, "maas-iris-aaaa")
    found = registry.find_job("maas-iris-aaaa")

    # THEN both say started
    assert again.started is True
    assert found is not None and (found.model, found.version, found.started) == ("iris", 1, True)
    assert registry.find_job("maas-iris-unknown") is None


# --- transitions --------------------------------------------------------------------------


def test_transition_from_expected_status_moves_and_records_history(registry: Registry) -> None:
    # GIVEN a training version
    claim(registry, "maas-iris-aaaa")

    # WHEN it moves to OPTIMIZING with a summary
    record = registry.transition(
        "iris",
        1,
        expected=(TRAINING,),
        status=OPTIMIZING,
        actor="pipeline:optimize",
        reason="job completed",
        summary={"recipe": "fp32"},
    )

    # THEN the row shows the new status, reason, summary and the step in its history
    assert (record.status, record.reason, record.summary) == (
        OPTIMIZING,
        "job completed",
        {"recipe": "fp32"},
    )
    assert [h["status"] for h in record.history] == [TRAINING, OPTIMIZING]
    assert record.history[-1]["by"] == "pipeline:optimize"


def test_transition_from_unexpected_status_raises_conflict(registry: Registry) -> None:
    # GIVEN a version that already FAILED
    claim(registry, "maas-iris-aaaa")
    registry.transition("iris", 1, expected=(TRAINING,), status=FAILED, actor="test", reason="boom")

    # WHEN something expecting TRAINING tries to move it
    with pytest.raises(Conflict, match="FAILED"):
        registry.transition("iris", 1, expected=(TRAINING,), status=OPTIMIZING, actor="test")

    # THEN it stays FAILED with its reason
    record = registry.get_version("iris", 1)
    assert (record.status, record.reason) == (FAILED, "boom")


def test_transition_of_missing_version_raises_not_found(registry: Registry) -> None:
    with pytest.raises(NotFound):
        registry.transition("iris", 7, expected=(TRAINING,), status=FAILED, actor="test")


def test_update_summary_merges_fields(registry: Registry) -> None:
    # GIVEN a version with a summary
    claim(registry, "maas-iris-aaaa")
    registry.transition(
        "iris", 1, expected=(TRAINING,), status=OPTIMIZING, actor="test", summary={"a": 1}
    )

    # WHEN more fields are merged in
    registry.update_summary("iris", 1, {"b": 2})

    # THEN both are kept
    assert registry.get_version("iris", 1).summary == {"a": 1, "b": 2}


# --- aliases ------------------------------------------------------------------------------


def test_promote_ready_version_points_prod_at_it(registry: Registry) -> None:
    # GIVEN a READY version
    make_ready(registry, "iris", "maas-iris-1")

    # WHEN it is promoted
    alias = registry.promote("iris", 1, actor="alice", reason="first release")

    # THEN prod names it, with who and why
    assert (alias.name, alias.version, alias.previous) == (PROD, 1, [])
    assert (alias.updated_by, alias.reason) == ("alice", "first release")
    got = registry.get_alias("iris")
    assert got is not None and got.version == 1


@pytest.mark.parametrize("status", [TRAINING, OPTIMIZING, FAILED])
def test_promote_version_not_ready_raises_conflict(registry: Registry, status: str) -> None:
    # GIVEN a version that is not READY
    claim(registry, "maas-iris-1")
    if status != TRAINING:
        registry.transition("iris", 1, expected=(TRAINING,), status=status, actor="test")

    # WHEN it is promoted
    with pytest.raises(Conflict, match="only READY"):
        registry.promote("iris", 1, actor="alice", reason="too early")

    # THEN no alias exists
    assert registry.get_alias("iris") is None


def test_promote_missing_version_raises_not_found(registry: Registry) -> None:
    with pytest.raises(NotFound):
        registry.promote("iris", 3, actor="alice", reason="nope")


def test_rollback_returns_prod_to_the_previous_ready_version(registry: Registry) -> None:
    # GIVEN v1 then v2 promoted
    make_ready(registry, "iris", "maas-iris-1")
    make_ready(registry, "iris", "maas-iris-2")
    registry.promote("iris", 1, actor="alice", reason="v1")
    promoted = registry.promote("iris", 2, actor="alice", reason="v2")
    assert promoted.previous == [1]

    # WHEN prod is rolled back
    alias = registry.rollback("iris", actor="bob", reason="v2 misbehaves")

    # THEN prod is v1 again, and there is nothing earlier to roll back to
    assert alias.version == 1
    assert alias.updated_by == "bob"
    with pytest.raises(Conflict, match="no earlier READY"):
        registry.rollback("iris", actor="bob", reason="again")


def test_rollback_skips_versions_that_are_no_longer_ready(registry: Registry) -> None:
    # GIVEN v1, v2, v3 promoted in turn, and v2 since marked FAILED outside the alias
    for i in (1, 2, 3):
        make_ready(registry, "iris", f"maas-iris-{i}")
        registry.promote("iris", i, actor="alice", reason=f"v{i}")
    registry.transition(
        "iris", 2, expected=(READY,), status=FAILED, actor="ops", reason="bad data found"
    )

    # WHEN prod is rolled back
    alias = registry.rollback("iris", actor="bob", reason="v3 regressed")

    # THEN it skips v2 and lands on v1
    assert alias.version == 1


def test_rollback_without_alias_raises_not_found(registry: Registry) -> None:
    with pytest.raises(NotFound):
        registry.rollback("iris", actor="bob", reason="nothing there")


def test_promote_same_version_again_changes_nothing(registry: Registry) -> None:
    # GIVEN v1 promoted
    make_ready(registry, "iris", "maas-iris-1")
    first = registry.promote("iris", 1, actor="alice", reason="v1")

    # WHEN it is promoted again
    again = registry.promote("iris", 1, actor="bob", reason="v1 again")

    # THEN the alias is untouched
    assert (again.version, again.updated_at, again.updated_by) == (1, first.updated_at, "alice")


# --- audit and listing --------------------------------------------------------------------


def test_audit_log_records_actor_and_action_of_every_change(registry: Registry) -> None:
    # GIVEN a version created, made READY, promoted and rolled back over
    claim(registry, "maas-iris-1", actor="pipeline:ingest")
    registry.transition(
        "iris", 1, expected=(TRAINING,), status=OPTIMIZING, actor="pipeline:optimize"
    )
    registry.transition(
        "iris",
        1,
        expected=(OPTIMIZING,),
        status=READY,
        actor="pipeline:optimize",
        reason="gate passed",
    )
    registry.promote("iris", 1, actor="alice", reason="ship it")

    # WHEN the audit log is read
    log = registry.audit_log("iris")

    # THEN each change is there, in order, with who did it
    assert [(e["actor"], e["action"]) for e in log] == [
        ("pipeline:ingest", "version-created"),
        ("pipeline:optimize", "status:OPTIMIZING"),
        ("pipeline:optimize", "status:READY"),
        ("alice", "promote:prod"),
    ]
    assert "ship it" in log[-1]["detail"]
    assert all(e["at"] for e in log)


def test_list_models_names_every_model_once(registry: Registry) -> None:
    # GIVEN versions of three models, one with several
    for job, model in [("j1", "iris"), ("j2", "digits"), ("j3", "iris"), ("j4", "wine")]:
        claim(registry, job, model)

    # THEN list_models gives each model once, sorted
    assert registry.list_models() == ["digits", "iris", "wine"]


def test_list_models_of_empty_registry_is_empty(registry: Registry) -> None:
    assert registry.list_models() == []
    assert registry.list_versions("iris") == []
    assert registry.get_alias("iris") is None
