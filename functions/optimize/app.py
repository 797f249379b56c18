"""OptimizeFunction: EventBridge "SageMaker Training Job State Change" -> quantized version."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from maas.core.config import OptimizeSettings
from maas.core.registry import Registry
from maas.core.storage import Storage
from maas.optimize.service import Optimizer

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    cfg = OptimizeSettings.from_env()
    optimizer = Optimizer(cfg, Registry(cfg.registry_table), Storage())
    outcome = optimizer.handle_event(event)
    logger.info("optimize outcome", extra=asdict(outcome))
    metrics.add_metric(f"Versions{outcome.action.title().replace('-', '')}", MetricUnit.Count, 1)
    return asdict(outcome)
