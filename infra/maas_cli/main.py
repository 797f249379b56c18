"""`maas`: the operator's command line, against the local stack or a deployed one alike.

Every command but `maas local up` and `maas demo` talks to a stack only through its AWS APIs
and its HTTP API (found by `maas_cli.connect`); those two start the local emulator.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from maas_cli.connect import StackNotFound, connect
from maas_cli.runs import last_job, upload, wait_for

# --- the local emulator (maas_local): imported only by these two commands -------------------


def cmd_local_up(args: argparse.Namespace) -> int:
    from maas_local.foreground import run

    return run(
        args.aws_port, args.api_port, Path(args.workdir), verbose=args.verbose, reset=args.reset
    )


def cmd_local_status(args: argparse.Namespace) -> int:
    from maas_local.status import print_status

    return print_status(Path(args.workdir))


def cmd_local_logs(args: argparse.Namespace) -> int:
    from maas_local.status import print_logs

    return print_logs(Path(args.workdir), follow=args.follow)


def cmd_demo(args: argparse.Namespace) -> int:
    from maas_local.demo import run_demo

    return run_demo(timeout=args.timeout)


# --- upload / wait --------------------------------------------------------------------------


def cmd_upload(args: argparse.Namespace) -> int:
    stack = connect()
    job = json.loads(Path(args.job).read_text()) if args.job else None
    name = upload(stack, Path(args.file), args.model, label=args.label, run=args.run, job=job)
    print(f"uploaded {args.file} -> model {args.model!r}; training job {name}")
    print(f"follow it with: maas wait {args.model}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from maas_cli.predictions import download, submit, wait_summary

    stack = connect()
    started = time.time()
    key = submit(stack, Path(args.file), args.model, args.version)
    print(f"uploaded {args.file} to score with {args.model!r}; waiting for {key}")
    try:
        summary = wait_summary(stack, key, args.timeout, started)
    except TimeoutError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if summary.get("error"):
        print(f"error: {summary['error']}", file=sys.stderr)
        return 1
    print(
        f"scored {summary['scored']} of {summary['rows']} rows with v{summary['version']} "
        f"in {summary['chunks']} chunk(s), {summary['seconds']:.1f} s; "
        f"{summary['errors']} row(s) in {summary['errors_file']}"
    )
    print(f"output: {summary['output']}")
    if args.out:
        download(stack, summary["output"], Path(args.out))
        print(f"wrote {args.out}")
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    stack = connect()
    try:
        job = args.job or last_job(stack, args.model)
        record = wait_for(stack, args.model, job=job, timeout=args.timeout)
    except TimeoutError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(_version_line(record, record.get("prod")))
    if record["status"] != "READY":
        print(f"reason: {record['reason']}", file=sys.stderr)
        return 1
    return 0


# --- registry views and changes ---------------------------------------------------------


def _version_line(v: dict[str, Any], prod: int | None = None, canary_weight: float = 0) -> str:
    """One version: an admin API VersionInfo, or a registry record (`maas wait`)."""
    metrics = v.get("metrics")
    role = v.get("role")
    recipe = v.get("recipe")
    if metrics is None:
        s = v.get("summary", {})
        metrics = {**(s.get("served_quality") or {})}
        metrics.update({k: s.get(k) for k in ("size_bytes", "fp32_size_bytes", "plot")})
        recipe = s.get("recipe")
        role = "prod" if v["version"] == prod else None
    acc = metrics.get("accuracy")
    size = metrics.get("size_bytes")
    fp32 = metrics.get("fp32_size_bytes")
    label = {"prod": "prod", "canary": f"canary {canary_weight:.0%}"}.get(role or "", "")
    parts = [f"v{v['version']:<3}", f"{v['status']:<10}", f"{label:<11}"]
    if recipe:
        parts.append(f"recipe={recipe}")
    if acc is not None:
        parts.append(f"accuracy={acc:.4f}")
    if metrics.get("r2") is not None:
        parts.append(f"r2={metrics['r2']:.4f}")
    if metrics.get("cosine_mean") is not None:
        parts.append(f"cosine={metrics['cosine_mean']:.4f}")
    if size and fp32:
        parts.append(f"size={fp32 / 1024:.0f}KiB->{size / 1024:.0f}KiB")
    parts.append(v.get("created_at", ""))
    if metrics.get("plot"):
        parts.append(f"plot={metrics['plot']}")
    if v["status"] in ("FAILED", "REJECTED") and v.get("reason"):
        parts.append(f"reason: {v['reason']}")
    return "  ".join(parts)


def _admin_call(fn: Any, *args: Any) -> dict[str, Any] | None:
    """Run one admin operation; print its error and return None when it is refused."""
    from maas_cli.admin_client import AdminError

    try:
        return dict(fn(*args))
    except AdminError as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def _alias_line(model: str, alias: dict[str, Any]) -> str:
    line = f"{model}: prod -> v{alias['version']}"
    if alias.get("canary_version") is not None:
        line += f", canary v{alias['canary_version']} at {alias['canary_weight']:.0%}"
    return line


def cmd_models(args: argparse.Namespace) -> int:
    from maas_cli.admin_client import admin_for

    doc = _admin_call(admin_for(connect()).models)
    if doc is None:
        return 1
    if not doc["models"]:
        print("no models yet: upload a dataset with `maas upload FILE --model NAME`")
    for m in doc["models"]:
        latest = f"v{m['latest']} {m['latest_status']}" if m["latest"] else "-"
        canary = (
            f"  canary=v{m['canary_version']}@{m['canary_weight']:.0%}"
            if m["canary_version"] is not None
            else ""
        )
        print(
            f"{m['name']:<24} prod=v{m['prod'] or '-'}{canary}  versions={m['versions']}  "
            f"latest={latest}"
        )
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    from maas_cli.admin_client import admin_for

    doc = _admin_call(admin_for(connect()).versions, args.model)
    if doc is None:
        return 1
    for v in doc["versions"]:
        print(_version_line(v, canary_weight=doc["canary_weight"]))
        for line in model_candidate_lines(v.get("metrics") or {}):
            print(line)
        if args.candidates:
            for line in candidate_lines(v.get("metrics", {}).get("candidates") or []):
                print(f"      {line}")
    return 0


def candidate_lines(candidates: list[dict[str, Any]]) -> list[str]:
    """The optimizer's candidates: quality against the unpruned fp32 model, latency, size."""
    out = []
    for c in candidates:
        quality = " ".join(f"{k}={v:.4f}" for k, v in (c.get("quality") or {}).items())
        mark = "<- served" if c.get("served") else ("" if c.get("passed_gate") else "failed gate")
        if c.get("error"):
            mark = f"error: {str(c['error'])[:60]}"
        out.append(
            f"{c['name']:<44} {c.get('size_bytes', 0) / 2**20:>8.2f} MiB  {quality:<44} "
            f"batch1 {c.get('batch1_p50_ms', 0):.3f} ms  batchN {c.get('batchN_p50_ms', 0):.3f} ms"
            f"  {mark}"
        )
    return out


