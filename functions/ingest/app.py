"""IngestFunction: S3 upload notifications (through SQS) -> idempotent training job starts."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from maas.core.config import IngestSettings
from maas.core.registry import Registry
from maas.core.storage import Storage
from maas.ingest.deadletter import DeadLetters
from maas.ingest.jobs import backend_for
from maas.ingest.service import Ingest

logger = Logger()
tracer = Tracer()
metrics = Metrics()
# A batch whose every message failed is reported like any partial failure (each message
# retried, then dead-lettered), not raised as a function error.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
_ingest: Ingest | None = None


def ingest() -> Ingest:
    global _ingest
    if _ingest is None:
        cfg = IngestSettings.from_env()
        _ingest = Ingest(
            Registry(cfg.registry_table),
            Storage(),
            backend_for(cfg),
            dead_letters=DeadLetters(cfg.ingest_dlq_url) if cfg.ingest_dlq_url else None,
            data_bucket=cfg.data_bucket,
            artifact_bucket=cfg.artifact_bucket,
        )
    return _ingest


@tracer.capture_method
def record_handler(record: SQSRecord) -> list[dict[str, Any]]:
    # A raised exception marks only this message failed; SQS retries it, then dead-letters it.
    # Permanent failures are dead-lettered at once, with their reason, and count as handled.
    outcomes = ingest().handle_message(record.body, record.message_id)
    for outcome in outcomes:
        logger.info("ingest outcome", extra=asdict(outcome))
        metrics.add_metric(f"Uploads{outcome.action.title().replace('-', '')}", MetricUnit.Count, 1)
    return [asdict(o) for o in outcomes]


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
