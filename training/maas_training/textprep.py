"""The text encoders shared with serving: the one file layers/shared/maas/serving/textprep.py.

The training container ships training/ only. `maas push-training-code` copies that file into
the tarball as maas_training/_shared/textprep.py (byte for byte; a test checks it); run from
the repository (the local runner, the tests), the job reads it where it lives. Either way the
training job tokenises with exactly the code the inference function runs.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from maas_training.errors import TrainingError

HERE = Path(__file__).resolve().parent
SHARED_NAME = "textprep.py"
VENDORED = HERE / "_shared" / SHARED_NAME
IN_REPOSITORY = HERE.parents[1] / "layers" / "shared" / "maas" / "serving" / SHARED_NAME
MODULE_NAME = "maas_training._textprep"


def source_path() -> Path:
    for path in (VENDORED, IN_REPOSITORY):
        if path.is_file():
            return path
    raise TrainingError(
        f"the shared text encoders ({SHARED_NAME}) are missing from the training code: "
        "package training/ with `maas push-training-code`, which adds them"
    )


def load() -> ModuleType:
    if MODULE_NAME in sys.modules:
        return sys.modules[MODULE_NAME]
    path = source_path()
    spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
    if spec is None or spec.loader is None:
        raise TrainingError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module
    spec.loader.exec_module(module)
    return module
