"""Serving: alias -> version -> verified artifact -> cached ONNX Runtime session -> outputs."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort
from botocore.exceptions import BotoCoreError, ClientError

from maas.core.artifacts import model_prefix
from maas.core.contract import MANIFEST_FILE, MODEL_FILE
from maas.core.names import InvalidName, check_model_name
from maas.core.registry import PROD, READY, Alias, NotFound, Registry
from maas.core.storage import ObjectMissing, Storage, sha256_file
from maas.serving.http import PayloadTooLarge, ProtocolError
from maas.serving.oip import InferRequest, oip_datatype, oip_shape
from maas.serving.ortsession import new_session

if TYPE_CHECKING:
    from maas.core.config import InferenceSettings
    from maas.serving.tableserving import TableServing

MB_PER_VCPU = 1769  # Lambda allocates one vCPU per 1769 MB of memory
log = logging.getLogger(__name__)


class ModelNotFound(LookupError):
    status = 404


class ModelUnavailable(RuntimeError):
    """The model exists but cannot serve now (not ready, failed integrity check): 503."""

    status = 503


class StoreUnavailable(ModelUnavailable):
    """The registry or the artifact bucket cannot be reached (or refuses): 503, retry later."""


REGISTRY = "model registry"
ARTIFACTS = "model artifact store"


@contextmanager
def _reading(what: str) -> Iterator[None]:
    """AWS errors while reading `what` become a 503 that names it, without the AWS details."""
    try:
        yield
    except (ClientError, BotoCoreError) as e:
        log.warning("%s unavailable: %s", what, e)
        raise StoreUnavailable(f"{what} unavailable, retry later") from None


def _epoch(iso: str) -> int:
    from datetime import datetime

    try:
        return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def threads_for_memory(memory_mb: int) -> int:
    return max(1, min(6, math.floor(memory_mb / MB_PER_VCPU + 0.5)))


@dataclass
class TensorMeta:
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None  # a table column's role

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name, "datatype": self.datatype, "shape": self.shape}
        if self.parameters:
            doc["parameters"] = self.parameters
        return doc


@dataclass
class LoadedModel:
    model: str
    version: int
    session: ort.InferenceSession
    manifest: dict[str, Any]
    inputs: list[TensorMeta]
    outputs: list[TensorMeta]
    # Text models: the OIP input is BYTES "text"; this turns it into the graph's inputs.
    preprocess: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None
    size_bytes: int = 0  # model files on disk: what the session cache budgets memory by
    # Tables: the OIP inputs (one per column, or the matrix) -> the graph's features.
    table: TableServing | None = None
    generator: Any = None  # text-generation: maas.serving.generation.Generator

    def metadata(self, versions: list[str]) -> dict[str, Any]:
        return {
            "name": self.model,
            "versions": versions,
            "platform": "onnxruntime_onnx",
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    def infer(self, request: InferRequest, max_batch: int) -> dict[str, np.ndarray]:
        if self.generator is not None:
            raise ProtocolError(
                f"model {self.model!r} is a text-generation model: use "
                f"/v2/models/{self.model}/generate or /v1/completions, not /infer"
            )
        if self.table is not None:
            feeds = self.table.feeds(request.inputs, max_batch)
        else:
            feeds = self._feeds(request, max_batch)
        names = [m.name for m in self.outputs]
        wanted = request.outputs or names
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise ProtocolError(f"unknown output(s) {unknown}; the model has {names}")
        if self.preprocess is not None:
            feeds = self.preprocess(feeds)
        results = self.session.run(wanted, feeds)
        return dict(zip(wanted, results, strict=True))

    def _feeds(self, request: InferRequest, max_batch: int) -> dict[str, np.ndarray]:
        """The graph's own inputs, checked against its signature."""
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
            if tensor.missing is not None and tensor.missing.any():
                raise ProtocolError(
                    f"input {meta.name!r}: null (missing) values; this model takes none"
                )
            feeds[meta.name] = tensor.array
        if by_name:
            raise ProtocolError(
                f"unknown input(s) {sorted(by_name)}; the model takes "
                f"{[m.name for m in self.inputs]}"
            )
        return feeds


