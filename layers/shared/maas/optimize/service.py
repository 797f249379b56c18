"""Optimize: a finished training job becomes a verified, quantized, registered version."""

from __future__ import annotations

import json
import re
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger

from maas.core.artifacts import model_prefix
from maas.core.config import OptimizeSettings
from maas.core.contract import (
    CALIBRATION_FILE,
    COMPRESSED_DIR,
    COMPRESSED_FILE,
    GENERATION_SPEC_FILE,
    LABELS_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_FILE,
    PLOT_FILE,
    REQUIRED_MODEL_FILES,
    SAMPLE_FILE,
    SCHEMA_FILE,
    TABLE_SPEC_FILE,
    TEXT_GENERATION,
    TEXT_SPEC_FILE,
    TOKENIZER_FILE,
    Manifest,
)
from maas.core.registry import (
    FAILED,
    OPTIMIZING,
    READY,
    REJECTED,
    TRAINING,
    Conflict,
    Registry,
    now_iso,
)
from maas.core.storage import Storage, parse_s3_uri, sha256_file
from maas.ingest.jobspec import JobSpec

if TYPE_CHECKING:
    from maas.optimize.quantize import Base, Selection

logger = Logger(child=True)
ACTOR = "pipeline:optimize"
MAX_ARTIFACT_BYTES = 2 * 1024**3
DETAIL_TYPE = "SageMaker Training Job State Change"


@dataclass(frozen=True)
class Outcome:
    job_name: str
    action: str  # ready | rejected | failed | duplicate | ignored | in-progress
    model: str | None = None
    version: int | None = None
    detail: str = ""
    promoted: bool = False


