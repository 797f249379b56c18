"""The training boundary: what the training job writes and the Lambda side reads, named once.

Standard library only, and no imports from ``maas``: the training container does not ship the
``maas`` package, so ``maas push-training-code`` copies this file into the code tarball as
``maas_training/_shared/contract.py`` (byte for byte; a test pins the copy) and the job loads it
with ``maas_training.shared``, as it loads ``maas/serving/textprep.py``.

model dir (inside model.tar.gz):
  model.onnx        fp32 graph. Tabular: input "input" FP32 [-1, n_features] of raw feature
                    values (standardisation is inside the graph). Text: the token-id inputs of
                    ``graph_inputs``. Classifiers output "probabilities" FP32 [-1, n_classes] and
                    "label" STRING [-1]; embedding models "embedding" FP32 [-1, dim].
  sample.npz        held-out test split, never seen in training or early stopping: one array
                    "input__<onnx input name>" per graph input, "target" (int64 class index) for
                    classifiers, "text" (unicode) for text models. The quality gate and the
                    reported test accuracy use it.
  calibration.npz   same layout, a slice of the training split (static quantization calibration).
  metrics.json      training metrics (fp32 test accuracy, epochs, device, timings, ...).
  labels.json       class names, index-aligned with "probabilities" ([] for embeddings).
  schema.json       ``Schema`` below.
  training.png      training/validation curves and the test confusion matrix (trained models).
  text.json         text models: the encoder spec (maas/serving/textprep.py) that turns the BYTES
                    input into the graph's inputs, in training and in serving alike.
  tokenizer.json    text models built on a Hugging Face tokenizer.
  compressed.json   compression candidates (``Compressed`` below): smaller students of the same
                    model (fewer layers or FFN channels, narrower MLP layers), healed by
                    distillation against it, each an fp32 graph with model.onnx's interface
                    under compressed/<name>.onnx. Absent or [] when the job made none. The
                    optimizer treats each as another base, gated against model.onnx.

Served version (models/<model>/<version>/): model.onnx, manifest.json (``Manifest``), and for
text models text.json (+ tokenizer.json), each sha256-listed in the manifest; training.png when
present.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

# --- file names -----------------------------------------------------------------------------

MODEL_FILE = "model.onnx"
SAMPLE_FILE = "sample.npz"
CALIBRATION_FILE = "calibration.npz"
METRICS_FILE = "metrics.json"
LABELS_FILE = "labels.json"
SCHEMA_FILE = "schema.json"
PLOT_FILE = "training.png"
TEXT_SPEC_FILE = "text.json"
TOKENIZER_FILE = "tokenizer.json"
MANIFEST_FILE = "manifest.json"
COMPRESSED_FILE = "compressed.json"
COMPRESSED_DIR = "compressed"
# What every model dir holds; the rest is per task.
REQUIRED_MODEL_FILES = (MODEL_FILE, SAMPLE_FILE, METRICS_FILE, LABELS_FILE, SCHEMA_FILE)

# sample.npz / calibration.npz keys: INPUT_PREFIX + graph input name, the class index, the texts.
INPUT_PREFIX = "input__"
TARGET_KEY = "target"
SAMPLE_TEXT_KEY = "text"

# --- graph and OIP tensor names ---------------------------------------------------------------

FEATURES_INPUT = "input"
TEXT_INPUT = "text"  # the OIP BYTES input of every text model
PROBABILITIES_OUTPUT = "probabilities"
LABEL_OUTPUT = "label"
EMBEDDING_OUTPUT = "embedding"


class TensorSpec(TypedDict):
    name: str
    datatype: str
    shape: list[int]


class Transformer(TypedDict):
    """What the optimizer's transformer fusions need to know about an imported encoder."""

    model_type: str
    num_heads: int
    hidden_size: int


class Schema(TypedDict):
    """schema.json. ``inputs`` are the OIP inputs; a text model's graph takes ``graph_inputs``."""

    task: str
    labels: list[str]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    label_column: NotRequired[str]
    text_column: NotRequired[str]
    features: NotRequired[list[str]]
    graph_inputs: NotRequired[list[str]]
    transformer: NotRequired[Transformer]


class Compressed(TypedDict):
    """One entry of compressed.json: a student graph and how it was made."""

    name: str  # e.g. "layers-4", "ffn-50", "hidden-64": the optimizer's base name
    file: str  # relative to the model dir: compressed/<name>.onnx
    how: str  # what was removed, and how it was healed
    parameters: int
    teacher_parameters: int
    distillation: dict[str, Any]  # steps, seconds, loss, and its held-out agreement or cosine


