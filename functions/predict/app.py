"""PredictFunction: batch predictions of predictions/ uploads (SQS, one message per call).

Wiring only: maas.predict.service plans an upload into chunk messages (sent back to the same
queue: the fan-out) and scores each chunk with the inference function's own model store,
column transforms and sessions (maas.serving). A record that fails for a reason a retry may
cure (the version is not READY yet, an object not there yet) is reported as a batch item
failure: SQS retries it, then dead-letters it (PredictDLQ).
"""

from __future__ import annotations

from typing import Any

import boto3
from maas.core.config import PredictSettings
from maas.core.storage import Storage
from maas.predict.service import BatchPredictor
from maas.serving.store import ModelStore

_predictor: BatchPredictor | None = None


def predictor() -> BatchPredictor:
    global _predictor
    if _predictor is None:
        settings = PredictSettings.from_env()
        store = ModelStore.from_settings(settings)
        _predictor = BatchPredictor(settings, store, Storage(), boto3.client("sqs"))
    return _predictor


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return predictor().handle(event)
