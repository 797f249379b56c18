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
  schema.json       task, feature names, label column, onnx input/output names. Text models:
                    "inputs" is the OIP input (BYTES "text" [-1]); "graph_inputs" the graph's.
  training.png      training/validation curves and the test confusion matrix (optional).
  text.json         text models: the encoder spec (maas/serving/textprep.py) that turns the BYTES
                    input into the graph's inputs, in training and in serving alike.
  tokenizer.json    text models built on a Hugging Face tokenizer.

Served version (models/<model>/<version>/): model.onnx, manifest.json, and for text models
text.json (+ tokenizer.json), each sha256-listed in the manifest; training.png when present.
"""

from __future__ import annotations

from maas.core.names import InvalidName, check_model_name

MODEL_FILE = "model.onnx"
SAMPLE_FILE = "sample.npz"
CALIBRATION_FILE = "calibration.npz"
METRICS_FILE = "metrics.json"
LABELS_FILE = "labels.json"
SCHEMA_FILE = "schema.json"
MANIFEST_FILE = "manifest.json"
PLOT_FILE = "training.png"
TEXT_SPEC_FILE = "text.json"
TOKENIZER_FILE = "tokenizer.json"
INPUT_PREFIX = "input__"
TARGET_KEY = "target"


def model_prefix(model: str, version: int) -> str:
    """Where a served version lives in the ArtifactBucket (names checked: no key escapes it)."""
    check_model_name(model)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InvalidName(f"invalid version {version!r}: a positive integer")
    return f"models/{model}/{version}/"
