"""The SageMaker training contract: where things are, and which hosts and GPUs run the job.

Every default path sits under /opt/ml; MAAS_OPT_ML relocates that base (local runs), and the
SM_* variables SageMaker sets win over both.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from maas_training.errors import TrainingError

DEFAULT_BASE = "/opt/ml"


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value) if value else default


@dataclass(frozen=True)
class Paths:
    base: Path
    model_dir: Path
    train_channel: Path
    base_channel: Path  # "base": the pretrained encoder a finetune recipe starts from
    input_config_dir: Path
    output_dir: Path
    output_data_dir: Path
    checkpoint_dir: Path

    @property
    def hyperparameters_file(self) -> Path:
        return self.input_config_dir / "hyperparameters.json"

    @property
    def failure_file(self) -> Path:
        return self.output_dir / "failure"

    @classmethod
    def from_env(cls) -> Paths:
        base = Path(os.environ.get("MAAS_OPT_ML") or DEFAULT_BASE)
        output_dir = _env_path("SM_OUTPUT_DIR", base / "output")
        return cls(
            base=base,
            model_dir=_env_path("SM_MODEL_DIR", base / "model"),
            train_channel=_env_path("SM_CHANNEL_TRAIN", base / "input" / "data" / "train"),
            base_channel=_env_path("SM_CHANNEL_BASE", base / "input" / "data" / "base"),
            input_config_dir=_env_path("SM_INPUT_CONFIG_DIR", base / "input" / "config"),
            output_dir=output_dir,
            output_data_dir=_env_path("SM_OUTPUT_DATA_DIR", output_dir / "data"),
            checkpoint_dir=_env_path("MAAS_CHECKPOINT_DIR", base / "checkpoints"),
        )


@dataclass(frozen=True)
class Cluster:
    hosts: list[str]
    current_host: str
    num_gpus: int

    @property
    def node_rank(self) -> int:
        return self.hosts.index(self.current_host) if self.current_host in self.hosts else 0

    @classmethod
    def from_env(cls) -> Cluster:
        raw_hosts = os.environ.get("SM_HOSTS")
        hosts: list[str] = []
        if raw_hosts:
            try:
                parsed = json.loads(raw_hosts)
            except json.JSONDecodeError:
                parsed = [h.strip() for h in raw_hosts.split(",") if h.strip()]
            hosts = [str(h) for h in parsed] if isinstance(parsed, list) else [str(parsed)]
        current = os.environ.get("SM_CURRENT_HOST") or (hosts[0] if hosts else "algo-1")
        if not hosts:
            hosts = [current]
        # SageMaker always sets SM_NUM_GPUS; unset (a plain local run) means one process,
        # which still uses cuda:0 when there is a GPU.
        raw_gpus = (os.environ.get("SM_NUM_GPUS") or "0").strip()
        try:
            num_gpus = int(raw_gpus)
        except ValueError:
            raise TrainingError(f"SM_NUM_GPUS must be an integer, got {raw_gpus!r}") from None
        return cls(hosts=hosts, current_host=current, num_gpus=max(0, num_gpus))
