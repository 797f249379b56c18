"""`make bench`: the whole benchmark suite, one run, writing bench/results.{json,md} and plots.

    python -m bench [--quick] [--skip-package]

Every comparison is a ratio of figures measured in this run on this machine; every figure is a
median over repeated runs with its spread. Scratch files go to bench/out/ (gitignored).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import coldstart, cost, grpc, models, overhead, package, quantization, report, tables, warm
from . import session_options as so
from . import throughput as tp
from .common import BENCH, OUT, REPO, infer_event, loadavg, machine, now_iso, write_json


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def handler_env(stack: Any, memory_mb: int = 1769) -> dict[str, str]:
    """The inference function's environment on the local stack, as template.yaml sets it."""
    return {
        "AWS_ENDPOINT_URL": stack.aws_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": stack.cfg.region,
        "AWS_DEFAULT_REGION": stack.cfg.region,
        "REGISTRY_TABLE": stack.outputs["RegistryTableName"],
        "ARTIFACT_BUCKET": stack.outputs["ArtifactBucketName"],
        "POWERTOOLS_SERVICE_NAME": "maas-inference",
        "POWERTOOLS_METRICS_NAMESPACE": "ServerlessMaaS",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_mb),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    started = time.perf_counter()
    results: dict[str, Any] = {
        "meta": {
            "date": now_iso(),
            "machine": machine(),
            "quick": quick,
            "loadavg_start": loadavg(),
            "command": "make bench",
        }
    }
    # Bytecode for the repository's own modules, so that a cold child does not compile them
    # (the Lambda layers ship theirs: layers/*/Makefile).
    # Not bench/out/: it holds the sam build (and its cache) whose sizes are measured.
    skip = re.compile(re.escape(str(OUT)))
    for folder in ("layers/shared/maas", "functions/inference", "bench", "training/maas_training"):
        compileall.compile_dir(str(REPO / folder), quiet=1, rx=skip)
    work = OUT / "run"
    work.mkdir(parents=True, exist_ok=True)

    log("starting the local stack")
    stack = models.start_stack(OUT / "stack")
    try:
        # ---------------------------------------------------------- pipelines (and models)
        # One run at a time (side by side on 2 cores they took longer than one after the
        # other), digits last and alone: its upload -> serving is a target.
        pipeline: dict[str, Any] = {}
        from .common import summary

        minilm_folder, minilm_files = models.minilm_files()
        topics_csv = models.topics_csv(work / "topics.csv")
        text_runs = {
            "minilm": lambda: models.submit(
                stack, "minilm", "bench-1", minilm_files, {}, prefix="pretrained",
                probe=models.text_probe(),
            ),
            "topics": lambda: models.submit(
                stack, "topics", "bench-1", [(topics_csv, "sentences.csv")],
                {"task": "text-classification"}, probe=models.text_probe(),
            ),
        }  # fmt: skip
        served_versions: dict[str, tuple[int, str]] = {}
        for name, submit in text_runs.items():
            pending = submit()
            version, seconds = models.wait_serving(stack, pending)
            served_versions[name] = (version, pending.job)
            pipeline[name] = {"upload_to_serving_s": summary([seconds]), "runs_s": [seconds]}
            log(f"{name} v{version}: upload -> serving {seconds:.1f} s")
        digits_runs = []
        csv_path = models.digits_csv(work / "digits.csv")
        for i in range(1 if quick else 2):
            pending = models.submit(
                stack, "digits", f"bench-{i + 1}", [(csv_path, "digits.csv")], {},
                probe=models.digits_probe(),
            )  # fmt: skip
            version, seconds = models.wait_serving(stack, pending)
            digits_runs.append(seconds)
            served_versions["digits"] = (version, pending.job)
            log(f"digits v{version}: upload -> serving {seconds:.1f} s")
        pipeline["digits"] = {"upload_to_serving_s": summary(digits_runs), "runs_s": digits_runs}
        results["pipeline"] = pipeline

        digits = models.fetch_served(stack, "digits", *served_versions["digits"], work / "digits")
        minilm = models.fetch_served(stack, "minilm", *served_versions["minilm"], work / "minilm")
        topics = models.fetch_served(stack, "topics", *served_versions["topics"], work / "topics")
        results["quantization"] = quantization.table(
            {
                "tabular MLP (digits)": digits.manifest,
                "text n-gram classifier (docstring topics)": topics.manifest,
                "BERT encoder (all-MiniLM-L6-v2 embedding)": minilm.manifest,
            }
        )
        digits_train = models.training_model_dir(stack, digits.job, work / "digits")
        digits_torch = models.digits_state_dict(digits_train / "model.onnx", work / "digits-torch")

        # ---------------------------------------------------------- inputs
        _, x_test, _, _ = models.digits_split()
        x_test = x_test.astype(np.float32)
        prose = models.long_text()
        text128 = warm.text_of_tokens(minilm.dir / "tokenizer.json", 128, prose)
        from maas.serving.textprep import load_encoder

        spec = json.loads((minilm.dir / "text.json").read_text())
        encoder = load_encoder(spec, minilm.dir)

        # ---------------------------------------------------------- session options
        log("session options")
        results["session_options"] = {}
        for name, served, f1, f32 in (
            ("digits", digits, {"input": x_test[:1]}, {"input": x_test[:32]}),
            (
                "minilm",
                minilm,
                encoder.encode([text128]),
                encoder.encode([models.SHORT_TEXT] * 32),
            ),
        ):
            budget = {"digits": 6.0, "minilm": 30.0}[name] / (3 if quick else 1)
            rows = so.measure(served.onnx, f1, f32, budget_s=budget)
            results["session_options"][name] = {
                "rows": rows,
                "best_1_thread": so.best(rows, 1),
                "best_2_threads": so.best(rows, 2),
            }

        # ---------------------------------------------------------- cold start
        log("cold start")
        env = handler_env(stack)
        np.save(work / "digits-input.npy", x_test[:1])
        for name, value in encoder.encode([models.SHORT_TEXT]).items():
            np.save(work / f"minilm-{name}.npy", value)
        feeds_minilm = {n: work / f"minilm-{n}.npy" for n in encoder.encode(["x"])}
        results["cold_start"] = {
            "digits": coldstart.measure(
                "digits",
                infer_event("digits", _rows_body(x_test[:1])),
                digits.onnx,
                {"input": work / "digits-input.npy"},
                {"TORCH_MODEL": "digits", "TORCH_MODEL_DIR": str(digits_torch)},
                env,
                repeats=3 if quick else 10,
                workdir=work / "cold",
            ),
            "minilm": coldstart.measure(
                "minilm",
                infer_event("minilm", models.text_probe()),
                minilm.onnx,
                feeds_minilm,
                {"TORCH_MODEL": "minilm", "TORCH_MODEL_DIR": str(minilm_folder)},
                env,
                repeats=3 if quick else 6,
                workdir=work / "cold",
            ),
        }

        # ---------------------------------------------------------- warm, in process
        log("warm latency")
        saved_env = dict(os.environ)
        os.environ.update(env)
        try:
            handler = warm.load_handler()
            blocks = 3 if quick else 4
            budget = 1.0 if quick else 2.5
            cases = warm.digits_cases(
                handler,
                warm.load_torch_app("digits", digits_torch),
                x_test,
                blocks=blocks,
                budget_s=budget,
            )
            cases |= warm.text_cases(
                handler,
                warm.load_torch_app("minilm", minilm_folder),
                {"short": models.SHORT_TEXT, "128tok": text128},
                {"minilm_128tok_b32": budget * 2.5, "minilm_short_b32": budget * 1.5},
                blocks=blocks,
                budget_s=budget,
            )
        finally:
            os.environ.clear()
            os.environ.update(saved_env)
        results["warm"] = {"cases": cases, "ratios": warm.ratios(cases)}

        # ---------------------------------------------------------- throughput (HTTP)
        log("throughput")
        seconds_each = 3 if quick else 5
        results["throughput"] = {
            "digits_b1": tp.measure(
                f"{stack.api_url}/v2/models/digits/infer",
                _rows_body(x_test[:1]),
                [1, 2, 4, 8],
                seconds_each,
                work,
            ),
            "minilm_short_b1": tp.measure(
                f"{stack.api_url}/v2/models/minilm/infer",
                models.text_probe(),
                [1, 4],
                seconds_each,
                work,
            ),
            "containers": stack.cfg.inference_containers,
        }
    finally:
        stack.stop()

    # -------------------------------------------------------------- the gRPC routes
    log("gRPC routes: sizes and handler time against REST, cold start with and without them")
    results["grpc"] = {
        "warm": grpc.warm(100 if quick else 400),
        "cold": grpc.cold(3 if quick else 12),
        "protobuf": grpc.protobuf_size(),
    }

    # -------------------------------------------------------------- regression probe
    log("handler overhead probe (the regression check's measurement)")
    results["overhead_probe"] = overhead.probe()
    log("tables: per-column requests through the handler, trees vs MLP")
    results["tables"] = tables.run(work / "tables", pairs=1000 if quick else 3000)

    # -------------------------------------------------------------- package size
    if args.skip_package:
        results["package"] = {"skipped": "--skip-package"}
    else:
        log("sam build (package size)")
        try:
            build_dir, build_s, python312 = package.build(OUT / "sam")
            results["package"] = package.sizes(build_dir) | {"build_s": build_s}
            results["package"]["bytecode"] = package.bytecode_effect(
                build_dir, python312, OUT / "sam", repeats=3 if quick else 7
            )
        except Exception as e:  # no SAM CLI or python3.12 here: say so, keep the rest
            results["package"] = {"skipped": f"{type(e).__name__}: {e}"}

    # -------------------------------------------------------------- cost
    warm_ratios = results["warm"]["cases"]
    results["cost"] = cost.table(
        {
            "digits": warm_ratios["digits_b1"]["handler"]["p50_ms"]["median"],
            "minilm": warm_ratios["minilm_short_b1"]["handler"]["p50_ms"]["median"],
        }
    )
    results["targets"] = targets(results)
    results["meta"]["loadavg_end"] = loadavg()
    results["meta"]["duration_s"] = time.perf_counter() - started
    return results