class Optimizer:
    def __init__(self, settings: OptimizeSettings, registry: Registry, storage: Storage) -> None:
        self.settings = settings
        self.registry = registry
        self.storage = storage

    def handle_event(self, event: dict[str, Any]) -> Outcome:
        detail = event.get("detail") or {}
        name = str(detail.get("TrainingJobName", ""))
        status = detail.get("TrainingJobStatus")
        claim = self.registry.find_job(name) if name else None
        if claim is None:
            logger.info("not a job of this stack", extra={"job": name})
            return Outcome(name, "ignored", detail="no registry record for this job")
        model, version = claim.model, claim.version
        if status not in ("Completed", "Failed", "Stopped"):
            return Outcome(name, "in-progress", model, version, f"status {status}")
        if status != "Completed":
            reason = detail.get("FailureReason") or f"training job {status.lower()}"
            return self._finish_failed(name, model, version, f"training {status.lower()}: {reason}")
        try:
            self.registry.transition(
                model,
                version,
                expected=(TRAINING,),
                status=OPTIMIZING,
                actor=ACTOR,
                reason=f"training job {name} completed",
            )
        except Conflict as e:
            logger.info("duplicate completion event", extra={"job": name, "why": str(e)})
            return Outcome(name, "duplicate", model, version, str(e))
        try:
            return self._optimize(name, model, version, detail)
        except Exception as e:  # any crash must leave a recorded reason, never a stuck version
            logger.exception("optimize failed")
            self._settle(model, version, FAILED, f"optimize failed: {e}")
            return Outcome(name, "failed", model, version, str(e))

    def _finish_failed(self, name: str, model: str, version: int, reason: str) -> Outcome:
        try:
            self.registry.transition(
                model,
                version,
                expected=(TRAINING,),
                status=FAILED,
                actor=ACTOR,
                reason=reason[:2000],
            )
        except Conflict as e:
            return Outcome(name, "duplicate", model, version, str(e))
        return Outcome(name, "failed", model, version, reason)

    def _optimize(self, name: str, model: str, version: int, detail: dict[str, Any]) -> Outcome:
        record = self.registry.get_version(model, version)
        spec = JobSpec.model_validate(record.summary.get("spec") or {})
        artifact_uri = (detail.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
        if not artifact_uri:
            raise ValueError("the completion event names no model artifact")
        with tempfile.TemporaryDirectory(prefix="maas-opt-") as tmp:
            work = Path(tmp)
            trained = self._fetch_artifact(artifact_uri, work)
            selection = _select(trained, spec, work / "candidates")
            digest = sha256_file(selection.chosen.path)
            prefix_uri = f"s3://{self.settings.artifact_bucket}/{model_prefix(model, version)}"
            summary = _summary(name, spec, trained, selection, digest, prefix_uri)
            rejection = _rejection(spec, trained)
            if rejection:
                self._settle(model, version, REJECTED, rejection, summary)
                return Outcome(name, "rejected", model, version, rejection)
            manifest = _manifest(
                name, model, version, record.source, spec, trained, selection, digest
            )
            self._publish(model, version, trained, selection.chosen.path, digest, manifest)
        self._settle(model, version, READY, selection.reason, summary)
        promoted = spec.auto_promote and self._promote(model, version)
        return Outcome(name, "ready", model, version, selection.reason, promoted)

    def _settle(
        self,
        model: str,
        version: int,
        status: str,
        reason: str,
        summary: dict[str, Any] | None = None,
    ) -> None:
        """OPTIMIZING -> ``status``, the optimizer's last word on the version."""
        self.registry.transition(
            model,
            version,
            expected=(OPTIMIZING,),
            status=status,
            actor=ACTOR,
            reason=reason,
            summary=summary,
        )

    def _publish(
        self,
        model: str,
        version: int,
        trained: Trained,
        chosen: Path,
        digest: str,
        manifest: dict[str, Any],
    ) -> None:
        """The model first, the manifest last: a manifest always points at a complete model."""
        prefix = model_prefix(model, version)
        bucket = self.settings.artifact_bucket
        self.storage.upload(chosen, bucket, prefix + MODEL_FILE, metadata={"sha256": digest})
        for file_name, path in trained.text_files.items():
            self.storage.upload(path, bucket, prefix + file_name)
        if trained.plot:
            self.storage.upload(trained.plot, bucket, prefix + PLOT_FILE)
        self.storage.put_bytes(
            bucket,
            prefix + MANIFEST_FILE,
            json.dumps(manifest, indent=2).encode(),
            content_type="application/json",
        )

    def _promote(self, model: str, version: int) -> bool:
        """Auto-promotion; a concurrent alias move (a person promoting) is retried, not fatal."""
        for _ in range(3):
            try:
                self.registry.promote(
                    model, version, actor=ACTOR, reason="auto-promote: passed the quality gate"
                )
                return True
            except Conflict as e:
                logger.warning("promotion raced; retrying", extra={"why": str(e)})
        return False

    def _fetch_artifact(self, uri: str, work: Path) -> Trained:
        """model.tar.gz, downloaded, unpacked under ``work`` and checked for what it must hold."""
        bucket, key = parse_s3_uri(uri)
        tarball = self.storage.download(bucket, key, work / "model.tar.gz")
        if tarball.stat().st_size > MAX_ARTIFACT_BYTES:
            raise ValueError("model.tar.gz is larger than 2 GiB")
        model_dir = work / "model"
        model_dir.mkdir()
        try:
            with tarfile.open(tarball, "r:gz") as tar:
                tar.extractall(model_dir, filter="data")  # refuses links and paths outside
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ValueError(f"model.tar.gz is corrupt or unreadable: {e}") from None
        missing = [f for f in REQUIRED_MODEL_FILES if not (model_dir / f).is_file()]
        if missing:
            raise ValueError(f"model.tar.gz lacks {', '.join(missing)}")
        text_spec, text_files = _text_files(model_dir)
        generation = model_dir / GENERATION_SPEC_FILE
        plot = model_dir / PLOT_FILE
        table = model_dir / TABLE_SPEC_FILE
        return Trained(
            dir=model_dir,
            metrics=json.loads((model_dir / METRICS_FILE).read_text()),
            labels=json.loads((model_dir / LABELS_FILE).read_text()),
            schema=json.loads((model_dir / SCHEMA_FILE).read_text()),
            text_spec=text_spec,
            text_files=text_files,
            plot=plot if plot.is_file() else None,
            table_spec=json.loads(table.read_text()) if table.is_file() else None,
            generation=json.loads(generation.read_text()) if generation.is_file() else None,
        )


@dataclass(frozen=True)
class Trained:
    """The training job's model directory, unpacked and read."""

    dir: Path
    metrics: dict[str, Any]
    labels: Any
    schema: dict[str, Any]
    text_spec: dict[str, Any] | None  # text.json, when the model takes text
    text_files: dict[str, Path]  # text.json and the tokenizer file it names, published beside
    plot: Path | None  # training.png, when the job drew one
    table_spec: dict[str, Any] | None = None  # table.json: the column transforms serving runs
    generation: dict[str, Any] | None = None  # generation.json (text-generation models)

    @property
    def task(self) -> str:
        """What the job trained: a table's label may have made it a regression."""
        return str(self.schema.get("task") or self.metrics.get("task") or "classification")

    @property
    def fp32_accuracy(self) -> float:
        return float(self.metrics.get("test_accuracy", 0.0))


def _text_files(model_dir: Path) -> tuple[dict[str, Any] | None, dict[str, Path]]:
    spec_path = model_dir / TEXT_SPEC_FILE
    if not spec_path.is_file():
        return None, {}
    spec = json.loads(spec_path.read_text())
    files = {TEXT_SPEC_FILE: spec_path}
    if spec.get("file"):
        name = str(spec["file"])
        if name != TOKENIZER_FILE or not (model_dir / name).is_file():
            raise ValueError(f"text.json names {name!r}, which the artifact does not hold")
        files[name] = model_dir / name
    return spec, files


def _select(trained: Trained, spec: JobSpec, workdir: Path) -> Selection:
    """The recipe search over the trained graph, with the job's quality gate."""
    from maas.optimize.feeds import load_npz
    from maas.optimize.quantize import optimize_model  # onnx is heavy: only on this path

    if spec.task == TEXT_GENERATION:
        from maas.optimize.lmsearch import optimize_lm

        return optimize_lm(
            trained.dir / MODEL_FILE,
            load_npz(trained.dir / SAMPLE_FILE),
            workdir,
            max_perplexity_increase=spec.quality_gate.max_perplexity_increase,
            min_agreement=spec.quality_gate.min_agreement,
        )
    calib_path = trained.dir / CALIBRATION_FILE
    bases, notes = compression_bases(trained.dir)
    selection = optimize_model(
        trained.dir / MODEL_FILE,
        load_npz(trained.dir / SAMPLE_FILE),
        load_npz(calib_path) if calib_path.exists() else None,
        workdir,
        task=trained.task,
        max_accuracy_drop=spec.quality_gate.max_accuracy_drop,
        min_cosine=spec.quality_gate.min_cosine,
        max_r2_drop=spec.quality_gate.max_r2_drop,
        transformer=trained.schema.get("transformer"),
        bases=bases,
    )
    selection.notes.extend(notes)
    return selection


_BASE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,40}")


