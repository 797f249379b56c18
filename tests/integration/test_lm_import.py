"""Causal LMs: tiny randomly initialised Llama, Qwen2, Qwen3 and GPT-2 folders built with
transformers at test time are imported by the training job, exported with the KV cache and
match torch (transformers' own fp32 logits); prompts and chats are tokenized exactly as
AutoTokenizer / apply_chat_template do for each folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from maas.core import contract
from maas.serving import chattemplate
from maas.serving.textprep import PromptTokenizer
from maas_devkit.lmfolders import ARCHS, tiny_folder

REPO = Path(__file__).resolve().parents[2]
TRAIN_PY = REPO / "training" / "train.py"
PROMPTS = [
    "The quick brown fox",
    "  leading spaces and trailing  ",
    "Unicode: café, naïve, 東京, emoji 🙂",
    "Special <s> and </s> and <|im_end|> in text",
    "",
]
CHATS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "What does json.dumps do?"}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Name a file format."},
        {"role": "assistant", "content": "CSV."},
        {"role": "user", "content": "Another one?"},
    ],
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lm-folders")
    return {arch: tiny_folder(arch, root / arch) for arch in ARCHS}


def _import_job(base: Path, folder: Path) -> subprocess.CompletedProcess[str]:
    channel = base / "input" / "data" / "train" / "model"
    channel.mkdir(parents=True)
    for f in folder.iterdir():
        (channel / f.name).write_bytes(f.read_bytes())
    config = base / "input" / "config"
    config.mkdir(parents=True)
    hp = {"task": "text-generation", "recipe": "import"}
    (config / "hyperparameters.json").write_text(
        json.dumps({k: json.dumps(v) for k, v in hp.items()})
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "MAAS_"))}
    env["MAAS_OPT_ML"] = str(base)
    return subprocess.run(
        [sys.executable, str(TRAIN_PY)], env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_decoder_matches_transformers_logits_with_and_without_kv_cache(
    folders: dict[str, Path], arch: str
) -> None:
    import torch
    from maas_training.decoder import load_folder
    from transformers import AutoModelForCausalLM

    # GIVEN a transformers folder and the job's plain-torch module loaded from it
    ref = AutoModelForCausalLM.from_pretrained(folders[arch]).eval()
    ours = load_folder(folders[arch])
    ids = torch.randint(
        0, ours.config.vocab_size, (1, 24), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        want = ref(ids).logits
        # WHEN it runs the whole sequence, then the second half one cached step at a time
        whole = ours(ids)[0]
        out = ours(ids[:, :12])
        steps = []
        for t in range(12, 24):
            out = ours(ids[:, t : t + 1], *out[1:])
            steps.append(out[0][0, -1])
    # THEN both match transformers' fp32 logits
    diff_whole = float((whole - want).abs().max())
    diff_cached = float((torch.stack(steps) - want[0, 12:]).abs().max())
    print(f"{arch}: max abs diff vs transformers {diff_whole:.3g} whole, {diff_cached:.3g} cached")
    assert diff_whole < 1e-4 and diff_cached < 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_import_job_writes_a_kv_cache_graph_that_matches_transformers(
    folders: dict[str, Path], arch: str, tmp_path: Path
) -> None:
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForCausalLM

    # GIVEN the folder uploaded as a pretrained import; WHEN the training job runs
    proc = _import_job(tmp_path, folders[arch])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    model_dir = tmp_path / "model"
    metrics = json.loads((model_dir / contract.METRICS_FILE).read_text())
    spec = json.loads((model_dir / contract.GENERATION_SPEC_FILE).read_text())
    # THEN the job checked its export against torch and recorded the difference
    assert metrics["onnx_max_abs_diff"] < 1e-4
    assert spec["layers"] == 2 and spec["eos_token_ids"]
    # AND the graph, fed the way serving feeds it, matches transformers on held-out windows
    sample = np.load(model_dir / contract.SAMPLE_FILE)
    rows = sample[contract.INPUT_PREFIX + contract.INPUT_IDS]
    ref = AutoModelForCausalLM.from_pretrained(folders[arch]).eval()
    sess = ort.InferenceSession(str(model_dir / contract.MODEL_FILE))
    past = {
        i.name: np.zeros((1, spec["kv_heads"], 0, spec["head_dim"]), np.float32)
        for i in sess.get_inputs()[1:]
    }
    worst = 0.0
    for row in rows[:4]:
        got = sess.run([contract.LOGITS_OUTPUT], {contract.INPUT_IDS: row[None], **past})[0]
        with torch.no_grad():
            want = ref(torch.from_numpy(row[None])).logits.numpy()
        worst = max(worst, float(np.abs(got - want).max()))
    print(f"{arch}: job's check {metrics['onnx_max_abs_diff']:.3g}; vs transformers {worst:.3g}")
    assert worst < 1e-4


def _auto_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _spec(folder: Path) -> dict[str, Any]:
    from maas_training.decoder import load_folder
    from maas_training.lmfolder import generation_spec

    return generation_spec(folder, load_folder(folder).config, 512)


@pytest.mark.parametrize("arch", ARCHS)
def test_prompts_tokenize_as_autotokenizer_does(folders: dict[str, Path], arch: str) -> None:
    # GIVEN the folder's generation spec and tokenizer.json, as serving loads them
    folder = folders[arch]
    tok = PromptTokenizer.from_spec((folder / contract.TOKENIZER_FILE).read_text(), _spec(folder))
    auto = _auto_tokenizer(folder)
    # THEN every prompt gives AutoTokenizer's ids, special tokens and BOS included
    for prompt in PROMPTS:
        assert tok.encode(prompt) == auto(prompt)["input_ids"], prompt


@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "gpt2"])
def test_chats_render_and_tokenize_as_apply_chat_template(
    folders: dict[str, Path], arch: str
) -> None:
    folder = folders[arch]
    spec = _spec(folder)
    tok = PromptTokenizer.from_spec((folder / contract.TOKENIZER_FILE).read_text(), spec)
    auto = _auto_tokenizer(folder)
    for messages in CHATS:
        # WHEN serving renders the chat with the folder's template
        text = chattemplate.render(spec["chat_template"], messages, spec["special_tokens"])
        # THEN text and ids are apply_chat_template's (add_generation_prompt=True)
        want_text = auto.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        want_ids = auto.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(want_ids, dict) or hasattr(want_ids, "keys"):
            want_ids = want_ids["input_ids"]
        assert text == want_text
        assert tok.encode(text, special=False) == list(want_ids)


def test_a_folder_without_a_chat_template_has_none(folders: dict[str, Path]) -> None:
    assert _spec(folders["gpt2"])["chat_template"] is None
