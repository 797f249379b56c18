"""What the training job leaves in its model dir (inside model.tar.gz), and the manifest.

The training side (training/maas_training) writes these names; the optimizer reads them.

model dir:
  model.onnx        fp32 graph. Classification: input "input" FP32 [-1, n_features] of raw
                    feature values (standardisation is inside the graph); outputs
                    "probabilities" FP32 [-1, n_classes] and "label" STRING [-1].
  sample.npz        held-out test split, never seen in training or early stopping: one array
                    "input__<onnx input name>" per model input plus "target" (int64 class index).
                    The quality gate and the reported test accuracy use it.
  calibration.npz   same layout, a slice of the training split (static quantization calibration).
  metrics.json      training metrics (fp32 test accuracy, epochs, device, timings, ...).
  labels.json       class names, index-aligned with "probabilities".
  schema.json       task, feature names, label column, onnx input/output names.
"""

from __future__ import annotations

MODEL_FILE = "model.onnx"
SAMPLE_FILE = "sample.npz"
CALIBRATION_FILE = "calibration.npz"
METRICS_FILE = "metrics.json"
LABELS_FILE = "labels.json"
SCHEMA_FILE = "schema.json"
MANIFEST_FILE = "manifest.json"
INPUT_PREFIX = "input__"
TARGET_KEY = "target"


def model_prefix(model: str, version: int) -> str:
    """Where a served version lives in the ArtifactBucket."""
    return f"models/{model}/{version}/"