@dataclass(frozen=True)
class Route:
    """Where unversioned requests go: prod, or the canary for a fraction of them."""

    prod: int
    canary: int | None = None
    weight: float = 0.0

    @classmethod
    def of(cls, alias: Alias) -> Route:
        if alias.canary_version is None or alias.canary_weight <= 0:
            return cls(alias.version)
        return cls(alias.version, alias.canary_version, alias.canary_weight)

    def pick(self, draw: float) -> int:
        """`draw` uniform in [0, 1): below the weight goes to the canary."""
        if self.canary is not None and draw < self.weight:
            return self.canary
        return self.prod

    @property
    def versions(self) -> set[int]:
        return {self.prod} if self.canary is None else {self.prod, self.canary}


class ModelStore:
    """Resolves aliases (with a bounded TTL) and keeps a bounded LRU of loaded sessions.

    When a refreshed alias no longer points at a version that only the alias brought in
    (prod or canary, never asked for by number), its session is dropped at once rather than
    left to the LRU: a promotion frees the replaced model's memory. Requests already running
    on it hold their own reference and finish normally.
    """

    def __init__(self, settings: InferenceSettings, registry: Registry, storage: Storage) -> None:
        self.settings = settings
        self.registry = registry
        self.storage = storage
        self._aliases: dict[str, tuple[Route, float]] = {}
        self._sessions: OrderedDict[tuple[str, int], LoadedModel] = OrderedDict()
        self._explicit: set[tuple[str, int]] = set()  # versions requested by number
        self._lock = threading.Lock()
        self._load_locks: dict[tuple[str, int], threading.Lock] = {}
        self.cache_dir = Path(settings.model_cache_dir)
        self.draw = random.random  # the canary draw; tests replace it

    @classmethod
    def from_settings(cls, settings: InferenceSettings) -> ModelStore:
        """A store reading through maas.serving.awslite where it can (see there), else boto3."""
        from maas.serving.awslite import Session, wanted

        session = Session.from_env() if wanted() else None
        if session is None:
            return cls(settings, Registry(settings.registry_table), Storage())
        registry = Registry(settings.registry_table, table=session.table(settings.registry_table))
        return cls(settings, registry, Storage(session.s3()))

    # --- SnapStart ----------------------------------------------------------------------

    def preload(self, models: list[str] | None = None) -> list[tuple[str, int]]:
        """Load the prod version of `models` (None: every model with a prod alias) now.

        For an init that a snapshot keeps (SnapStart). At most session_cache_size models: more
        would only evict each other. Returns what was loaded.
        """
        names = models if models is not None else self.registry.list_models()
        loaded: list[tuple[str, int]] = []
        for model in names[: self.settings.session_cache_size]:
            try:
                version = self.route(model).prod
            except (ModelNotFound, ModelUnavailable):
                continue  # nothing in prod yet: nothing to preload
            self._session(model, version)
            loaded.append((model, version))
        return loaded

    def after_restore(self) -> None:
        """After a SnapStart restore: new connections, and every cached alias read again.

        The snapshot may be hours old; a promotion since then must be served at once, not
        after the alias TTL. A failed read leaves it to the next request (which retries).
        """
        for client in (getattr(self.registry, "table", None), getattr(self.storage, "s3", None)):
            reset = getattr(client, "reset", None)
            if callable(reset):
                reset()
        for model, (cached, _) in list(self._aliases.items()):
            self._aliases[model] = (cached, 0.0)  # expired: the next route() reads it
            try:
                self.route(model)
            except Exception:
                log.warning("re-reading %s's alias after restore failed", model, exc_info=True)

    # --- resolution ---------------------------------------------------------------------

    def resolve_version(self, model: str, version: str | None, *, canary: bool = False) -> int:
        """A version number: the one asked for, else prod (or, with `canary`, the draw's)."""
        try:
            check_model_name(model)  # before it reaches the registry, an S3 key or /tmp
        except InvalidName:
            raise ModelNotFound(f"model {model[:100]!r} not found (not a model name)") from None
        if version is not None:
            try:
                number = int(version)
            except ValueError:
                raise ModelNotFound(f"version {version!r} of model {model!r} not found") from None
            if number < 1:
                raise ModelNotFound(f"version {version!r} of model {model!r} not found")
            return number
        route = self.route(model)
        return route.pick(self.draw()) if canary else route.prod

    def route(self, model: str) -> Route:
        now = time.monotonic()
        cached = self._aliases.get(model)
        if cached and cached[1] > now:
            return cached[0]
        try:
            alias = self.registry.get_alias(model, PROD)
        except (ClientError, BotoCoreError) as e:
            if cached is None:
                log.warning("%s unavailable: %s", REGISTRY, e)
                raise StoreUnavailable(f"{REGISTRY} unavailable, retry later") from None
            # A registry hiccup must not fail requests a warm function can still answer.
            log.warning("alias refresh for %s failed; serving the last known route", model)
            self._aliases[model] = (cached[0], now + min(self.settings.alias_ttl_s, 5.0))
            return cached[0]
        if alias is None:
            self._aliases.pop(model, None)
            if cached is not None:
                self._evict(model, cached[0].versions)
            with _reading(REGISTRY):
                known = self.registry.list_versions(model)
            if not known:
                raise ModelNotFound(f"model {model!r} not found")
            raise ModelUnavailable(f"model {model!r} has no version promoted to {PROD!r} yet")
        route = Route.of(alias)
        self._aliases[model] = (route, now + self.settings.alias_ttl_s)
        if cached is not None and cached[0] != route:
            self._evict(model, cached[0].versions - route.versions)
        return route

    def _evict(self, model: str, versions: set[int]) -> None:
        """Drop sessions (and their /tmp copies) that only the alias was keeping."""
        for version in versions:
            key = (model, version)
            with self._lock:
                if key in self._explicit:
                    continue
                dropped = self._sessions.pop(key, None)
                load_lock = self._load_locks.get(key)
            if dropped is None:
                continue
            log.info("evicted %s v%s: no longer prod or canary", model, version)
            digest = str(dropped.manifest.get("sha256") or "")
            with self._lock:  # the same bytes may serve another version still
                shared = any(m.manifest.get("sha256") == digest for m in self._sessions.values())
            # The file only when no load of it is in flight (a load reads it).
            if digest and not shared and (load_lock is None or load_lock.acquire(blocking=False)):
                try:
                    self.cache_file(digest).unlink(missing_ok=True)
                finally:
                    if load_lock is not None:
                        load_lock.release()

    def loaded_versions(self, model: str) -> list[int]:
        with self._lock:
            return sorted(v for m, v in self._sessions if m == model)

    def get(self, model: str, version: str | None, *, canary: bool = False) -> LoadedModel:
        number = self.resolve_version(model, version, canary=canary)
        loaded = self._session(model, number)
        if version is not None:  # asked for by number: the alias moving does not evict it
            self._explicit.add((model, number))
        return loaded

    def _session(self, model: str, number: int) -> LoadedModel:
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
            try:
                loaded = self._load(model, number)
            except Exception:
                # A version that failed to load (or never existed) keeps no lock behind: clients
                # asking for ever new version numbers must not grow this dict.
                with self._lock:
                    if self._load_locks.get(key) is load_lock and key not in self._sessions:
                        del self._load_locks[key]
                raise
            with self._lock:
                self._sessions[key] = loaded
                while len(self._sessions) > 1 and (
                    len(self._sessions) > self.settings.session_cache_size
                    or self._cached_bytes() > self.settings.session_cache_bytes
                ):
                    self._sessions.popitem(last=False)
            return loaded

    def _cached_bytes(self) -> int:
        return sum(m.size_bytes for m in self._sessions.values())

    def _make_room(self, model: str, version: int, size: int) -> None:
        """Evict least recently used sessions until a model of `size` bytes fits the budget.

        A model larger than the whole budget is served alone; one that could not fit in the
        function's memory at all is refused (503) rather than left to crash the function.
        """
        memory = self.settings.function_memory_mb * 1024 * 1024
        if size > memory * 3 // 4:
            raise ModelUnavailable(
                f"version {version} of model {model!r} is {size / 2**20:.0f} MiB, too large to "
                f"load in this function's {self.settings.function_memory_mb} MB; give the "
                "inference function more memory (InferenceMemory)"
            )
        budget = self.settings.session_cache_bytes
        if size > budget:
            log.warning(
                "%s v%s (%d bytes) exceeds the session cache budget (%d bytes): serving it alone",
                model,
                version,
                size,
                budget,
            )
        with self._lock:
            while self._sessions and self._cached_bytes() + size > budget:
                (old_model, old_version), _ = self._sessions.popitem(last=False)
                log.info("evicted %s v%s for %s v%s", old_model, old_version, model, version)

    def generative_models(self) -> list[tuple[str, int]]:
        """(name, created) of every model whose prod version is a text-generation model."""
        out = []
        with _reading(REGISTRY):
            names = self.registry.list_models()
        for name in names:
            try:
                route = self.route(name)
                with _reading(REGISTRY):
                    record = self.registry.get_version(name, route.prod)
            except (ModelNotFound, ModelUnavailable, NotFound):
                continue
            task = ((record.summary or {}).get("spec") or {}).get("task")
            if task == "text-generation":
                out.append((name, _epoch(getattr(record, "created_at", "") or "")))
        return out

    def ready_versions(self, model: str) -> list[str]:
        with _reading(REGISTRY):
            versions = self.registry.list_versions(model)
        return [str(v.version) for v in versions if v.status == READY]

    # --- loading ------------------------------------------------------------------------

    def _load(self, model: str, version: int) -> LoadedModel:
        self._check_ready(model, version)
        prefix = model_prefix(model, version)
        manifest = self._manifest(model, version, prefix)
        local, in_memory = self._verified_model(model, version, prefix, manifest)
        # ONNX Runtime's memory follows the graph's weights.
        size = len(in_memory) if in_memory is not None else local.stat().st_size
        self._make_room(model, version, size)
        threads = threads_for_memory(self.settings.function_memory_mb)
        session = new_session(in_memory if in_memory is not None else local, threads)
        inputs = [
            TensorMeta(i.name, oip_datatype(i.type), oip_shape(i.shape))
            for i in session.get_inputs()
        ]
        outputs = [
            TensorMeta(o.name, oip_datatype(o.type), oip_shape(o.shape))
            for o in session.get_outputs()
        ]
        preprocess, generator, table = None, None, None
        if manifest.get("generation"):
            generator = self._generator(model, version, prefix, manifest, local, session)
            inputs, outputs = (
                [TensorMeta("text_input", "BYTES", [1])],
                [TensorMeta("text_output", "BYTES", [-1])],
            )
        elif manifest.get("text"):
            preprocess, inputs = self._text_encoder(model, version, prefix, manifest, local, inputs)
        elif manifest.get("table"):
            table, inputs = self._table(model, version, manifest)
        return LoadedModel(
            model,
            version,
            session,
            manifest,
            inputs,
            outputs,
            preprocess,
            size,
            table=table,
            generator=generator,
        )

    def _table(
        self, model: str, version: int, manifest: dict[str, Any]
    ) -> tuple[TableServing, list[TensorMeta]]:
        """A table's column transforms, and the OIP inputs they take in the graph's place."""
        from maas.serving.tableserving import TableServing

        try:
            table = TableServing(manifest["table"])
        except (KeyError, TypeError, ValueError) as e:
            raise ModelUnavailable(
                f"version {version} of model {model!r} has an unreadable table spec: {e}"
            ) from None
        return table, [TensorMeta(*i) for i in table.inputs()]

    def _generator(
        self,
        model: str,
        version: int,
        prefix: str,
        manifest: dict[str, Any],
        local: Path,
        session: ort.InferenceSession,
    ) -> Any:
        from maas.serving.textserving import TextFilesUnavailable, load_generator

        directory = local.parent / f"{local.stem}.text"
        try:
            return load_generator(
                self.storage, self.settings.artifact_bucket, prefix, manifest, directory, session
            )
        except (TextFilesUnavailable, KeyError, ValueError, OSError) as e:
            raise ModelUnavailable(
                f"version {version} of model {model!r} cannot load its tokenizer: {e}"
            ) from None

    def _check_ready(self, model: str, version: int) -> None:
        try:
            with _reading(REGISTRY):
                record = self.registry.get_version(model, version)
        except NotFound:
            raise ModelNotFound(f"version {version} of model {model!r} not found") from None
        if record.status != READY:
            raise ModelUnavailable(
                f"version {version} of model {model!r} is {record.status}, not READY"
                + (f": {record.reason}" if record.reason else "")
            )

    def _manifest(self, model: str, version: int, prefix: str) -> dict[str, Any]:
        bucket = self.settings.artifact_bucket
        try:
            with _reading(ARTIFACTS):
                manifest = json.loads(self.storage.get_bytes(bucket, prefix + MANIFEST_FILE))
        except ObjectMissing:
            raise ModelUnavailable(
                f"version {version} of model {model!r} has no manifest"
            ) from None
        except ValueError:  # not JSON, or not UTF-8
            manifest = None
        if not isinstance(manifest, dict):
            raise ModelUnavailable(
                f"version {version} of model {model!r} has an unreadable manifest"
            )
        return manifest

    def cache_file(self, digest: str) -> Path:
        """Where the model file whose sha256 is `digest` is cached: named by its content, so
        an entry can never be taken for another artifact's bytes (a version number reused
        after a reset, another version, another model)."""
        return self.cache_dir / "sha256" / f"{digest}.onnx"

    def _verified_model(
        self, model: str, version: int, prefix: str, manifest: dict[str, Any]
    ) -> tuple[Path, bytes | None]:
        """(the model's cache path, and its bytes when it loads from memory instead): either
        way its sha256 is the manifest's. A model above MODEL_MEMORY_LOAD_MB never touches
        /tmp, which holds 512 MB on Lambda unless the function asks for more."""
        expected = str(manifest.get("sha256") or "")
        if not re.fullmatch(r"[0-9a-f]{64}", expected):
            raise ModelUnavailable(f"version {version} of model {model!r}: manifest has no sha256")
        local = self.cache_file(expected)
        size = int(manifest.get("size_bytes") or 0)
        if size <= self.settings.model_memory_load_mb * 1024 * 1024:
            return self._verified_model_file(model, version, prefix, local, expected), None
        try:
            with _reading(ARTIFACTS):
                data = self.storage.get_bytes(self.settings.artifact_bucket, prefix + MODEL_FILE)
        except ObjectMissing:
            raise self._missing_model(model, version) from None
        if hashlib.sha256(data).hexdigest() != expected:
            raise self._failed_integrity(model, version)
        return local, data

    @staticmethod
    def _missing_model(model: str, version: int) -> ModelUnavailable:
        return ModelUnavailable(
            f"version {version} of model {model!r} has no {MODEL_FILE} in the artifact bucket"
        )

    @staticmethod
    def _failed_integrity(model: str, version: int) -> ModelUnavailable:
        return ModelUnavailable(
            f"version {version} of model {model!r} failed its integrity check "
            "(sha256 differs from the manifest); not loaded"
        )

    def _verified_model_file(
        self, model: str, version: int, prefix: str, local: Path, expected: str
    ) -> Path:
        """model.onnx in the local cache (downloaded if absent), its sha256 `expected`."""
        if local.exists() and sha256_file(local) == expected:
            return local
        local.parent.mkdir(parents=True, exist_ok=True)
        # Its own name: containers sharing a cache dir (the local stack) may race here; only a
        # file that matched the manifest takes the digest's name.
        part = local.with_suffix(f".{uuid.uuid4().hex}.part")
        try:
            with _reading(ARTIFACTS):
                self.storage.download(self.settings.artifact_bucket, prefix + MODEL_FILE, part)
        except ObjectMissing:
            raise self._missing_model(model, version) from None
        if sha256_file(part) != expected:
            part.unlink(missing_ok=True)
            raise self._failed_integrity(model, version)
        part.replace(local)
        return local

    def _text_encoder(
        self,
        model: str,
        version: int,
        prefix: str,
        manifest: dict[str, Any],
        local: Path,
        inputs: list[TensorMeta],
    ) -> tuple[Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], list[TensorMeta]]:
        """A text model's preprocessing, and the one BYTES input it takes in its graph's place."""
        from maas.serving.textserving import TEXT_INPUT_META, TextFilesUnavailable, load_preprocess

        try:
            preprocess = load_preprocess(
                self.storage,
                self.settings.artifact_bucket,
                prefix,
                manifest,
                local.with_suffix(".text"),  # beside the model it serves: one per artifact
                [i.name for i in inputs],
            )
        except (TextFilesUnavailable, ValueError, OSError) as e:
            raise ModelUnavailable(
                f"version {version} of model {model!r} cannot load its text encoder: {e}"
            ) from None
        name, datatype, shape = TEXT_INPUT_META
        return preprocess, [TensorMeta(name, datatype, list(shape))]
