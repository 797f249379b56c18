"""The inference function's metrics: CloudWatch embedded metric format lines on stdout, as
Powertools Metrics writes them (the function does not import Powertools on its cold path)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from maas_devkit.events import http_event
from maas_devkit.lambda_runtime import LambdaContext, load_handler


def _lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]


def test_cold_start_once_then_latency_per_invocation(monkeypatch, capsys) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "ServerlessMaaS")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "maas-inference")
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    monkeypatch.delenv("PRELOAD_MODELS", raising=False)
    app = load_handler("inference")
    context = LambdaContext("inference-fn")
    capsys.readouterr()

    # First invocation: the ColdStart metric with the function name, as Powertools writes it.
    assert app.lambda_handler(http_event("GET", "/v2/health/live"), context)["statusCode"] == 200
    (cold,) = _lines(capsys)
    (directive,) = cold["_aws"]["CloudWatchMetrics"]
    assert directive == {
        "Namespace": "ServerlessMaaS",
        "Dimensions": [["function_name", "service"]],
        "Metrics": [{"Name": "ColdStart", "Unit": "Count"}],
    }
    assert isinstance(cold["_aws"]["Timestamp"], int)
    assert cold["function_name"] == "inference-fn"
    assert cold["service"] == "maas-inference"
    assert cold["ColdStart"] == [1.0]

    # Later invocations: no ColdStart; an inference's latency when one ran.
    app.lambda_handler(http_event("GET", "/v2/health/live"), context)
    assert _lines(capsys) == []
    app.serving.metrics.add_latency("InferenceLatency", 1.25)
    app.lambda_handler(http_event("GET", "/v2/health/ready"), context)
    (latency,) = _lines(capsys)
    assert latency["_aws"]["CloudWatchMetrics"] == [
        {
            "Namespace": "ServerlessMaaS",
            "Dimensions": [["service"]],
            "Metrics": [{"Name": "InferenceLatency", "Unit": "Milliseconds"}],
        }
    ]
    assert latency["service"] == "maas-inference"
    assert latency["InferenceLatency"] == [1.25]
    assert app.serving.metrics.values == {}


def test_no_metrics_without_a_namespace_or_when_disabled(monkeypatch, capsys) -> None:
    monkeypatch.delenv("POWERTOOLS_METRICS_NAMESPACE", raising=False)
    monkeypatch.delenv("PRELOAD_MODELS", raising=False)
    app = load_handler("inference")
    capsys.readouterr()
    app.lambda_handler(http_event("GET", "/v2/health/live"), LambdaContext())
    assert _lines(capsys) == []
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "ServerlessMaaS")
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    app = load_handler("inference")
    capsys.readouterr()
    app.lambda_handler(http_event("GET", "/v2/health/live"), LambdaContext())
    assert _lines(capsys) == []
