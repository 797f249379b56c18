"""Text classification: a text column and a label column into a classifier of token ids.

Tokenisation is maas/serving/textprep.py (maas_training.shared): the code the inference function
runs on each request, so the ids the model is trained and gated on are the ids it is served.
"ngram" hashes word and character n-grams into an embedding bag (fastText-style) and refits on
train + validation; "finetune" puts a classification head on the pretrained encoder of channel
"base" and tokenises with its tokenizer.json.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from maas_training import log
from maas_training.recipes import Encoded, TrainedRecipe, register
from maas_training.shared import contract, textprep

TASK = "text-classification"


def _dataset(paths, hp):
    from maas_training.data import load_text_dataset

    return load_text_dataset(paths.train_channel, hp.text, hp.label)


def _encoded(dataset, hp, encoder, spec: dict, input_name: str, **extra: Any) -> Encoded:
    from maas_training.data import split_indices

    t0 = time.perf_counter()
    ids = encoder.encode(dataset.texts)[input_name]
    log.info(f"tokenised {len(ids)} texts in {time.perf_counter() - t0:.1f}s: width {ids.shape[1]}")
    return Encoded(
        x=ids,
        y=dataset.targets,
        split=split_indices(dataset.targets, hp.validation_fraction, hp.test_fraction, hp.seed),
        class_names=dataset.class_names,
        input_name=input_name,
        fingerprint=dataset.fingerprint(),
        files=dataset.files,
        schema={
            "label_column": dataset.label_column,
            "text_column": dataset.text_column,
            "inputs": [contract.TEXT_INPUT_SPEC],
            "graph_inputs": [input_name],
        },
        texts=np.asarray(dataset.texts, dtype=object),
        pad_id=encoder.pad_id,
        text_spec=spec,
        metrics={"text_encoder": spec},
        **extra,
    )


def load_ngram(paths, hp) -> Encoded:
    dataset = _dataset(paths, hp)
    encoder = textprep().HashedNgrams(buckets=hp.buckets)
    return _encoded(dataset, hp, encoder, encoder.spec(), "ids")


def build_ngram(data: Encoded, hp, x_fit: np.ndarray) -> Any:
    from maas_training.textmodels import NgramClassifier

    return NgramClassifier(hp.buckets, hp.embedding_dim, len(data.class_names), hp.dropout)


def load_finetune(paths, hp) -> Encoded:
    from maas_training.recipes.pretrained import find_model_folder

    dataset = _dataset(paths, hp)
    tp = textprep()
    folder = find_model_folder(paths.base_channel, "base")
    tokenizer_json = (folder / contract.TOKENIZER_FILE).read_text(encoding="utf-8")
    inputs = ["input_ids"]
    encoder = tp.HFTokenizer(tokenizer_json, hp.max_length, inputs)
    spec = tp.tokenizer_spec(hp.max_length, inputs, contract.TOKENIZER_FILE)
    return _encoded(
        dataset, hp, encoder, spec, "input_ids", tokenizer_json=tokenizer_json,
        builder_args={"folder": folder},
    )  # fmt: skip


def build_finetune(data: Encoded, hp, x_fit: np.ndarray) -> Any:
    from maas_training.bert import FinetuneClassifier, load_encoder

    encoder, _ = load_encoder(data.builder_args["folder"])
    return FinetuneClassifier(encoder, len(data.class_names), data.pad_id, hp.dropout)


register(TrainedRecipe(TASK, "ngram", load_ngram, build_ngram, refit=True, eval_batch=2048))
register(
    TrainedRecipe(TASK, "finetune", load_finetune, build_finetune, eval_batch=64, calibration=False)
)