def _rows_body(rows: np.ndarray) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "input", "shape": list(rows.shape), "datatype": "FP32",
             "data": rows.reshape(-1).tolist()}
        ]
    }  # fmt: skip


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    cold = r["cold_start"]["digits"]["ratios"]
    w = r["warm"]["ratios"]
    out = [
        _target("Cold start: handler / torch handler (digits)", cold["handler_over_torch"], 0.2),
        _target("Cold start: handler / bare onnxruntime (digits)", cold["handler_over_floor"], 1.5),
        _target(
            "Warm p50, MiniLM 128 tokens, batch 1: served / torch fp32",
            w["minilm_128tok_b1"]["served_over_torch_p50"],
            0.5,
        ),
        _target(
            "Handler overhead over session.run, MiniLM 128 tokens, batch 1 (%)",
            w["minilm_128tok_b1"]["handler_overhead_pct"],
            10.0,
        ),
        _target(
            "Handler overhead over session.run, digits batch 1 (ms)",
            w["digits_b1"]["handler_overhead_ms"],
            1.0,
        ),
    ]
    if "tables" in r:
        out.append(
            _target(
                "Handler overhead over session.run, per-column table (weather) batch 1 (ms)",
                r["tables"]["overhead"]["batch1"]["overhead_ms"],
                1.0,
            )
        )
    pkg = r.get("package", {})
    if "functions" in pkg:
        size = pkg["functions"]["InferenceFunction"]["total_bytes"] / package.MIB
        out.append(_target("Inference function + layers, unzipped (MiB)", size, 150.0))
    digits_pipeline = r["pipeline"]["digits"]["upload_to_serving_s"]["median"]
    out.append(_target("Digits upload -> serving, local stack (s)", digits_pipeline, 60.0))
    return out


