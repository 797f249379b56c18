"""results.json -> results.md (the tables) and the PNG plots the README shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MIB = 1024 * 1024
PLOTS = ("coldstart.png", "warm.png", "throughput.png", "cost.png")


def _ms(s: dict[str, float]) -> str:
    """A median with its spread: 12.3 ms (11.9-13.0)."""
    return f"{s['median']:.3g} ({s['min']:.3g}-{s['max']:.3g})"


README_BEGIN = "<!-- bench:begin (make bench) -->"
README_END = "<!-- bench:end -->"


def write(r: dict[str, Any], out: Path, readme: Path | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(markdown(r))
    plots(r, out)
    if readme is not None and readme.is_file():
        text = readme.read_text()
        if README_BEGIN in text and README_END in text:
            head, rest = text.split(README_BEGIN, 1)
            _, tail = rest.split(README_END, 1)
            readme.write_text(f"{head}{README_BEGIN}\n{readme_block(r)}{README_END}{tail}")


def readme_block(r: dict[str, Any]) -> str:
    """What the README's Performance section shows: the targets and the plots, dated."""
    m = r["meta"]
    mach = m["machine"]
    lines = [
        f"Measured {m['date'][:10]} on {mach['vcpus']} vCPU ({mach['cpu']}, no GPU), "
        f"onnxruntime {mach['versions'].get('onnxruntime')}, torch "
        f"{mach['versions'].get('torch')}; every figure is a median over repeated runs, every "
        "ratio from the same run. All figures, with their spread: "
        "[bench/results.md](bench/results.md).",
        "",
        "| target | measured | limit | |",
        "|---|---|---|---|",
    ]
    for t in r["targets"]:
        lines.append(
            f"| {t['target']} | {t['measured']:.3g} | {t['limit']:g} | "
            f"{'met' if t['met'] else '**not met**'} |"
        )
    lines += [
        "",
        "![cold start](bench/coldstart.png)",
        "![warm latency](bench/warm.png)",
        "![throughput](bench/throughput.png)",
        "![cost](bench/cost.png)",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- markdown


def markdown(r: dict[str, Any]) -> str:
    m = r["meta"]
    mach = m["machine"]
    v = mach["versions"]
    lines = [
        "# Benchmark results",
        "",
        f"Measured {m['date']} by `{m['command']}` in {m.get('duration_s', 0):.0f} s on "
        f"{mach['vcpus']} vCPU ({mach['cpu']}), {mach['memory_gib']} GiB, no GPU; Python "
        f"{v.get('python')}, onnxruntime {v.get('onnxruntime')}, torch {v.get('torch')}, "
        f"numpy {v.get('numpy')}. Load average at start {m['loadavg_start']}, at end "
        f"{m.get('loadavg_end')}: other work shared the machine (ratios are what holds).",
        "",
        "Figures: median over repeated runs, (min-max) over those runs. Every ratio compares "
        "figures from this run on this machine.",
        "",
        "## Targets",
        "",
        "| target | measured | limit | |",
        "|---|---|---|---|",
    ]
    for t in r["targets"]:
        lines.append(
            f"| {t['target']} | {t['measured']:.3g} | {t['limit']:g} | "
            f"{'met' if t['met'] else '**not met**'} |"
        )
    lines += _cold(r) + _warm(r) + _throughput(r) + _quantization(r) + _package(r)
    lines += _cost(r) + _pipeline(r) + _session_options(r) + _probe(r) + _tables(r)
    return "\n".join(lines) + "\n"


def _tables(r: dict[str, Any]) -> list[str]:
    t = r.get("tables")
    if not t:
        return []
    lines = [
        "",
        "## Tables (bench/tables.py)",
        "",
        f"{t['table']} seattle-weather, one OIP input per column (strings, numbers, nulls), "
        "the column transforms run in the handler; bare: session.run on the encoded features.",
        "",
        "| batch | handler p50 (ms) | bare session.run p50 (ms) | overhead (ms) |",
        "|---|---|---|---|",
    ]
    for batch, o in t["overhead"].items():
        lines.append(
            f"| {batch.removeprefix('batch')} | {o['handler_p50_ms']:.3f} | "
            f"{o['bare_p50_ms']:.3f} | {o['overhead_ms']:.3f} |"
        )
    tv = t["trees_vs_mlp"]
    lines += [
        "",
        "| model | size (KiB) | batch 1 p50 (ms) | batch 100 p50 (ms) | test accuracy |",
        "|---|---|---|---|---|",
    ]
    for m in ("mlp", "trees"):
        lines.append(
            f"| {m} | {tv['size_bytes'][m] / 1024:.1f} | {tv['latency_ms']['batch1'][m]:.3f} | "
            f"{tv['latency_ms']['batch100'][m]:.3f} | {tv['test_accuracy'][m]:.4f} |"
        )
    return lines


def _cold(r: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Cold start",
        "",
        "A fresh process per sample, the three variants interleaved. handler: imports "
        "functions/inference/app.py and answers its first OIP request, reading the alias and "
        "the version from the local stack's DynamoDB and the model from its S3. torch: the "
        "SAM-PyTorch-template-style function (bench/torch_app.py), same weights, fp32 eager. "
        "floor: import onnxruntime, create the session from the served file, run once.",
        "",
        "| model | variant | spawn -> answer (ms) | import (ms) | first request (ms) |",
        "|---|---|---|---|---|",
    ]
    for model, c in r["cold_start"].items():
        for variant in ("handler", "torch", "floor"):
            x = c[variant]
            lines.append(
                f"| {model} | {variant} | {_ms(x['wall_ms'])} | {_ms(x['import_ms'])} | "
                f"{_ms(x['first_request_ms'])} |"
            )
    lines += ["", "| model | handler / torch | handler / floor | repeats |", "|---|---|---|---|"]
    for model, c in r["cold_start"].items():
        q = c["ratios"]
        lines.append(
            f"| {model} | {q['handler_over_torch']:.3f} "
            f"(per round {_ms(q['handler_over_torch_per_round'])}) | "
            f"{q['handler_over_floor']:.2f} (per round {_ms(q['handler_over_floor_per_round'])})"
            f" | {c['repeats']} |"
        )
    lines += ["", "![cold start](coldstart.png)"]
    return lines


def _warm(r: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Warm latency per request (in process, API Gateway events)",
        "",
        "handler: the inference handler with the served version; torch: the torch comparator "
        "answering the same event; bare: `session.run` on the handler's session with the same "
        "inputs already as tensors. One ONNX Runtime / torch thread (a 1769 MB function's "
        "vCPU). Served MiniLM is the optimizer's choice (see the quantization table).",
        "",
        "| case | handler p50 | handler p99 | torch p50 | bare p50 | served / torch | "
        "handler overhead |",
        "|---|---|---|---|---|---|---|",
    ]
    for case, c in r["warm"]["cases"].items():
        q = r["warm"]["ratios"][case]
        tokens = f" ({c['tokens']} tokens)" if "tokens" in c else ""
        lines.append(
            f"| {case}{tokens} | {_ms(c['handler']['p50_ms'])} | {_ms(c['handler']['p99_ms'])} "
            f"| {_ms(c['torch']['p50_ms'])} | {_ms(c['bare']['p50_ms'])} | "
            f"{q['served_over_torch_p50']:.2f} | {q['handler_overhead_ms']:.3f} ms "
            f"({q['handler_overhead_pct']:.1f} %) |"
        )
    lines += ["", "Times in ms. ![warm latency](warm.png)"]
    return lines


def _throughput(r: dict[str, Any]) -> list[str]:
    t = r["throughput"]
    lines = [
        "",
        "## Throughput through the local HTTP API",
        "",
        f"Closed-loop clients in their own process (bench/load.py), keep-alive connections, "
        f"against the local stack's API server and its {t['containers']} inference "
        "containers (threads of one process sharing this machine's cores with the clients).",
        "",
        "| request | clients | requests/s | p50 (ms) | p99 (ms) | errors |",
        "|---|---|---|---|---|---|",
    ]
    for case in ("digits_b1", "minilm_short_b1"):
        for row in t[case]:
            lines.append(
                f"| {case} | {row['concurrency']} | {row['rps']:.0f} | {row['p50_ms']:.2f} | "
                f"{row['p99_ms']:.2f} | {row['errors']} |"
            )
    lines += ["", "![throughput](throughput.png)"]
    return lines


def _quantization(r: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Quantization, per model family",
        "",
        "What the optimizer built, gated and timed side by side (its own run, one thread), "
        "from each served version's manifest. Quality: accuracy on the held-out split "
        "(classifiers) or mean cosine to fp32 (embeddings).",
        "",
        "| family | recipe | size | quality | batch 1 p50 (ms) | batch N p50 (ms) | gate | "
        "served |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in r["quantization"]:
        size = f"{row['size_bytes'] / MIB:.2f} MiB" if row["size_bytes"] else "-"
        quality = f"{row['metric']} {row['quality']:.4f}" if row["quality"] is not None else "-"
        b1 = f"{row['batch1_p50_ms']:.3f}" if row["batch1_p50_ms"] is not None else "-"
        bn = (
            f"{row['batchN_p50_ms']:.3f} (N={int(row['batchN_rows'])})"
            if row["batchN_p50_ms"] is not None
            else "-"
        )
        gate = "error" if row["error"] else ("pass" if row["passed_gate"] else "fail")
        lines.append(
            f"| {row['family']} | {row['recipe']} | {size} | {quality} | {b1} | {bn} | {gate} | "
            f"{'**yes**' if row['chosen'] else ''} |"
        )
    return lines


def _package(r: dict[str, Any]) -> list[str]:
    p = r.get("package", {})
    lines = ["", "## Package size (`sam build`, x86_64, unzipped)", ""]
    if "functions" not in p:
        return [*lines, f"Not measured in this run: {p.get('skipped')}."]
    lines += ["| function | with its layers | of Lambda's 250 MB | parts |", "|---|---|---|---|"]
    for name, f in p["functions"].items():
        parts = ", ".join(f"{k} {b / MIB:.1f}" for k, b in f["parts"].items())
        lines.append(
            f"| {name} | {f['total_bytes'] / MIB:.1f} MiB | "
            f"{f['total_bytes'] / p['limit_bytes'] * 100:.0f} % | {parts} |"
        )
    lines += ["", "| layer | largest entries (MiB) | bytecode |", "|---|---|---|"]
    for name, layer in p["layers"].items():
        top = ", ".join(f"{e['name']} {e['bytes'] / MIB:.1f}" for e in layer["top"][:6])
        lines.append(f"| {name} | {top} | {layer['pyc_bytes'] / MIB:.2f} MiB |")
    b = p.get("bytecode")
    if b:
        lines += [
            "",
            "`import app` (the inference handler: numpy, onnxruntime, maas) from the build "
            "output under python3.12 -S, as Lambda lays it out: "
            f"{b['with_pyc']['median_ms']:.0f} ms with the layers' bytecode, "
            f"{b['without_pyc']['median_ms']:.0f} ms without (compiled on every cold start).",
        ]
    return lines


def _cost(r: dict[str, Any]) -> list[str]:
    c = r["cost"]
    lines = [
        "",
        "## Cost",
        "",
        f"Prices: {c['region']}, {c['prices_as_of']} (bench/prices.py). {c['assumptions']}.",
        "",
        "| model | duration (ms) | per million, x86_64 | per million, arm64 | endpoint | "
        "endpoint / month | break-even, x86_64 | break-even, arm64 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in c["models"]:
        x, a = m["per_million"]["x86_64"], m["per_million"]["arm64"]
        lines.append(
            f"| {m['model']} | {m['duration_ms']:.2f} (billed {x['billed_ms']}) | "
            f"${x['total']:.2f} | ${a['total']:.2f} | {m['sagemaker_instance']} | "
            f"${m['sagemaker_per_month']:.0f} | {m['break_even_rps']['x86_64']:.1f} req/s "
            f"({m['break_even_requests_per_month']['x86_64'] / 1e6:.0f} M/month) | "
            f"{m['break_even_rps']['arm64']:.1f} req/s |"
        )
    lines += [
        "",
        "Per million requests: Lambda compute + Lambda requests ($0.20) + HTTP API ($1.00). "
        "Below the break-even rate Lambda costs less than the always-on endpoint.",
        "",
        "![cost](cost.png)",
    ]
    return lines


def _pipeline(r: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Pipeline latency: upload -> new version serving (local stack)",
        "",
        "From the first byte uploaded to the first response from the new version over the "
        "HTTP API (ingest, training job, optimizer with its recipe search, promotion, the "
        "inference function's alias refresh).",
        "",
        "| model | seconds | runs |",
        "|---|---|---|",
    ]
    for model, p in r["pipeline"].items():
        s = p["upload_to_serving_s"]
        lines.append(f"| {model} | {_ms(s)} | {s['n']} |")
    return lines


def _session_options(r: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## ONNX Runtime session options",
        "",
        "Graph optimisation level x intra-op threads x spinning, on the served files "
        "(bench/session_options.py; ALL-noSkipLN: ALL without ONNX Runtime's "
        "SkipLayerNormalization fusion). Batch 1 of MiniLM is the 128-token text. The serving "
        "defaults (maas/serving/ortsession.py) follow the best for one thread.",
        "",
        "| model | level | threads | spinning | create (ms) | batch 1 p50 (ms) | "
        "batch 32 p50 (ms) | CPU per batch-1 run (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model, s in r["session_options"].items():
        best = s["best_1_thread"]
        for row in s["rows"]:
            chosen = row == best
            mark = " **chosen (1 thread)**" if chosen else ""
            lines.append(
                f"| {model} | {row['level']}{mark} | {row['threads']} | {row['spinning']} | "
                f"{row['create_ms']:.1f} | {row['b1_p50_ms']:.3f} | {row['b32_p50_ms']:.3f} | "
                f"{row['b1_cpu_ms']:.3f} |"
            )
    return lines


def _probe(r: dict[str, Any]) -> list[str]:
    p = r["overhead_probe"]
    return [
        "",
        "## Regression check baseline",
        "",
        f"bench.overhead.probe() (digits softmax regression, batch 1, moto): handler "
        f"{p['handler_p50_ms']:.3f} ms vs bare session.run {p['bare_p50_ms']:.3f} ms, "
        f"overhead ratio {p['overhead_ratio']:.2f} over {p['pairs']} interleaved pairs. "
        "tests/integration/test_handler_overhead.py fails above twice this ratio.",
    ]


# --------------------------------------------------------------------------- plots


def plots(r: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Cold start: per model, the three variants with their spread.
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (model, c) in zip(axes, r["cold_start"].items(), strict=False):
        names = ["handler", "floor", "torch"]
        med = [c[n]["wall_ms"]["median"] for n in names]
        lo = [c[n]["wall_ms"]["median"] - c[n]["wall_ms"]["min"] for n in names]
        hi = [c[n]["wall_ms"]["max"] - c[n]["wall_ms"]["median"] for n in names]
        ax.bar(names, med, yerr=[lo, hi], capsize=4, color=["#2b7bba", "#9bbbd6", "#d9822b"])
        ax.set_title(f"{model}: fresh process -> first answer")
        ax.set_ylabel("ms (median, min-max)")
        for i, value in enumerate(med):
            ax.text(i, value, f"{value:.0f}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "coldstart.png", dpi=110)
    plt.close(fig)

    # Warm latency: p50 per case and variant, log scale.
    cases = list(r["warm"]["cases"])
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.27
    for i, (variant, color) in enumerate(
        (("handler", "#2b7bba"), ("bare", "#9bbbd6"), ("torch", "#d9822b"))
    ):
        meds = [r["warm"]["cases"][c][variant]["p50_ms"]["median"] for c in cases]
        p99 = [r["warm"]["cases"][c][variant]["p99_ms"]["median"] for c in cases]
        xs = [j + (i - 1) * width for j in range(len(cases))]
        ax.bar(xs, meds, width, label=f"{variant} p50", color=color)
        ax.scatter(xs, p99, marker="_", s=120, color="black", zorder=3)
    ax.scatter([], [], marker="_", color="black", label="p99")
    ax.set_xticks(range(len(cases)), [c.replace("_", "\n") for c in cases], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ms per request (log)")
    ax.set_title("Warm latency per request")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "warm.png", dpi=110)
    plt.close(fig)

    # Throughput vs concurrency.
    fig, ax = plt.subplots(figsize=(6, 4))
    for case in ("digits_b1", "minilm_short_b1"):
        rows = r["throughput"][case]
        ax.plot([x["concurrency"] for x in rows], [x["rps"] for x in rows], "o-", label=case)
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("requests/s")
    ax.set_title("Local HTTP API throughput")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    plt.close(fig)

    # Cost per month vs request rate: Lambda (linear) against the endpoint (flat).
    fig, ax = plt.subplots(figsize=(7, 4))
    import numpy as np

    for m in r["cost"]["models"]:
        top = m["break_even_rps"]["x86_64"] * 3
        rates = np.linspace(0, top, 50)
        per_request = m["per_million"]["x86_64"]["total"] / 1e6
        monthly = rates * 3600 * 730 * per_request
        ax.plot(rates, monthly, label=f"Lambda x86_64, {m['model']}")
        ax.axhline(
            m["sagemaker_per_month"],
            linestyle="--",
            linewidth=1,
            label=f"{m['sagemaker_instance']} ({m['model']})",
        )
    ax.set_xlabel("requests per second (steady)")
    ax.set_ylabel("USD per month")
    ax.set_title("Serverless vs always-on endpoint")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "cost.png", dpi=110)
    plt.close(fig)
