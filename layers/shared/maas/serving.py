"""Serving: alias -> version -> verified artifact -> cached ONNX Runtime session -> outputs."""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .artifacts import MANIFEST_FILE, MODEL_FILE, model_prefix
from .config import Settings
from .oip import InferRequest, PayloadTooLarge, ProtocolError, oip_datatype, oip_shape
from .registry import PROD, READY, NotFound, Registry
from .storage import ObjectMissing, Storage, sha256_file

MB_PER_VCPU = 1769  # Lambda allocates one vCPU per 1769 MB of memory


class ModelNotFound(LookupError):
    status = 404


class ModelUnavailable(RuntimeError):
    """The model exists but cannot serve now (not ready, failed integrity check): 503."""

    status = 503


def threads_for_memory(memory_mb: int) -> int:
    return max(1, min(6, math.floor(memory_mb / MB_PER_VCPU + 0.5)))


@dataclass
class TensorMeta:
    name: str
    datatype: str
    shape: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": self.shape}


@dataclass
class LoadedModel:
    model: str
    version: int
    session: ort.InferenceSession
    manifest: dict[str, Any]
    inputs: list[TensorMeta]
    outputs: list[TensorMeta]

    def metadata(self, versions: list[str]) -> dict[str, Any]:
        return {
            "name": self.model,
            "versions": versions,
            "platform": "onnxruntime_onnx",
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    def infer(self, request: InferRequest, max_batch: int) -> dict[str, np.ndarray]:
        by_name = {t.name: t for t in request.inputs}
        feeds: dict[str, np.ndarray] = {}
        for meta in self.inputs:
            tensor = by_name.pop(meta.name, None)
            if tensor is None:
                raise ProtocolError(f"missing input {meta.name!r} ({meta.datatype} {meta.shape})")
            if tensor.datatype != meta.datatype:
                raise ProtocolError(
                    f"input {meta.name!r}: datatype {tensor.datatype} does not match the "
                    f"model's {meta.datatype}"
                )
            if len(tensor.shape) != len(meta.shape) or any(
                want not in (-1, got) for want, got in zip(meta.shape, tensor.shape, strict=True)
            ):
                raise ProtocolError(
                    f"input {meta.name!r}: shape {tensor.shape} does not match the model's "
                    f"{meta.shape} (-1 = any size)"
                )
            if meta.shape and meta.shape[0] == -1:
                if tensor.shape[0] == 0:
                    raise ProtocolError(f"input {meta.name!r}: empty batch")
                if tensor.shape[0] > max_batch:
                    raise PayloadTooLarge(
                        f"input {meta.name!r}: batch {tensor.shape[0]} exceeds the limit of "
                        f"{max_batch}"
                    )
            if tensor.array.dtype.kind == "f" and not np.isfinite(tensor.array).all():
                raise ProtocolError(f"input {meta.name!r}: NaN or infinite values")
            feeds[meta.name] = tensor.array
        if by_name:
            raise ProtocolError(
                f"unknown input(s) {sorted(by_name)}; the model takes "
                f"{[m.name for m in self.inputs]}"
            )
        names = [m.name for m in self.outputs]
        wanted = request.outputs or names
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise ProtocolError(f"unknown output(s) {unknown}; the model has {names}")
        results = self.session.run(wanted, feeds)
        return dict(zip(wanted, results, strict=True))


class ModelStore:
    """Resolves aliases (with a bounded TTL) and keeps a bounded LRU of loaded sessions."""

    def __init__(self, settings: Settings, registry: Registry, storage: Storage) -> None:
        self.settings = settings
        self.registry = registry
        self.storage = storage
        self._aliases: dict[str, tuple[int, float]] = {}
        self._sessions: OrderedDict[tuple[str, int], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._load_locks: dict[tuple[str, int], threading.Lock] = {}
        self.cache_dir = Path(settings.model_cache_dir)

    # --- resolution ---------------------------------------------------------------------

    def resolve_version(self, model: str, version: str | None) -> int:
        if version is not None:
            try:
                number = int(version)
            except ValueError:
                raise ModelNotFound(f"version {version!r} of model {model!r} not found") from None
            if number < 1:
                raise ModelNotFound(f"version {version!r} of model {model!r} not found")
            return number
        now = time.monotonic()
        cached = self._aliases.get(model)
        if cached and cached[1] > now:
            return cached[0]
        alias = self.registry.get_alias(model, PROD)
        if alias is None:
            if not self.registry.list_versions(model):
                raise ModelNotFound(f"model {model!r} not found")
            raise ModelUnavailable(f"model {model!r} has no version promoted to {PROD!r} yet")
        self._aliases[model] = (alias.version, now + self.settings.alias_ttl_s)
        return alias.version

    def get(self, model: str, version: str | None) -> LoadedModel:
        number = self.resolve_version(model, version)
        key = (model, number)
        with self._lock:
            loaded = self._sessions.get(key)
            if loaded is not None:
                self._sessions.move_to_end(key)
                return loaded
            load_lock = self._load_locks.setdefault(key, threading.Lock())
        with load_lock:  # one download per version, however many concurrent requests
            with self._lock:
                if key in self._sessions:
                    return self._sessions[key]
            loaded = self._load(model, number)
            with self._lock:
                self._sessions[key] = loaded
                while len(self._sessions) > self.settings.session_cache_size:
                    self._sessions.popitem(last=False)
            return loaded

    def ready_versions(self, model: str) -> list[str]:
        return [str(v.version) for v in self.registry.list_versions(model) if v.status == READY]

    # --- loading ------------------------------------------------------------------------

    def _load(self, model: str, version: int) -> LoadedModel:
        try:
            record = self.registry.get_version(model, version)
        except NotFound:
            raise ModelNotFound(f"version {version} of model {model!r} not found") from None
        if record.status != READY:
            raise ModelUnavailable(
                f"version {version} of model {model!r} is {record.status}, not READY"
                + (f": {record.reason}" if record.reason else "")
            )
        prefix = model_prefix(model, version)
        bucket = self.settings.artifact_bucket
        try:
            manifest = json.loads(self.storage.get_bytes(bucket, prefix + MANIFEST_FILE))
        except ObjectMissing:
            raise ModelUnavailable(
                f"version {version} of model {model!r} has no manifest"
            ) from None
        except ValueError:  # not JSON, or not UTF-8
            raise ModelUnavailable(
                f"version {version} of model {model!r} has an unreadable manifest"
            ) from None
        if not isinstance(manifest, dict):
            raise ModelUnavailable(
                f"version {version} of model {model!r} has an unreadable manifest"
            )
        local = self.cache_dir / model / str(version) / MODEL_FILE
        if not local.exists():
            tmp = local.with_suffix(".part")
            try:
                self.storage.download(bucket, prefix + MODEL_FILE, tmp)
            except ObjectMissing:
                raise ModelUnavailable(
                    f"version {version} of model {model!r} has no {MODEL_FILE} in the "
                    "artifact bucket"
                ) from None
            tmp.replace(local)
        digest = sha256_file(local)
        if digest != manifest.get("sha256"):
            local.unlink(missing_ok=True)
            raise ModelUnavailable(
                f"version {version} of model {model!r} failed its integrity check "
                "(sha256 differs from the manifest); not loaded"
            )
        session = ort.InferenceSession(
            str(local), self._session_options(), providers=["CPUExecutionProvider"]
        )
        inputs = [
            TensorMeta(i.name, oip_datatype(i.type), oip_shape(i.shape))
            for i in session.get_inputs()
        ]
        outputs = [
            TensorMeta(o.name, oip_datatype(o.type), oip_shape(o.shape))
            for o in session.get_outputs()
        ]
        return LoadedModel(model, version, session, manifest, inputs, outputs)

    def _session_options(self) -> ort.SessionOptions:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads_for_memory(self.settings.function_memory_mb)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads burn billed CPU between requests for no gain on Lambda.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return opts
