"""Tables: the per-column request's cost, and trees against the MLP, side by side.

One real table with strings, gaps and a date (vega_datasets' seattle-weather) trained twice
by the real training job, ``recipe: mlp`` and ``recipe: trees``, then published into moto:

- handler overhead: the inference handler answering one OIP input per column (strings, numbers,
  nulls: the column transforms of maas/serving/tableprep.py run inside it) against bare
  ``session.run`` on the same session with the features already encoded, interleaved pair by
  pair (bench.overhead), at batch 1 and 100;
- tree vs MLP: each graph's size, its batch-1 and batch-100 ``session.run`` p50 (interleaved,
  one thread) and its test accuracy (the job's metrics.json).

``python -m bench.tables`` prints the figures; ``make bench`` records them.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .common import infer_event
from .overhead import interleaved, measure, moto_account

REPO = Path(__file__).resolve().parents[1]
BATCHES = (1, 100)


def train(base: Path, frame: Any, hp: dict[str, Any]) -> Path:
    """The real training job under the SageMaker contract; its model dir."""
    channel = base / "input" / "data" / "train"
    channel.mkdir(parents=True)
    frame.to_csv(channel / "data.csv", index=False)
    (base / "input" / "config").mkdir(parents=True)
    (base / "input" / "config" / "hyperparameters.json").write_text(
        json.dumps({k: json.dumps(v) for k, v in hp.items()})
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "MAAS_"))}
    env.update(MAAS_OPT_ML=str(base), MAAS_ONNX_EXPORTER="torchscript")
    out = subprocess.run(
        [sys.executable, str(REPO / "training" / "train.py")],
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return base / "model"


def _publish(name: str, model_dir: Path) -> None:
    from maas.core.registry import Registry
    from maas.core.storage import Storage
    from maas_devkit import account, publish

    schema = json.loads((model_dir / "schema.json").read_text())
    publish.publish_model(
        Registry(account.REGISTRY_TABLE),
        Storage(),
        name,
        1,
        (model_dir / "model.onnx").read_bytes(),
        {
            "table": json.loads((model_dir / "table.json").read_text()),
            "task": schema["task"],
            "labels": schema["labels"],
        },
        promote=True,
    )


def _graph_latency(sessions: dict[str, Any], feeds: dict[int, Any], pairs: int) -> dict[str, Any]:
    (a, sa), (b, sb) = sessions.items()
    out: dict[str, Any] = {}
    for n, x in feeds.items():
        ta, tb = interleaved(lambda s=sa, x=x: s.run(None, {"input": x}),
                             lambda s=sb, x=x: s.run(None, {"input": x}), pairs)  # fmt: skip
        out[f"batch{n}"] = {a: statistics.median(ta) * 1e3, b: statistics.median(tb) * 1e3}
    return out


def run(work: Path, pairs: int = 2000) -> dict[str, Any]:
    import onnxruntime as ort
    from maas_devkit import lambda_runtime

    sys.path.insert(0, str(REPO))
    from tests import tables as real

    table = real.weather()
    up, back = real.split(table)
    dirs = {
        recipe: train(work / recipe, up, {"label": table.label, "recipe": recipe})
        for recipe in ("mlp", "trees")
    }
    with moto_account():
        for recipe, model_dir in dirs.items():
            _publish(f"weather-{recipe}", model_dir)
        app = lambda_runtime.load_handler("inference")
        results: dict[str, Any] = {"table": table.source, "overhead": {}}
        for n in BATCHES:
            results["overhead"][f"batch{n}"] = _overhead(app, "weather-mlp", back.iloc[:n], pairs)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sessions = {r: ort.InferenceSession(str(d / "model.onnx"), options) for r, d in dirs.items()}
    from maas.serving.tableserving import TableServing

    serving = TableServing(json.loads((dirs["mlp"] / "table.json").read_text()))
    x = _features(serving, back)
    results["trees_vs_mlp"] = {
        "size_bytes": {r: (d / "model.onnx").stat().st_size for r, d in dirs.items()},
        "test_accuracy": {
            r: json.loads((d / "metrics.json").read_text())["test_accuracy"]
            for r, d in dirs.items()
        },
        "latency_ms": _graph_latency(sessions, {n: x[:n] for n in BATCHES}, pairs),
    }
    return results


def _features(serving: Any, frame: Any) -> Any:
    from maas.serving.oip import decode_request

    meta = [{"name": n, "datatype": d} for n, d, _, _ in serving.inputs()]
    sys.path.insert(0, str(REPO))
    from tests import tables as real

    request = decode_request(json.dumps(real.oip_columns(frame, meta)))
    return serving.feeds(request.inputs, len(frame))["input"]


def _overhead(app: Any, model: str, rows: Any, pairs: int) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    from tests import tables as real

    loaded = app.store().get(model, None)
    inputs = [t.to_dict() for t in loaded.inputs]
    event = infer_event(model, real.oip_columns(rows, inputs))
    first = app.lambda_handler(event, None)
    assert first["statusCode"] == 200, first["body"]
    feeds = {"input": _features(loaded.table, rows)}
    return measure(app, event, loaded.session, feeds, pairs)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="maas-bench-tables-") as tmp:
        print(json.dumps(run(Path(tmp)), indent=2))
