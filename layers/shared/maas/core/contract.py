"""The training boundary: what the training job writes and the Lambda side reads, named once.

Standard library only, and no imports from ``maas``: the training container does not ship the
``maas`` package, so ``maas push-training-code`` copies this file into the code tarball as
``maas_training/_shared/contract.py`` (byte for byte; a test pins the copy) and the job loads it
with ``maas_training.shared``, as it loads ``maas/serving/textprep.py``.

model dir (inside model.tar.gz):
  model.onnx        fp32 graph. Tabular: input "input" FP32 [-1, n_features] of the features
                    table.json makes of the raw columns (standardisation is inside the
                    graph). Text: the token-id inputs of ``graph_inputs``. Classifiers
                    output "probabilities" FP32 [-1, n_classes] and "label" STRING [-1];
                    regressors "prediction" FP32 [-1]; embedding models "embedding" FP32
                    [-1, dim].
  sample.npz        held-out test split, never seen in training or early stopping: one array
                    "input__<onnx input name>" per graph input, "target" (int64 class index) for
                    classifiers (float64 value for regressors), "text" (unicode) for text
                    models. The quality gate and the reported test accuracy use it.
  calibration.npz   same layout, a slice of the training split (static quantization calibration).
  metrics.json      training metrics (fp32 test accuracy, epochs, device, timings, ...).
  labels.json       class names, index-aligned with "probabilities" ([] for embeddings).
  schema.json       ``Schema`` below.
  training.png      training/validation curves and the test confusion matrix (trained models).
  table.json        tabular models: the fitted column transforms (maas/serving/tableprep.py)
                    that turn the OIP inputs (one per column, or one FP32 matrix) into the
                    graph's input, in training and in serving alike; the manifest carries it.
  text.json         text models: the encoder spec (maas/serving/textprep.py) that turns the BYTES
                    input into the graph's inputs, in training and in serving alike.
  tokenizer.json    text models built on a Hugging Face tokenizer.
  compressed.json   compression candidates (``Compressed`` below): smaller students of the same
                    model (fewer layers or FFN channels, narrower MLP layers), healed by
                    distillation against it, each an fp32 graph with model.onnx's interface
                    under compressed/<name>.onnx. Absent or [] when the job made none. The
                    optimizer treats each as another base, gated against model.onnx.
  generation.json   text-generation models: ``GenerationSpec`` (the KV cache's shape, the
                    tokenizer's special tokens and BOS rule, the chat template, the folder's
                    generation defaults). model.onnx is then the KV-cache graph named below
                    (INPUT_IDS, past_name, LOGITS_OUTPUT, present_name) and sample.npz holds
                    held-out token windows (INPUT_PREFIX + INPUT_IDS, [n, length]) for the
                    optimizer's perplexity and next-token agreement.
  hf/               text-generation models trained or fine-tuned here: the Hugging Face folder
                    (config.json, model.safetensors, tokenizer files) for use elsewhere.

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
TABLE_SPEC_FILE = "table.json"
TOKENIZER_FILE = "tokenizer.json"
MANIFEST_FILE = "manifest.json"
COMPRESSED_FILE = "compressed.json"
COMPRESSED_DIR = "compressed"
GENERATION_SPEC_FILE = "generation.json"
HF_FOLDER = "hf"
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
PREDICTION_OUTPUT = "prediction"
EMBEDDING_OUTPUT = "embedding"
# Text-generation graphs: token ids in, next-token logits out, the KV cache both ways.
INPUT_IDS = "input_ids"
LOGITS_OUTPUT = "logits"


def past_name(layer: int, kv: str) -> str:
    return f"past_key_values.{layer}.{kv}"


def present_name(layer: int, kv: str) -> str:
    return f"present.{layer}.{kv}"


class TensorSpec(TypedDict):
    name: str
    datatype: str
    shape: list[int]
    parameters: NotRequired[dict[str, Any]]  # a table column's role ({"role": "categorical"})


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
    columns: NotRequired[list[dict[str, Any]]]  # tabular: name, role, why (the job's typing)


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
    table: NotRequired[dict[str, Any]]  # table.json: the column transforms serving runs
    generation: NotRequired[GenerationSpec]
    graph_inputs: NotRequired[list[str]]
    plot: NotRequired[str]


class GenerationSpec(TypedDict):
    """generation.json: what the generation loop needs beside the graph and tokenizer.json."""

    architecture: str
    model_type: str
    layers: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    context_length: int  # prompt + completion tokens the model takes
    bos_token_id: int | None
    eos_token_ids: list[int]
    # How `tokenizer(prompt)` adds special tokens for this folder: "tokenizer.json" (its
    # post-processor, tokenizers' add_special_tokens=True) or "explicit" (add_bos/add_eos below,
    # tokenizers' add_special_tokens=False), as transformers' AutoTokenizer does for the class.
    special_tokens_rule: str
    add_bos: bool
    add_eos: bool
    special_tokens: dict[str, str]  # bos_token, eos_token, ... for the chat template
    chat_template: str | None
    generation_defaults: dict[str, Any]  # generation_config.json's sampling settings


TEXT_INPUT_SPEC: TensorSpec = {"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1]}


def classifier_outputs(n_classes: int) -> list[TensorSpec]:
    return [
        {"name": PROBABILITIES_OUTPUT, "datatype": "FP32", "shape": [-1, n_classes]},
        {"name": LABEL_OUTPUT, "datatype": "BYTES", "shape": [-1]},
    ]


def regressor_outputs() -> list[TensorSpec]:
    return [{"name": PREDICTION_OUTPUT, "datatype": "FP32", "shape": [-1]}]


# --- tasks and recipes ------------------------------------------------------------------------

# task -> its recipes, the default first.
#   classification,      tables (maas/serving/tableprep.py types and encodes the columns).
#   regression           "auto": a linear model (MLP depth 0), the MLP at 1 and hidden_layers
#                        and gradient-boosted trees, compared by validation loss (k-fold on
#                        small tables), then the winner refitted on train + validation; "mlp":
#                        exactly hidden_layers, early-stopped; "trees": the trees alone. With
#                        no "task" in job.json the label decides which of the two it is.
#   text-classification  "ngram": hashed word + character n-grams into an embedding bag
#                        (fastText-style); "finetune": a pretrained encoder (channel "base")
#                        with a classification head; "import": a Hugging Face
#                        sequence-classification folder exported as it is.
#   embedding            "import": a Hugging Face / sentence-transformers folder exported with
#                        its pooling and normalisation.
#   text-generation      "lm": a Llama-style decoder trained from a text corpus with its own
#                        byte-level BPE tokenizer; "finetune": an imported causal LM (channel
#                        "base") tuned on text or chat/instruction data, LoRA by default, merged;
#                        "import": a Hugging Face causal-LM folder (Llama, Mistral, Qwen2,
#                        Qwen3, GPT-2) exported as it is. All export with the KV cache.
TEXT_GENERATION = "text-generation"
RECIPES: dict[str, tuple[str, ...]] = {
    "classification": ("auto", "mlp", "trees"),
    "regression": ("auto", "mlp", "trees"),
    "text-classification": ("ngram", "finetune", "import"),
    "embedding": ("import",),
    TEXT_GENERATION: ("lm", "finetune", "import"),
}
TASKS = tuple(RECIPES)
DEFAULT_TASK = TASKS[0]
TABULAR_TASKS = ("classification", "regression")
DETECT_TASK = ""  # the training job's task when job.json names none: the label decides
ALL_RECIPES = tuple(dict.fromkeys(r for rs in RECIPES.values() for r in rs))


def default_recipe(task: str) -> str:
    return RECIPES[task][0]


# --- hyperparameters --------------------------------------------------------------------------

# The columns a job reads, and the recipe ("" = the task's default).
DEFAULT_LABEL = "label"
DEFAULT_TEXT = "text"
STRING_HYPERPARAMETERS: dict[str, str] = {
    "task": DETECT_TASK,
    "label": DEFAULT_LABEL,
    "text": DEFAULT_TEXT,
    "recipe": "",
    # job.json's "columns" ({"<name>": "numeric" | "categorical" | ...}) as a JSON object.
    "columns": "",
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
    # Tables: more feature columns than this is refused (a wide table is rarely what was meant).
    "max_columns": 2000,
    # Classification: 1 weighs each class by the inverse of its share of the training rows, in
    # every candidate's loss (an imbalanced table); 0 counts every row alike.
    "balance_classes": 0,
    # Text generation: the lm recipe's tokenizer and width (embedding_dim, hidden_layers,
    # attention_heads), its context (max_length); finetune's LoRA rank (0: full fine-tuning).
    "vocab_size": 4096,
    "attention_heads": 4,
    "lora_rank": 8,
}
# Defaults that differ by recipe, applied to the knobs a job does not set (a transformer
# fine-tune wants a few epochs at a small learning rate, not the tabular 200 at 1e-3). Keyed by
# recipe, or by "task/recipe" where one recipe name means different things per task.
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
    "lm": {
        "epochs": 4,
        "learning_rate": 3e-3,
        "weight_decay": 0.1,
        "patience": 2,
        "dropout": 0.0,
        "batch_size": 16,
        "embedding_dim": 128,
        "hidden_layers": 2,
        "max_length": 128,
    },
    "text-generation/finetune": {
        "epochs": 3,
        "learning_rate": 2e-4,
        "weight_decay": 0.0,
        "patience": 2,
        "dropout": 0.0,
        "batch_size": 8,
        "max_length": 256,
    },
}


def recipe_defaults(task: str, recipe: str) -> dict[str, int | float]:
    """The recipe's defaults for the task: "task/recipe" first, then the recipe's own."""
    return RECIPE_DEFAULTS.get(f"{task}/{recipe}", RECIPE_DEFAULTS.get(recipe, {}))
