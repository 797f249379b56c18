"""The files the training job shares with the Lambda side, loaded from where they live.

The training container ships training/ only. ``maas push-training-code`` copies
layers/shared/maas/core/contract.py, serving/textprep.py, serving/tableprep.py and
serving/chattemplate.py into the tarball as maas_training/_shared/ (byte for byte; tests pin the
copies); run from the repository (the local runner, the tests), the job reads them in place.
Either way the job writes the names the optimizer reads and tokenises with exactly the code the
inference function runs.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from maas_training.errors import TrainingError

HERE = Path(__file__).resolve().parent
VENDORED = HERE / "_shared"
IN_REPOSITORY = HERE.parents[1] / "layers" / "shared" / "maas"
# module name -> its path under layers/shared/maas (the tarball flattens them into _shared/).
SHARED = {
    "contract": "core/contract.py",
    "textprep": "serving/textprep.py",
    "tableprep": "serving/tableprep.py",
    "chattemplate": "serving/chattemplate.py",
}


def source_path(name: str) -> Path:
    relative = SHARED[name]
    file_name = relative.rsplit("/", 1)[-1]
    for path in (VENDORED / file_name, IN_REPOSITORY / relative):
        if path.is_file():
            return path
    raise TrainingError(
        f"the shared file {file_name} is missing from the training code: "
        "package training/ with `maas push-training-code`, which adds it"
    )


def load(name: str) -> ModuleType:
    module_name = f"maas_training._shared_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = source_path(name)
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise TrainingError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and TypedDicts look their module up
    spec.loader.exec_module(module)
    return module


contract = load("contract")


def textprep() -> ModuleType:
    """The text encoders (numpy; loaded by the text recipes only)."""
    return load("textprep")


def tableprep() -> ModuleType:
    """The column transforms (numpy; loaded by the tabular recipes only)."""
    return load("tableprep")


def chattemplate() -> ModuleType:
    """Chat templates rendered as serving renders them (jinja2; the finetune recipe's)."""
    return load("chattemplate")
