"""Text generation through the production handlers: an imported tiny Llama (built with
transformers at test time) goes through the optimizer handler (the LM candidate search) and is
served by the inference handler on /v1/completions, /v1/chat/completions, /v1/models and the
OIP generate extension; greedy output equals transformers' own greedy generate; bad input is a
clear 4xx in each route's shape, and the next request is served."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from maas.core.names import job_name
from maas_devkit import events, lambda_runtime
from maas_devkit.lmfolders import tiny_folder
from test_lm_import import _import_job

pytestmark = pytest.mark.usefixtures("aws")
MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def llama_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the folder, the import job's model dir)."""
    root = tmp_path_factory.mktemp("gen")
    folder = tiny_folder("llama", root / "folder")
    proc = _import_job(root / "job", folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder, root / "job" / "model"


def _tarball(model_dir: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for f in sorted(model_dir.rglob("*")):
            tar.add(f, arcname=str(f.relative_to(model_dir)), recursive=False)
    return buf.getvalue()


def _serve(aws: Any, model_dir: Path, lambda_context: Any) -> dict[str, Any]:
    registry = aws.registry()
    name = job_name(MODEL, "run-1", "etag-1")
    claim = registry.claim_job(
        job_name=name, model=MODEL, run="run-1", source="s3://x/y", actor="t"
    )
    registry.update_summary(MODEL, claim.version, {"spec": {"task": "text-generation"}})
    registry.mark_started(name)
    key = f"training-output/{name}/output/model.tar.gz"
    aws.s3.put_object(Bucket=aws.artifact_bucket, Key=key, Body=_tarball(model_dir))
    event = events.event_file("eventbridge-training-completed.json")
    assert event is not None
    event = json.loads(json.dumps(event))
    event["detail"].update(
        TrainingJobName=name,
        TrainingJobStatus="Completed",
        ModelArtifacts={"S3ModelArtifacts": f"s3://{aws.artifact_bucket}/{key}"},
    )
    event["detail"].pop("FailureReason", None)
    result = lambda_runtime.load_handler("optimize").lambda_handler(event, lambda_context)
    assert result["action"] == "ready", result
    return result


def _call(method: str, path: str, body: Any, lambda_context: Any) -> tuple[int, Any]:
    raw = None if body is None else json.dumps(body) if not isinstance(body, str) else body
    event = events.http_event(method, path, body=raw)
    response = lambda_runtime.load_handler("inference").lambda_handler(event, lambda_context)
    return response["statusCode"], json.loads(response["body"])


def _torch_greedy(folder: Path, ids: list[int], n: int) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=n, do_sample=False, min_new_tokens=n
        )
    return [int(t) for t in out[0, len(ids) :]]


def test_served_greedy_completion_matches_transformers_and_routes_agree(
    aws: Any, llama_job: tuple[Path, Path], lambda_context: Any
) -> None:
    from transformers import AutoTokenizer

    folder, model_dir = llama_job
    _serve(aws, model_dir, lambda_context)
    prompt = "The standard library"
    # WHEN a client asks for 12 greedy tokens on /v1/completions
    status, body = _call(
        "POST",
        "/v1/completions",
        {"model": MODEL, "prompt": prompt, "max_tokens": 12, "temperature": 0},
        lambda_context,
    )
    assert status == 200, body
    choice = body["choices"][0]
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok(prompt)["input_ids"]
    # THEN usage counts the prompt as AutoTokenizer does, and the text is transformers' greedy
    assert body["object"] == "text_completion"
    assert body["usage"]["prompt_tokens"] == len(ids)
    want = _torch_greedy(folder, ids, 12)
    eos = set(json.loads((model_dir / "generation.json").read_text())["eos_token_ids"])
    cut = next((i for i, t in enumerate(want) if t in eos), len(want))
    assert choice["text"] == tok.decode(want[:cut], skip_special_tokens=True)
    assert body["usage"]["completion_tokens"] == cut
    assert choice["finish_reason"] == ("length" if cut == 12 else "stop")
    # AND the OIP generate extension answers the same prompt the same way
    status, oip = _call(
        "POST",
        f"/v2/models/{MODEL}/generate",
        {"text_input": prompt, "parameters": {"max_tokens": 12}},
        lambda_context,
    )
    assert status == 200, oip
    assert oip["text_output"] == choice["text"] and oip["model_name"] == MODEL
    # AND /v1/models lists it
    status, models = _call("GET", "/v1/models", None, lambda_context)
    assert status == 200 and [m["id"] for m in models["data"]] == [MODEL]


def test_chat_completion_renders_the_template_and_counts_tokens(
    aws: Any, llama_job: tuple[Path, Path], lambda_context: Any
) -> None:
    from transformers import AutoTokenizer

    folder, model_dir = llama_job
    _serve(aws, model_dir, lambda_context)
    messages = [{"role": "user", "content": "Name a file format."}]
    status, body = _call(
        "POST",
        "/v1/chat/completions",
        {"model": MODEL, "messages": messages, "max_tokens": 5, "temperature": 0, "seed": 1},
        lambda_context,
    )
    assert status == 200, body
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["prompt_tokens"] == len(ids)
    assert body["usage"]["total_tokens"] == len(ids) + body["usage"]["completion_tokens"]


def test_sampling_with_a_seed_repeats_and_stop_sequences_cut(
    aws: Any, llama_job: tuple[Path, Path], lambda_context: Any
) -> None:
    _, model_dir = llama_job
    _serve(aws, model_dir, lambda_context)
    req = {"model": MODEL, "prompt": "Hello", "max_tokens": 8, "temperature": 0.9}
    req |= {"top_p": 0.9, "top_k": 50, "seed": 7, "repetition_penalty": 1.1}
    a = _call("POST", "/v1/completions", req, lambda_context)[1]["choices"][0]["text"]
    b = _call("POST", "/v1/completions", req, lambda_context)[1]["choices"][0]["text"]
    assert a == b
    greedy = {"model": MODEL, "prompt": "Hello", "max_tokens": 8, "temperature": 0}
    full = _call("POST", "/v1/completions", greedy, lambda_context)[1]["choices"][0]["text"]
    if len(full) >= 3:
        stop = full[1:3]
        cut = _call("POST", "/v1/completions", {**greedy, "stop": [stop]}, lambda_context)[1]
        assert cut["choices"][0]["text"] == full[: full.find(stop)]
        assert cut["choices"][0]["finish_reason"] == "stop"


BAD: list[tuple[str, str, Any, int, str]] = [
    ("/v1/completions", "prompt", {"prompt": "x " * 600, "max_tokens": 1}, 400, "512"),
    ("/v1/completions", "max_tokens", {"prompt": "hi", "max_tokens": 100000}, 400, "context"),
    ("/v1/completions", "temperature", {"prompt": "hi", "temperature": 5}, 400, "temperature"),
    ("/v1/completions", "unknown", {"prompt": "hi", "best_of": 3}, 400, "best_of"),
    ("/v1/completions", "top_p", {"prompt": "hi", "top_p": 0}, 400, "top_p"),
    ("/v1/completions", "stop", {"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("/v1/chat/completions", "messages", {"messages": []}, 400, "messages"),
    ("/v1/completions", "model", {"model": "nope", "prompt": "hi"}, 404, "not found"),
]


@pytest.mark.parametrize(("path", "what", "extra", "status", "says"), BAD, ids=[b[1] for b in BAD])
def test_bad_generation_requests_are_clear_openai_errors_and_the_next_is_served(
    aws: Any,
    llama_job: tuple[Path, Path],
    lambda_context: Any,
    path: str,
    what: str,
    extra: dict[str, Any],
    status: int,
    says: str,
) -> None:
    _, model_dir = llama_job
    _serve(aws, model_dir, lambda_context)
    got, body = _call("POST", path, {"model": MODEL, **extra}, lambda_context)
    assert got == status, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert says in error["message"]
    ok, _ = _call("POST", "/v1/completions", {"model": MODEL, "prompt": "hi"}, lambda_context)
    assert ok == 200


def test_generative_model_on_infer_and_generate_shapes(
    aws: Any, llama_job: tuple[Path, Path], lambda_context: Any
) -> None:
    _, model_dir = llama_job
    _serve(aws, model_dir, lambda_context)
    infer = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]}
    status, body = _call("POST", f"/v2/models/{MODEL}/infer", infer, lambda_context)
    assert status == 400 and "/generate" in body["error"]
    status, body = _call("POST", f"/v2/models/{MODEL}/generate", {"text": "hi"}, lambda_context)
    assert status == 400 and "text_input" in body["error"]


class _EndingContext:
    """A Lambda context whose invocation has DEADLINE_MARGIN_S left: no time to generate."""

    function_name = "inference"

    def get_remaining_time_in_millis(self) -> int:
        from maas.serving.api import DEADLINE_MARGIN_S

        return int(DEADLINE_MARGIN_S * 1000)


def test_a_generation_that_would_outrun_the_time_limit_stops_with_length(
    aws: Any, llama_job: tuple[Path, Path], lambda_context: Any
) -> None:
    _, model_dir = llama_job
    _serve(aws, model_dir, lambda_context)
    # WHEN the function has no time left beyond its answer margin
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 200, "temperature": 0}
    event = events.http_event("POST", "/v1/completions", body=json.dumps(body))
    handler = lambda_runtime.load_handler("inference")
    response = handler.lambda_handler(event, _EndingContext())
    # THEN it answers in time with what it has and finish_reason "length"
    assert response["statusCode"] == 200, response["body"]
    doc = json.loads(response["body"])
    assert doc["choices"][0]["finish_reason"] == "length"
    assert doc["usage"]["completion_tokens"] < 200


def test_a_model_that_does_not_generate_on_v1_is_a_clear_openai_error(
    aws: Any, llama_job: tuple[Path, Path], lambda_context: Any, iris_model: Any
) -> None:
    # GIVEN a generative model and a classifier, both in prod
    from maas_devkit.publish import publish_model

    _, model_dir = llama_job
    _serve(aws, model_dir, lambda_context)
    publish_model(aws.registry(), aws.storage(), "iris", 1, iris_model.onnx, promote=True)

    # WHEN the classifier is asked for a completion and a chat
    for path, extra in (
        ("/v1/completions", {"prompt": "hi"}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ):
        status, body = _call("POST", path, {"model": "iris", **extra}, lambda_context)

        # THEN each is a 400 in OpenAI's error shape saying what the model is not
        assert status == 400, body
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert "not a text-generation model" in body["error"]["message"]
    ok, _ = _call("POST", "/v1/completions", {"model": MODEL, "prompt": "hi"}, lambda_context)
    assert ok == 200