def compression_bases(model_dir: Path) -> tuple[list[Base], list[str]]:
    """compressed.json's students (contract.Compressed) that the optimizer may build on, and
    notes on any entry it skipped (a malformed entry costs that candidate, never the version)."""
    from maas.optimize.quantize import FP32, Base

    index = model_dir / COMPRESSED_FILE
    if not index.is_file():
        return [], []
    try:
        entries = json.loads(index.read_text())
    except ValueError:
        return [], [f"{COMPRESSED_FILE} is not JSON: no compression candidates"]
    if not isinstance(entries, list):
        return [], [f"{COMPRESSED_FILE} is not a list: no compression candidates"]
    bases: list[Base] = []
    notes: list[str] = []
    root = (model_dir / COMPRESSED_DIR).resolve()
    for e in entries:
        name = str(e.get("name", "")) if isinstance(e, dict) else ""
        path = (model_dir / str(e.get("file", ""))).resolve() if name else root
        if not _BASE_NAME.fullmatch(name) or name == FP32 or name in {b.name for b in bases}:
            notes.append(f"compression candidate {name[:60]!r} skipped: not a usable name")
        elif path.parent != root or not path.is_file():
            notes.append(f"compression candidate {name} skipped: its file is missing")
        else:
            bases.append(Base(name, path, str(e.get("how", ""))))
    return bases, notes