class TextFiles(TypedDict):
    spec: dict[str, Any]  # text.json
    files: dict[str, str]  # file name -> sha256


class Manifest(TypedDict):
    """manifest.json of a served version."""

    model: str
    version: int
    task: str
    created_at: str
    training_job: str
    source: str
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    features: list[str] | None
    labels: list[str]
    label_column: str | None
    training_metrics: dict[str, Any]
    quantization: dict[str, Any]
    recipe: str
    fp32_size_bytes: int
    size_bytes: int
    sha256: str
    quality_gate: dict[str, Any]
    text: NotRequired[TextFiles]
    graph_inputs: NotRequired[list[str]]
    plot: NotRequired[str]


TEXT_INPUT_SPEC: TensorSpec = {"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1]}


def classifier_outputs(n_classes: int) -> list[TensorSpec]:
    return [
        {"name": PROBABILITIES_OUTPUT, "datatype": "FP32", "shape": [-1, n_classes]},
        {"name": LABEL_OUTPUT, "datatype": "BYTES", "shape": [-1]},
    ]


# --- tasks and recipes ------------------------------------------------------------------------

# task -> its recipes, the default first.
#   classification       "auto": pick the MLP depth (0, 1 or hidden_layers) by validation loss,
#                        then refit the winner on train + validation; "mlp": exactly
#                        hidden_layers, early-stopped.
#   text-classification  "ngram": hashed word + character n-grams into an embedding bag
#                        (fastText-style); "finetune": a pretrained encoder (channel "base")
#                        with a classification head; "import": a Hugging Face
#                        sequence-classification folder exported as it is.
#   embedding            "import": a Hugging Face / sentence-transformers folder exported with
#                        its pooling and normalisation.
RECIPES: dict[str, tuple[str, ...]] = {
    "classification": ("auto", "mlp"),
    "text-classification": ("ngram", "finetune", "import"),
    "embedding": ("import",),
}
TASKS = tuple(RECIPES)
DEFAULT_TASK = TASKS[0]
ALL_RECIPES = tuple(dict.fromkeys(r for rs in RECIPES.values() for r in rs))


def default_recipe(task: str) -> str:
    return RECIPES[task][0]


# --- hyperparameters --------------------------------------------------------------------------

# The columns a job reads, and the recipe ("" = the task's default).
DEFAULT_LABEL = "label"
DEFAULT_TEXT = "text"
STRING_HYPERPARAMETERS: dict[str, str] = {
    "task": DEFAULT_TASK,
    "label": DEFAULT_LABEL,
    "text": DEFAULT_TEXT,
    "recipe": "",
}
# Numeric knobs and their defaults; a default's type is the knob's (int or float). The job spec
# and the training job each bound them (a paid GPU should never see an absurd value).
HYPERPARAMETERS: dict[str, int | float] = {
    "epochs": 200,
    "batch_size": 64,
    "learning_rate": 1e-3,
    "weight_decay": 1e-4,
    "hidden_units": 128,
    "hidden_layers": 2,
    "dropout": 0.1,
    "patience": 15,
    "seed": 0,
    "validation_fraction": 0.15,
    "test_fraction": 0.15,
    # Text recipes: embedding width and hash buckets (ngram), tokens per text (finetune/import).
    "embedding_dim": 64,
    "buckets": 1 << 16,
    "max_length": 128,
    # Compression candidates (compressed.json): how many students at most (0: none), and the
    # seconds their distillation may take in all.
    "compress_candidates": 2,
    "compress_seconds": 240,
}
# Defaults that differ by recipe, applied to the knobs a job does not set (a transformer
# fine-tune wants a few epochs at a small learning rate, not the tabular 200 at 1e-3).
RECIPE_DEFAULTS: dict[str, dict[str, int | float]] = {
    "ngram": {
        "epochs": 30,
        "learning_rate": 1e-2,
        "weight_decay": 0.0,
        "patience": 3,
        "dropout": 0.0,
        "batch_size": 128,
    },
    "finetune": {
        "epochs": 4,
        "learning_rate": 5e-5,
        "weight_decay": 0.01,
        "patience": 2,
        "batch_size": 32,
        "dropout": 0.1,
    },
}
