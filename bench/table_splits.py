"""The small regression tables over several splits: how far from the better baseline, each time.

tests/integration/test_tables.py holds one split (seed 0) to the acceptance's 2 points. This
runs the same real training job (only the label named) on seeds 0..3 of
``tests.tables.split`` for cars and messy diabetes, scores each held-back quarter from its raw
rows (the shared column transforms of maas/serving/tableprep.py, then the served ONNX graph)
and prints, per split, the served R², both scikit-learn baselines, the margin to the better one
and the candidate the job chose. About 2 minutes on 2 vCPUs.

``python -m bench.table_splits`` (``make bench-table-splits``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from .tables import train

SEEDS = (0, 1, 2, 3)


def served_r2(model_dir: Path, back, label: str) -> float:
    import onnxruntime as ort
    from maas.serving.tableprep import TableEncoder
    from maas_training.metrics import regression

    encoder = TableEncoder(json.loads((model_dir / "table.json").read_text()))
    columns = {
        c: (back[c].to_numpy(dtype=object), back[c].isna().to_numpy()) for c in encoder.names
    }
    x = encoder.encode(columns)
    session = ort.InferenceSession(
        str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    [pred] = session.run(["prediction"], {session.get_inputs()[0].name: x})
    return regression(back[label].to_numpy(), pred)["r2"]


def chosen(model_dir: Path) -> str:
    """The chosen candidate: the one whose validation figures metrics.json reports."""
    metrics = json.loads((model_dir / "metrics.json").read_text())
    return next(
        (
            str(c["candidate"])
            for c in metrics["candidates"]
            if c["val_loss"] == metrics["val_loss"]
        ),
        "?",
    )


def main() -> None:
    from tests import tables

    rows = []
    with tempfile.TemporaryDirectory(prefix="maas-splits-") as tmp:
        for table in (tables.cars(), tables.diabetes_messy()):
            for seed in SEEDS:
                up, back = tables.split(table, seed=seed)
                model_dir = train(Path(tmp) / f"{table.name}-{seed}", up, {"label": table.label})
                served = served_r2(model_dir, back, table.label)
                reference = tables.baselines(table, up[up[table.label].notna()], back)
                margin = 100 * (served - max(reference.values()))
                rows.append(
                    f"| {table.name} | {seed} | {served:.3f} | {reference['linear']:.3f} | "
                    f"{reference['hgb']:.3f} | {margin:+.1f} | {chosen(model_dir)} |"
                )
                print(rows[-1], flush=True)
    print("\n| table | seed | served R² | RidgeCV | HGB | margin (points) | chosen |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