def _rejection(spec: JobSpec, trained: Trained) -> str:
    """Why the version is rejected before publishing, or "" when it is not."""
    if trained.task == "regression" or trained.fp32_accuracy >= spec.quality_gate.min_accuracy:
        return ""
    return (
        f"fp32 test accuracy {trained.fp32_accuracy:.4f} is below the gate's "
        f"min_accuracy {spec.quality_gate.min_accuracy:.4f}"
    )


def _manifest(
    job: str,
    model: str,
    version: int,
    source: str,
    spec: JobSpec,
    trained: Trained,
    selection: Selection,
    digest: str,
) -> Manifest:
    """manifest.json: what serving loads the version by, and how it was chosen."""
    chosen, schema = selection.chosen, trained.schema
    manifest: Manifest = {
        "model": model,
        "version": version,
        "task": trained.task,
        "created_at": now_iso(),
        "training_job": job,
        "source": source,
        "platform": "onnxruntime_onnx",
        "inputs": schema.get("inputs"),
        "outputs": schema.get("outputs"),
        "features": schema.get("features"),
        "labels": trained.labels,
        "label_column": schema.get("label_column"),
        "training_metrics": trained.metrics,
        "quantization": selection.to_manifest(),
        "recipe": chosen.recipe,
        "fp32_size_bytes": selection.fp32.size_bytes,
        "size_bytes": chosen.size_bytes,
        "sha256": digest,
        "quality_gate": spec.quality_gate.model_dump(),
    }
    if trained.text_files:
        # The BYTES input is turned into the graph's inputs by this spec (and file).
        manifest["text"] = {
            "spec": trained.text_spec,
            "files": {name: sha256_file(path) for name, path in trained.text_files.items()},
        }
        manifest["graph_inputs"] = schema.get("graph_inputs")
    if trained.table_spec is not None:
        # The OIP inputs (one per column, or one matrix) become the graph's by this spec.
        manifest["table"] = trained.table_spec
        manifest["graph_inputs"] = schema.get("graph_inputs")
    if trained.generation is not None:
        manifest["generation"] = trained.generation
    if trained.plot:
        manifest["plot"] = PLOT_FILE
    return manifest


def _candidate_line(c: Any, chosen: str) -> dict[str, Any]:
    """One candidate as `maas versions --candidates` lists it (quantize.Candidate)."""
    return {
        "name": c.recipe,
        "base": c.base,
        "served": c.recipe == chosen,
        "passed_gate": bool(c.passed_gate),
        "quality": {k: round(float(v), 6) for k, v in c.quality.items()},
        "batch1_p50_ms": round(float(c.latency_ms.get("batch1_p50", 0.0)), 4),
        "batchN_p50_ms": round(float(c.latency_ms.get("batchN_p50", 0.0)), 4),
        "size_bytes": int(c.size_bytes),
        "error": c.error,
    }


def _summary(
    job: str, spec: JobSpec, trained: Trained, selection: Selection, digest: str, prefix_uri: str
) -> dict[str, Any]:
    """The registry row's summary of the version (``prefix_uri``: its S3 folder)."""
    chosen = selection.chosen
    summary = {
        "spec": spec.model_dump(),
        "recipe": chosen.recipe,
        "sha256": digest,
        "size_bytes": chosen.size_bytes,
        "fp32_size_bytes": selection.fp32.size_bytes,
        "task": trained.task,
        "fp32_test_accuracy": trained.fp32_accuracy,
        **(
            {"fp32_test_r2": float(trained.metrics.get("test_r2", 0.0))}
            if trained.task == "regression"
            else {}
        ),
        "served_quality": chosen.quality,
        "latency_ms": chosen.latency_ms,
        "manifest": prefix_uri + MANIFEST_FILE,
        "training_job": job,
        "candidates": [_candidate_line(c, chosen.recipe) for c in selection.candidates],
    }
    if trained.metrics.get("candidates"):  # the training job's model candidates (tables)
        summary["model_candidates"] = trained.metrics["candidates"]
        summary["selection"] = trained.metrics.get("selection")
    if trained.plot:
        summary["plot"] = prefix_uri + PLOT_FILE
    return summary
