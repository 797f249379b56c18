"""The training job: SM contract in, model dir out (maas/core/contract.py lists the files)."""

from __future__ import annotations

import os
import socket
import sys
import traceback
from pathlib import Path
from typing import Any

from maas_training import log
from maas_training.config import Cluster, Paths
from maas_training.errors import TrainingError

MAX_FAILURE_CHARS = 1000  # SageMaker's FailureReason holds 1024
MASTER_PORT = 29500


def write_failure(paths: Paths, reason: str) -> None:
    reason = " ".join(reason.split())[:MAX_FAILURE_CHARS] or "training failed"
    try:
        paths.output_dir.mkdir(parents=True, exist_ok=True)
        tmp = paths.failure_file.with_name(".failure.tmp")
        tmp.write_text(reason + "\n", encoding="utf-8")
        os.replace(tmp, paths.failure_file)
    except OSError as e:
        print(f"[maas] could not write {paths.failure_file}: {e}", file=sys.stderr, flush=True)


# --- distributed launch -------------------------------------------------------------------


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ or "WORLD_SIZE" in os.environ


def needs_torchrun(cluster: Cluster) -> bool:
    return not under_torchrun() and (len(cluster.hosts) > 1 or cluster.num_gpus > 1)


def torchrun_command(cluster: Cluster, script: Path) -> list[str]:
    nproc = max(1, cluster.num_gpus)
    nnodes = len(cluster.hosts)
    master = cluster.hosts[0] if nnodes > 1 else "127.0.0.1"
    port = os.environ.get("MAAS_MASTER_PORT", str(MASTER_PORT))
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={nnodes}",
        f"--node_rank={cluster.node_rank}",
        f"--nproc_per_node={nproc}",
        f"--master_addr={master}",
        f"--master_port={port}",
        str(script),
    ]


def relaunch(cluster: Cluster, script: Path, paths: Paths) -> int:
    import subprocess

    cmd = torchrun_command(cluster, script)
    log.info(f"launching data-parallel training: {' '.join(cmd[1:])}")
    rc = subprocess.call(cmd, env=os.environ.copy())
    if rc != 0 and not paths.failure_file.exists():
        write_failure(paths, f"distributed training failed (torchrun exit code {rc})")
    return 0 if rc == 0 else 1


# --- the job ------------------------------------------------------------------------------


def run(paths: Paths, hp: Any) -> dict[str, Any]:
    """The recipe of hp's (task, recipe), through the shared steps; metrics (rank 0)."""
    from maas_training import recipes, steps

    return steps.run(paths, hp, recipes.get(recipes.task_key(hp.task), hp.recipe))


def _start(paths: Paths, script: Path | None) -> int:
    from maas_training import recipes
    from maas_training.hyperparameters import load_hyperparameters
    from maas_training.versions import check_environment

    log.info(f"training job on {socket.gethostname()}; model dir {paths.model_dir}")
    hp = load_hyperparameters(paths)
    check_environment()
    cluster = Cluster.from_env()
    # A pretrained import exports a model; there is nothing to train in parallel.
    trains = recipes.get(recipes.task_key(hp.task), hp.recipe).trains
    if script is not None and trains and needs_torchrun(cluster):
        return relaunch(cluster, script, paths)
    run(paths, hp)
    return 0


def main(script: Path | None = None) -> int:
    paths = Paths.from_env()
    try:
        return _start(paths, script)
    except TrainingError as e:
        reason = str(e)
        traceback.print_exc(file=sys.stderr)
    except MemoryError:
        reason = "out of memory while training; use a larger instance_type or a smaller dataset"
        traceback.print_exc(file=sys.stderr)
    except Exception as e:
        reason = f"internal error in the training job: {type(e).__name__}: {e}"
        traceback.print_exc(file=sys.stderr)
    sys.stderr.flush()
    write_failure(paths, reason)
    print(f"[maas] FAILED: {reason}", file=sys.stderr, flush=True)
    return 1