def _target(name: str, measured: float, limit: float) -> dict[str, Any]:
    return {"target": name, "measured": measured, "limit": limit, "met": measured <= limit}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    parser.add_argument("--skip-package", action="store_true", help="no sam build")
    parser.add_argument(
        "--out", type=Path, default=BENCH, help="where results.json/.md and the plots go"
    )
    args = parser.parse_args(argv)
    results = run(args)
    write_json(args.out / "results.json", results)
    probe = results["overhead_probe"]
    if not args.quick and args.out == BENCH:
        write_json(
            overhead.BASELINE,
            {
                "overhead_ratio": probe["overhead_ratio"],
                "handler_p50_ms": probe["handler_p50_ms"],
                "bare_p50_ms": probe["bare_p50_ms"],
                "measured_at": results["meta"]["date"],
                "machine": results["meta"]["machine"]["cpu"],
                "what": "bench.overhead.probe(): digits batch 1, handler vs bare session.run",
            },
        )
    report.write(results, args.out, REPO / "README.md" if args.out == BENCH else None)
    for t in results["targets"]:
        mark = "met" if t["met"] else "NOT MET"
        log(f"{t['target']}: {t['measured']:.3g} (limit {t['limit']:g}) {mark}")
    log(f"done in {results['meta']['duration_s']:.0f} s: {args.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
