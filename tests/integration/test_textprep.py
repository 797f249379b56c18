"""The text encoders (maas/serving/textprep.py): one file, used by serving and by training."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from maas.core import contract
from maas.ingest.jobspec import JobSpec
from maas.serving import tableprep, textprep

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO / "layers" / "shared" / "maas" / "serving" / "textprep.py"
CONTRACT = REPO / "layers" / "shared" / "maas" / "core" / "contract.py"
TABLEPREP = REPO / "layers" / "shared" / "maas" / "serving" / "tableprep.py"


def _word_tokenizer_json() -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "the": 4, "cat": 5, "sat": 6}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return tok.to_str()


def test_hashed_ngrams_are_stable_padded_and_take_bytes() -> None:
    enc = textprep.HashedNgrams(buckets=1000)
    out = enc.encode(["The cat sat.", b"the cat", "x"])["ids"]
    assert out.dtype == np.int64 and out.shape[0] == 3
    assert (out[:, 0] < 1000).all()  # every row has a feature; padding is 1000
    first = enc.ids("the cat sat.")
    assert list(out[0, : len(first)]) == first  # lower-cased: "The" == "the"
    assert (out[2, len(enc.ids("x")) :] == enc.pad_id).all()
    # CRC-32, not Python's salted hash(): the same ids in every process
    code = "import sys; sys.path.insert(0, sys.argv[1]); import textprep; "
    code += "print(textprep.HashedNgrams(buckets=1000).ids('the cat sat.'))"
    again = subprocess.run(
        [sys.executable, "-c", code, str(SHARED.parent)], capture_output=True, text=True
    )
    assert json.loads(again.stdout) == first
    assert "wthe cat" in enc.features("the cat")  # word bigram
    assert "c<ca" in enc.features("cat")  # character n-gram with the word boundary


@pytest.mark.parametrize(
    ("item", "message"), [(b"\xff\xfe", "not valid UTF-8"), (3, "not a string")]
)
def test_bad_text_items_are_named(item: object, message: str) -> None:
    with pytest.raises(textprep.TextInputError, match=message):
        textprep.HashedNgrams().encode(["fine", item])


def test_tokenizer_json_pads_to_the_batch_longest_and_truncates(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text(_word_tokenizer_json())
    spec = textprep.tokenizer_spec(4, ["input_ids", "attention_mask"], contract.TOKENIZER_FILE)
    enc = textprep.load_encoder(spec, tmp_path)
    out = enc.encode(["the cat", "the cat sat sat sat"])
    # truncated to 4 tokens, the special ones kept (as Hugging Face does)
    assert out["input_ids"].tolist() == [[2, 4, 5, 3], [2, 4, 5, 3]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 1]]
    short = enc.encode(["the", "the cat"])
    assert short["input_ids"].tolist() == [[2, 4, 3, 0], [2, 4, 5, 3]]
    assert short["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    with pytest.raises(ValueError, match="unknown text encoder"):
        textprep.load_encoder({"kind": "sentencepiece"})


def test_training_job_loads_the_very_column_transforms_serving_runs() -> None:
    from maas_training import shared as training_side

    assert training_side.source_path("tableprep") == TABLEPREP
    column = training_side.tableprep().fit_column("x", "numeric", [1.0, 3.0], "FP64")
    assert column == tableprep.fit_column("x", "numeric", [1.0, 3.0], "FP64")


def test_training_job_loads_this_very_file() -> None:
    from maas_training import shared as training_side

    assert training_side.source_path("textprep") == SHARED
    mod = training_side.textprep()
    assert mod.HashedNgrams(buckets=97).ids("a b") == textprep.HashedNgrams(buckets=97).ids("a b")


@pytest.mark.parametrize(
    ("name", "source"),
    [
        ("textprep", SHARED),
        ("contract", CONTRACT),
        ("tableprep", TABLEPREP),
        ("chattemplate", SHARED.parent / "chattemplate.py"),
    ],
)
def test_training_code_tarball_carries_a_byte_identical_copy(
    tmp_path: Path, name: str, source: Path
) -> None:
    from maas_cli.training_code import pack_training_code

    tarball = pack_training_code(tmp_path / "training.tar.gz")
    with tarfile.open(tarball) as tar:
        member = tar.extractfile(f"maas_training/_shared/{source.name}")
        assert member is not None and member.read() == source.read_bytes()
        tar.extractall(tmp_path / "code", filter="data")
    # Unpacked alone (as on SageMaker, without the repository or the maas package), the job
    # finds the copy.
    code = (
        "import sys; sys.modules['maas'] = None; sys.path.insert(0, sys.argv[1]); "
        f"from maas_training import shared; print(shared.source_path({name!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "code")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == tmp_path / f"code/maas_training/_shared/{source.name}"


def test_job_spec_and_training_job_use_the_one_recipe_table() -> None:
    from maas_training.hyperparameters import parse_hyperparameters
    from maas_training.shared import contract as training_contract

    # GIVEN the one table: the training job loads the very file the Lambda side imports
    assert Path(training_contract.__file__).resolve() == Path(contract.__file__).resolve()
    for task, recipes in contract.RECIPES.items():
        for recipe in recipes:
            # WHEN each (task, recipe) of it goes through the job spec to the training job
            spec = JobSpec(
                task=task, recipe=recipe, base_model="m" if recipe == "finetune" else None
            )
            hp = parse_hyperparameters(spec.hyperparameters_for_sagemaker())
            # THEN both took it as it is, with the recipe's defaults from the table
            defaults = contract.recipe_defaults(task, recipe)
            assert {k: getattr(hp, k) for k in defaults} == defaults, (task, recipe)
            assert (hp.task, hp.recipe) == (task, recipe)
