"""Generative models end to end on the local stack, with the official openai client.

1. A tiny randomly initialised Llama folder (built with transformers here) uploaded under
   pretrained/, imported, optimized and served: the openai client's completions.create and
   chat.completions.create get text, finish_reason and usage that agree with the tokens
   generated; the OIP generate extension answers the same prompt the same way (greedy).
2. The lm recipe trained through the stack on a corpus built from installed files (Python's
   docstrings, /usr/share/doc READMEs): served greedy output vs the model's own fp32 torch
   generation (its hf/ folder, loaded by transformers) for the first 32 tokens of 10 prompts.
3. finetune of the imported Llama on instruction pairs: the held-out loss goes down.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from maas_devkit.lmfolders import corpus_documents, tiny_folder
from maas_devkit.stacks import running_stack
from maas_devkit.wait import wait_until_final
from maas_local.stack import LocalStack

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1800)]
PROMPTS = [
    "The standard library",
    "A file object",
    "This module provides",
    "Return the",
    "The email package",
    "If the argument is",
    "Logging is",
    "An HTTP request",
    "The default value",
    "Each line of the",
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    with running_stack(tmp_path_factory.mktemp("stack")) as s:
        yield s


def _s3(stack: LocalStack) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=stack.aws_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _openai(stack: LocalStack) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{stack.api_url}/v1", api_key="not-needed-locally", max_retries=0)


@pytest.fixture(scope="module")
def llama(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tiny_folder("llama", tmp_path_factory.mktemp("llama") / "folder")
    s3, bucket = _s3(stack), stack.outputs["DataBucketName"]
    for f in folder.iterdir():
        s3.upload_file(str(f), bucket, f"pretrained/tiny-llama/run-1/{f.name}")
    job = {"task": "text-generation"}
    s3.put_object(Bucket=bucket, Key="pretrained/tiny-llama/run-1/job.json", Body=json.dumps(job))
    record = wait_until_final(stack, "tiny-llama", timeout=900)
    assert record["status"] == "READY", record
    return folder


def test_openai_client_completions_and_chat_agree_with_the_tokens(
    stack: LocalStack, llama: Path
) -> None:
    from transformers import AutoTokenizer

    client = _openai(stack)
    tok = AutoTokenizer.from_pretrained(llama)
    # WHEN the official client asks for a greedy completion
    c = client.completions.create(
        model="tiny-llama", prompt="The standard library", max_tokens=10, temperature=0
    )
    # THEN usage agrees with the prompt's tokens and the tokens generated
    assert c.object == "text_completion" and len(c.choices) == 1
    assert c.usage.prompt_tokens == len(tok("The standard library")["input_ids"])
    n = c.usage.completion_tokens
    assert c.usage.total_tokens == c.usage.prompt_tokens + n
    assert c.choices[0].finish_reason == ("length" if n == 10 else "stop")
    print(f"completion: {c.choices[0].text!r}, {n} tokens, {c.choices[0].finish_reason}")
    # AND the OIP generate extension answers the same prompt the same way
    r = requests.post(
        f"{stack.api_url}/v2/models/tiny-llama/generate",
        json={"text_input": "The standard library", "parameters": {"max_tokens": 10}},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.json()["text_output"] == c.choices[0].text
    # AND a chat renders with the folder's template and counts its tokens as transformers does
    messages = [{"role": "user", "content": "Name a file format."}]
    chat = client.chat.completions.create(
        model="tiny-llama",
        messages=messages,
        max_tokens=6,
        temperature=0,  # type: ignore[arg-type]
    )
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert chat.choices[0].message.role == "assistant"
    assert isinstance(chat.choices[0].message.content, str)
    assert chat.usage is not None and chat.usage.prompt_tokens == len(ids)
    assert chat.choices[0].finish_reason in ("stop", "length")
    # AND /v1/models lists it; an unknown model is the client's NotFoundError
    assert "tiny-llama" in [m.id for m in client.models.list()]
    import openai

    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="hi")
    with pytest.raises(openai.BadRequestError, match="context window"):
        client.completions.create(model="tiny-llama", prompt="word " * 700, max_tokens=1)


def _hf_folder(stack: LocalStack, job: str, dst: Path) -> Path:
    s3 = _s3(stack)
    key = f"training-output/{job}/output/model.tar.gz"
    body = s3.get_object(Bucket=stack.outputs["ArtifactBucketName"], Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        tar.extractall(dst, filter="data")
    return dst / "hf"


def test_lm_trained_through_the_stack_serves_its_own_greedy_generation(
    stack: LocalStack, tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # GIVEN a corpus of installed documentation, uploaded as a run with job.json last
    s3, bucket = _s3(stack), stack.outputs["DataBucketName"]
    corpus = "\n\n".join(corpus_documents())
    s3.put_object(Bucket=bucket, Key="datasets/doclm/run-1/corpus.txt", Body=corpus.encode())
    job = {"task": "text-generation", "recipe": "lm", "hyperparameters": {"epochs": 3}}
    s3.put_object(Bucket=bucket, Key="datasets/doclm/run-1/job.json", Body=json.dumps(job))
    record = wait_until_final(stack, "doclm", timeout=1500)
    assert record["status"] == "READY", record
    # WHEN 10 prompts are completed greedily over HTTP, 32 tokens each
    client = _openai(stack)
    hf = _hf_folder(stack, record["job_name"], tmp_path / "model")
    tok = AutoTokenizer.from_pretrained(hf)
    ref = AutoModelForCausalLM.from_pretrained(hf).eval()
    eos = ref.config.eos_token_id
    same, total, exact = 0, 0, 0
    for prompt in PROMPTS:
        served = client.completions.create(
            model="doclm", prompt=prompt, max_tokens=32, temperature=0
        )
        got = tok(served.choices[0].text, add_special_tokens=False)["input_ids"]
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = ref.generate(ids, max_new_tokens=32, do_sample=False, pad_token_id=eos)
        want = [int(t) for t in out[0, ids.shape[1] :] if int(t) != eos]
        want = want[: served.usage.completion_tokens] if served.usage else want
        n = max(len(want), len(got))
        same += sum(a == b for a, b in zip(got, want, strict=False))
        total += n
        exact += got == want
    # THEN it agrees with its own fp32 torch generation (the served graph may be quantized)
    agreement = same / max(1, total)
    manifest = json.loads(
        s3.get_object(
            Bucket=stack.outputs["ArtifactBucketName"], Key="models/doclm/1/manifest.json"
        )["Body"].read()
    )
    print(
        f"lm: served recipe {manifest['recipe']}; greedy token agreement with torch fp32 "
        f"{agreement:.3f} ({exact}/10 prompts identical over 32 tokens); held-out perplexity "
        f"{manifest['training_metrics']['heldout_perplexity']:.1f}"
    )
    assert agreement >= 0.9


def test_finetune_on_instruction_pairs_lowers_the_held_out_loss(
    stack: LocalStack, llama: Path
) -> None:
    s3, bucket = _s3(stack), stack.outputs["DataBucketName"]
    rows = [
        {"prompt": f"What is {a} plus {b}?", "completion": f"{a + b}."}
        for a in range(12)
        for b in range(12)
    ]
    body = "\n".join(json.dumps(r) for r in rows)
    s3.put_object(Bucket=bucket, Key="datasets/llama-sums/run-1/pairs.jsonl", Body=body.encode())
    job = {
        "task": "text-generation",
        "recipe": "finetune",
        "base_model": "tiny-llama",
        "hyperparameters": {"epochs": 3, "learning_rate": 0.003},
    }
    s3.put_object(Bucket=bucket, Key="datasets/llama-sums/run-1/job.json", Body=json.dumps(job))
    record = wait_until_final(stack, "llama-sums", timeout=900)
    assert record["status"] == "READY", record
    manifest = json.loads(
        s3.get_object(
            Bucket=stack.outputs["ArtifactBucketName"], Key="models/llama-sums/1/manifest.json"
        )["Body"].read()
    )
    m = manifest["training_metrics"]
    print(
        f"finetune ({m['mode']}): held-out loss {m['heldout_loss_before']:.3f} -> "
        f"{m['heldout_loss_after']:.3f}, accuracy {m['heldout_accuracy_before']:.3f} -> "
        f"{m['heldout_accuracy_after']:.3f}"
    )
    assert m["heldout_loss_after"] < m["heldout_loss_before"]
    # AND the tuned model answers
    c = _openai(stack).completions.create(
        model="llama-sums", prompt="What is 3 plus 4?", max_tokens=4, temperature=0
    )
    assert c.usage is not None and c.usage.completion_tokens >= 0


def test_maas_generate_and_chat_answer_from_the_cli(stack: LocalStack, llama: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "AWS_ENDPOINT_URL": stack.aws_url}
    cli = [sys.executable, "-m", "maas_cli.main"]
    done = subprocess.run(
        [*cli, "generate", "tiny-llama", "The standard library", "--max-tokens", "5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "completion tokens]" in done.stderr
    want = _openai(stack).completions.create(
        model="tiny-llama", prompt="The standard library", max_tokens=5, temperature=0
    )
    assert done.stdout == want.choices[0].text + "\n"
    talk = subprocess.run(
        [*cli, "chat", "tiny-llama", "--max-tokens", "4"],
        env=env,
        input="Name a file format.\n\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert talk.returncode == 0, talk.stderr
    assert "tiny-llama> " in talk.stdout
