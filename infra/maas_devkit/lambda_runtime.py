"""Lambda's side of an invocation: the context object, and a handler module loaded afresh."""

from __future__ import annotations

import importlib.util
import itertools
import time
import uuid
from pathlib import Path
from types import ModuleType

from maas_devkit.repo import ACCOUNT, FUNCTIONS_DIR, REGION

_counter = itertools.count()


class LambdaContext:
    """The attributes of Lambda's context object that Powertools and the handlers read."""

    def __init__(
        self,
        function_name: str = "maas-test-function",
        memory_mb: int = 1769,
        timeout_s: float = 30,
    ) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = memory_mb
        self.invoked_function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{function_name}"
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "2024/01/01/[$LATEST]0123456789abcdef"
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def load_handler(name: str, functions_dir: Path = FUNCTIONS_DIR) -> ModuleType:
    """Import functions/<name>/app.py as a new module: one per simulated container, since
    handlers keep module-level state (clients, caches) between invocations."""
    path = functions_dir / name / "app.py"
    module_name = f"maas_fn_{name}_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"no handler at {path}")
    module = importlib.util.module_from_spec(spec)
    # Not left in sys.modules: a test suite loads hundreds of containers, each holding its
    # model sessions, and a loaded module must die with the container that uses it.
    spec.loader.exec_module(module)
    return module
