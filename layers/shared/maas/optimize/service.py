"""Optimize: a finished training job becomes a verified, quantized, registered version."""

from __future__ import annotations

import json
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_lambda_powertools import Logger

from maas.core.artifacts import (
    CALIBRATION_FILE,
    LABELS_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_FILE,
    PLOT_FILE,
    SAMPLE_FILE,
    SCHEMA_FILE,
    TEXT_SPEC_FILE,
    TOKENIZER_FILE,
    model_prefix,
)
from maas.core.config import OptimizeSettings
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
            self.registry.transition(
                model,
                version,
                expected=(OPTIMIZING,),
                status=FAILED,
                actor=ACTOR,
                reason=f"optimize failed: {e}",
            )
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
        from maas.optimize.quantize import (  # onnx is heavy: only on this path
            load_npz,
            optimize_model,
        )

        record = self.registry.get_version(model, version)
        spec = JobSpec.model_validate(record.summary.get("spec") or {})
        artifact_uri = (detail.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
        if not artifact_uri:
            raise ValueError("the completion event names no model artifact")
        with tempfile.TemporaryDirectory(prefix="maas-opt-") as tmp:
            work = Path(tmp)
            model_dir = self._fetch_artifact(artifact_uri, work)
            metrics = json.loads((model_dir / METRICS_FILE).read_text())
            labels = json.loads((model_dir / LABELS_FILE).read_text())
            schema = json.loads((model_dir / SCHEMA_FILE).read_text())
            fp32_accuracy = float(metrics.get("test_accuracy", 0.0))
            sample = load_npz(model_dir / SAMPLE_FILE)
            calib_path = model_dir / CALIBRATION_FILE
            calibration = load_npz(calib_path) if calib_path.exists() else None
            selection = optimize_model(
                model_dir / MODEL_FILE,
                sample,
                calibration,
                work / "candidates",
                task=spec.task,
                max_accuracy_drop=spec.quality_gate.max_accuracy_drop,
                min_cosine=spec.quality_gate.min_cosine,
                transformer=schema.get("transformer"),
            )
            chosen = selection.chosen
            digest = sha256_file(chosen.path)
            text = self._text_files(model_dir)
            plot = model_dir / PLOT_FILE
            manifest = {
                "model": model,
                "version": version,
                "task": spec.task,
                "created_at": now_iso(),
                "training_job": name,
                "source": record.source,
                "platform": "onnxruntime_onnx",
                "inputs": schema.get("inputs"),
                "outputs": schema.get("outputs"),
                "features": schema.get("features"),
                "labels": labels,
                "label_column": schema.get("label_column"),
                "training_metrics": metrics,
                "quantization": selection.to_manifest(),
                "recipe": chosen.recipe,
                "fp32_size_bytes": selection.fp32.size_bytes,
                "size_bytes": chosen.size_bytes,
                "sha256": digest,
                "quality_gate": spec.quality_gate.model_dump(),
            }
            if text:
                # The BYTES input is turned into the graph's inputs by this spec (and file).
                manifest["text"] = {
                    "spec": json.loads((model_dir / TEXT_SPEC_FILE).read_text()),
                    "files": {name: sha256_file(path) for name, path in text.items()},
                }
                manifest["graph_inputs"] = schema.get("graph_inputs")
            if plot.is_file():
                manifest["plot"] = PLOT_FILE
            served_quality = chosen.quality
            summary = {
                "spec": spec.model_dump(),
                "recipe": chosen.recipe,
                "sha256": digest,
                "size_bytes": chosen.size_bytes,
                "fp32_size_bytes": selection.fp32.size_bytes,
                "fp32_test_accuracy": fp32_accuracy,
                "served_quality": served_quality,
                "latency_ms": chosen.latency_ms,
                "manifest": f"s3://{self.settings.artifact_bucket}/"
                f"{model_prefix(model, version)}{MANIFEST_FILE}",
                "training_job": name,
            }
            if plot.is_file():
                prefix_uri = f"s3://{self.settings.artifact_bucket}/{model_prefix(model, version)}"
                summary["plot"] = prefix_uri + PLOT_FILE
            if fp32_accuracy < spec.quality_gate.min_accuracy:
                reason = (
                    f"fp32 test accuracy {fp32_accuracy:.4f} is below the gate's "
                    f"min_accuracy {spec.quality_gate.min_accuracy:.4f}"
                )
                self.registry.transition(
                    model,
                    version,
                    expected=(OPTIMIZING,),
                    status=REJECTED,
                    actor=ACTOR,
                    reason=reason,
                    summary=summary,
                )
                return Outcome(name, "rejected", model, version, reason)
            prefix = model_prefix(model, version)
            bucket = self.settings.artifact_bucket
            # The model first, the manifest last: a manifest always points at a complete model.
            self.storage.upload(
                chosen.path, bucket, prefix + MODEL_FILE, metadata={"sha256": digest}
            )
            for file_name, path in text.items():
                self.storage.upload(path, bucket, prefix + file_name)
            if plot.is_file():
                self.storage.upload(plot, bucket, prefix + PLOT_FILE)
            self.storage.put_bytes(
                bucket,
                prefix + MANIFEST_FILE,
                json.dumps(manifest, indent=2).encode(),
                content_type="application/json",
            )
        reason = selection.reason
        self.registry.transition(
            model,
            version,
            expected=(OPTIMIZING,),
            status=READY,
            actor=ACTOR,
            reason=reason,
            summary=summary,
        )
        promoted = spec.auto_promote and self._promote(model, version)
        return Outcome(name, "ready", model, version, reason, promoted)

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

    @staticmethod
    def _text_files(model_dir: Path) -> dict[str, Path]:
        """text.json and the tokenizer file it names, when the model takes text."""
        spec_path = model_dir / TEXT_SPEC_FILE
        if not spec_path.is_file():
            return {}
        spec = json.loads(spec_path.read_text())
        files = {TEXT_SPEC_FILE: spec_path}
        if spec.get("file"):
            name = str(spec["file"])
            if name != TOKENIZER_FILE or not (model_dir / name).is_file():
                raise ValueError(f"text.json names {name!r}, which the artifact does not hold")
            files[name] = model_dir / name
        return files

    def _fetch_artifact(self, uri: str, work: Path) -> Path:
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
        missing = [
            f
            for f in (MODEL_FILE, SAMPLE_FILE, METRICS_FILE, LABELS_FILE, SCHEMA_FILE)
            if not (model_dir / f).is_file()
        ]
        if missing:
            raise ValueError(f"model.tar.gz lacks {', '.join(missing)}")
        return model_dir
