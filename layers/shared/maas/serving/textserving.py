"""Serving text models: the BYTES input -> the graph's inputs, through maas/serving/textprep.py.

A text model's manifest carries ``text``: the encoder spec (text.json) and the sha256 of each
file it needs (text.json, tokenizer.json). Those files are fetched beside model.onnx and
verified like it; the encoder then runs before every session.run.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from maas.core.contract import TEXT_INPUT
from maas.core.storage import ObjectMissing, Storage, sha256_file
from maas.serving.http import ProtocolError
from maas.serving.textprep import TextInputError, load_encoder

Preprocess = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
TEXT_INPUT_META = (TEXT_INPUT, "BYTES", [-1])


class TextFilesUnavailable(RuntimeError):
    """A text file is missing or fails its sha256: the version cannot serve (503)."""


def fetch_text_files(
    storage: Storage, bucket: str, prefix: str, manifest: dict[str, Any], directory: Path
) -> None:
    """The manifest's text files into directory, each checked against its sha256."""
    files: dict[str, str] = manifest["text"].get("files") or {}
    directory.mkdir(parents=True, exist_ok=True)
    for name, digest in files.items():
        if "/" in name or name.startswith("."):
            raise TextFilesUnavailable(f"manifest names an unsafe text file {name!r}")
        local = directory / name
        if not local.exists() or sha256_file(local) != digest:
            part = local.with_suffix(f"{local.suffix}.{uuid.uuid4().hex}.part")  # see serving
            try:
                storage.download(bucket, prefix + name, part)
            except ObjectMissing:
                raise TextFilesUnavailable(f"{name} is missing from the artifact bucket") from None
            part.replace(local)
        if sha256_file(local) != digest:
            local.unlink(missing_ok=True)
            raise TextFilesUnavailable(f"{name} failed its integrity check (sha256)")


def load_preprocess(
    storage: Storage,
    bucket: str,
    prefix: str,
    manifest: dict[str, Any],
    directory: Path,
    graph_inputs: list[str],
) -> Preprocess:
    fetch_text_files(storage, bucket, prefix, manifest, directory)
    encoder = load_encoder(manifest["text"]["spec"], directory)
    wanted = list(graph_inputs)

    def preprocess(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = np.asarray(feeds[TEXT_INPUT]).reshape(-1)
        try:
            encoded = encoder.encode(list(items))
        except TextInputError as e:
            raise ProtocolError(f"input {TEXT_INPUT!r}: {e}") from None
        return {name: encoded[name] for name in wanted}

    return preprocess


def load_generator(
    storage: Storage,
    bucket: str,
    prefix: str,
    manifest: dict[str, Any],
    directory: Path,
    session: Any,
) -> Any:
    """A text-generation version's generation loop (maas.serving.generation.Generator)."""
    from maas.core.contract import TOKENIZER_FILE
    from maas.serving.generation import Generator
    from maas.serving.textprep import PromptTokenizer

    fetch_text_files(storage, bucket, prefix, manifest, directory)
    spec = manifest["generation"]
    tokenizer_json = (directory / TOKENIZER_FILE).read_text(encoding="utf-8")
    return Generator(session, spec, PromptTokenizer.from_spec(tokenizer_json, spec))
