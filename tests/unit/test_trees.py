"""The trees' ONNX graph decides every row as LightGBM does, whatever the features' scale."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
from maas_training import trees


def test_float32_graph_sends_every_row_down_lightgbms_branch(tmp_path: Path) -> None:
    # GIVEN trees split on a feature near 1e7, where float32 values are 1 apart: a double
    # threshold between two neighbours that rounds up to the upper one in float32 would send
    # that neighbour down the other branch
    rng = np.random.default_rng(0)
    n = 1000
    x = np.column_stack(
        [(1e7 + rng.integers(0, 400, n)).astype(np.float32), rng.normal(size=n)]
    ).astype(np.float32)
    y = np.sin(x[:, 0].astype(np.float64) / 7.0) + 0.1 * rng.normal(size=n)
    data = SimpleNamespace(
        x=x,
        y=((y - y.mean()) / y.std()).astype(np.float32),
        target_scale=(float(y.mean()), float(y.std())),
        regression=True,
        class_names=[],
        class_weights=None,
        input_name="input",
    )
    fitted, _ = trees.fit(data, SimpleNamespace(seed=0), np.arange(n), None, 100)
    # WHEN they are exported and run by ONNX Runtime
    path = tmp_path / "model.onnx"
    trees.export(fitted, data, path, {})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    [got] = session.run(["prediction"], {"input": x})
    # THEN every row gets LightGBM's own prediction (float32 leaf sums aside)
    np.testing.assert_allclose(got, trees.outputs(fitted, data, x), atol=1e-5 * y.std())


def test_thresholds_round_down_to_float32_and_keep_the_rest_of_the_model() -> None:
    t = 0.1  # float32(0.1) rounds up past the double 0.1
    assert float(np.float32(t)) > t
    model = f"tree\ntree_sizes=123 456\nthreshold={t!r} 2.5 -1\nleaf_value=0.5 1.5\n"
    out = trees.float32_thresholds(model)
    [line] = [v for v in out.splitlines() if v.startswith("threshold=")]
    down, exact, negative = (float(v) for v in line.removeprefix("threshold=").split())
    assert down <= t and float(np.float32(down)) == down
    assert float(np.nextafter(np.float32(down), np.float32(np.inf))) > t  # the largest such
    assert (exact, negative) == (2.5, -1.0)
    assert "tree_sizes" not in out and "leaf_value=0.5 1.5" in out