def model_candidate_lines(metrics: dict[str, Any]) -> list[str]:
    """The model candidates the training job compared (tables), one line each."""
    lines = []
    candidates = metrics.get("model_candidates") or []
    if candidates:
        lines.append(f"      model candidates ({metrics.get('selection') or 'validation split'}):")
    for c in candidates:
        score = next((f"{k}={c[k]:.4f}" for k in ("val_accuracy", "val_r2") if k in c), "")
        parts = [f"        {c.get('candidate', '?'):<34}", f"val_loss={c['val_loss']:.4f}", score]
        if c.get("size_bytes") is not None:
            parts.append(f"size={c['size_bytes'] / 1024:.1f}KiB")
        if c.get("latency_ms_batch1") is not None:
            parts.append(f"batch1={c['latency_ms_batch1']:.3f}ms")
        lines.append("  ".join(p for p in parts if p))
    return lines


def cmd_promote(args: argparse.Namespace) -> int:
    from maas_cli.admin_client import admin_for

    alias = _admin_call(admin_for(connect()).promote, args.model, args.version, args.reason)
    if alias is None:
        return 1
    print(_alias_line(args.model, alias))
    return 0


def cmd_canary(args: argparse.Namespace) -> int:
    from maas_cli.admin_client import admin_for

    if args.weight > 0 and args.version is None:
        print("error: a canary weight above 0 needs a VERSION", file=sys.stderr)
        return 1
    alias = _admin_call(
        admin_for(connect()).canary, args.model, args.version, args.weight, args.reason
    )
    if alias is None:
        return 1
    print(_alias_line(args.model, alias))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from maas_cli.admin_client import admin_for

    alias = _admin_call(admin_for(connect()).rollback, args.model, args.reason)
    if alias is None:
        return 1
    print(_alias_line(args.model, alias))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from maas_cli.admin_client import admin_for

    doc = _admin_call(admin_for(connect()).audit, args.model)
    if doc is None:
        return 1
    for e in doc["entries"]:
        print(f"{e['at']}  {e['action']:<18} {e['actor']}  {e['detail']}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from maas_cli.generate import generate

    return generate(connect(), args.model, args.prompt, args, sys.stdout)


def cmd_chat(args: argparse.Namespace) -> int:
    from maas_cli.generate import chat

    return chat(connect(), args.model, args, input, sys.stdout)


def _generation_commands(sub: Any) -> None:
    """`maas generate` and `maas chat` (text-generation models, over /v1)."""
    g = sub.add_parser("generate", help="complete a prompt with a text-generation model")
    g.add_argument("model")
    g.add_argument("prompt")
    ch = sub.add_parser("chat", help="chat with a text-generation model (empty line ends)")
    ch.add_argument("model")
    ch.add_argument("--system", help="a system message first")
    for p in (g, ch):
        p.add_argument("--max-tokens", type=int, default=64)
        p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
        p.add_argument("--seed", type=int)
    g.set_defaults(func=cmd_generate)
    ch.set_defaults(func=cmd_chat)


def _weight(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"weight must be within [0, 1] (0.1 = 10 %), not {text}")
    return value


def cmd_push_training_code(args: argparse.Namespace) -> int:
    import tempfile

    from maas.core.storage import parse_s3_uri

    from maas_cli.training_code import pack_training_code

    stack = connect()
    uri = stack.outputs.get("TrainingCodeS3Uri")
    if not uri:
        print("error: the stack has no TrainingCodeS3Uri output", file=sys.stderr)
        return 1
    bucket, key = parse_s3_uri(uri)
    with tempfile.TemporaryDirectory() as tmp:
        tarball = pack_training_code(Path(tmp) / "training.tar.gz")
        stack.client("s3").upload_file(str(tarball), bucket, key)
    print(f"training code -> {uri}")
    return 0


def _local_commands(sub: Any) -> None:
    """`maas local up|status|logs`: the emulator's commands (maas_local, imported on use)."""
    local = sub.add_parser("local", help="the embedded local stack")
    local_sub = local.add_subparsers(dest="local_command", required=True)
    up = local_sub.add_parser("up", help="start the local stack in the foreground")
    up.add_argument("--api-port", type=int, default=8080)
    up.add_argument("--aws-port", type=int, default=4566)
    up.add_argument("--workdir", default=".maas/local")
    up.add_argument("--verbose", action="store_true", help="the stack's own logs on the terminal")
    up.add_argument(
        "--reset", action="store_true", help="start empty: forget what the work dir holds"
    )
    up.set_defaults(func=cmd_local_up)
    st = local_sub.add_parser("status", help="what the local stack holds, and whether it runs")
    st.add_argument("--workdir", default=".maas/local")
    st.set_defaults(func=cmd_local_status)
    lg = local_sub.add_parser("logs", help="the functions' logs and metrics, and the stack's")
    lg.add_argument("--workdir", default=".maas/local")
    lg.add_argument("--follow", "-f", action="store_true", help="keep printing new lines")
    lg.set_defaults(func=cmd_local_logs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="maas", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    _local_commands(sub)
    _generation_commands(sub)

    u = sub.add_parser("upload", help="upload a dataset (starts a training run)")
    u.add_argument("file")
    u.add_argument("--model", required=True)
    u.add_argument("--label", help="label column (default: label)")
    u.add_argument("--run", help="upload as a run folder datasets/<model>/<run>/ with a job.json")
    u.add_argument("--job", help="a job.json file with the run's settings (implies a run folder)")
    u.set_defaults(func=cmd_upload)

    bp = sub.add_parser("predict", help="score a CSV/JSONL file with a model (batch predictions)")
    bp.add_argument("file")
    bp.add_argument("--model", required=True)
    bp.add_argument("--version", type=int, help="a version by number (default: prod)")
    bp.add_argument("--out", help="download the scored file here")
    bp.add_argument("--timeout", type=float, default=900)
    bp.set_defaults(func=cmd_predict)

    sub.add_parser("models", help="list models").set_defaults(func=cmd_models)
    v = sub.add_parser("versions", help="list a model's versions")
    v.add_argument("model")
    v.add_argument(
        "--candidates",
        action="store_true",
        help="also list what each optimizer candidate measured (compressed ones included)",
    )
    v.set_defaults(func=cmd_versions)

    w = sub.add_parser("wait", help="wait until the latest run is promoted or failed")
    w.add_argument("model")
    w.add_argument("--timeout", type=float, default=900)
    w.add_argument("--job", help="the training job to follow (default: your last upload)")
    w.set_defaults(func=cmd_wait)

    pr = sub.add_parser("promote", help="point prod at a READY version")
    pr.add_argument("model")
    pr.add_argument("version", type=int)
    pr.add_argument("--reason", default="manual promotion")
    pr.set_defaults(func=cmd_promote)

    c = sub.add_parser(
        "canary", help="send a fraction of unversioned requests to another READY version"
    )
    c.add_argument("model")
    c.add_argument("version", type=int, nargs="?", help="the canary (omit with --weight 0)")
    c.add_argument(
        "--weight", type=_weight, required=True, help="fraction in [0, 1]; 0 removes the canary"
    )
    c.add_argument("--reason", default="manual canary")
    c.set_defaults(func=cmd_canary)

    rb = sub.add_parser(
        "rollback",
        help="undo the latest deployment: remove an active canary, else point prod back at "
        "the previous READY version",
    )
    rb.add_argument("model")
    rb.add_argument("--reason", default="manual rollback")
    rb.set_defaults(func=cmd_rollback)

    a = sub.add_parser("audit", help="who changed a model's aliases, when and why")
    a.add_argument("model")
    a.set_defaults(func=cmd_audit)

    sub.add_parser(
        "push-training-code", help="upload training/ to the stack's TrainingCodeS3Uri"
    ).set_defaults(func=cmd_push_training_code)

    d = sub.add_parser("demo", help="digits end to end on the local stack")
    d.add_argument("--timeout", type=float, default=600)
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        print(f"error: {_explained(e)}", file=sys.stderr)
        return 2


def _explained(e: Exception) -> str:
    """One line for a person: what went wrong and what to do, never a traceback."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

    if isinstance(e, NoRegionError | NoCredentialsError):
        return (
            f"{e}: start a local stack with `maas local up`, or configure AWS "
            "(AWS_REGION and credentials) for a deployed stack"
        )
    if isinstance(e, ClientError | BotoCoreError):
        return f"{e} (is the stack running, and are your AWS credentials for it?)"
    if type(e).__name__ == "GenerateError":
        return str(e)
    if isinstance(e, StackNotFound | FileNotFoundError | PermissionError | ValueError):
        return str(e)
    if type(e).__name__ in ("StackRunning", "PortInUse"):  # the local stack's own refusals
        return str(e)
    return f"{type(e).__name__}: {e}"


if __name__ == "__main__":
    sys.exit(main())
