"""Load the production handlers from functions/ and invoke them the way Lambda would."""

from __future__ import annotations

import importlib.util
import itertools
import queue
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from types import ModuleType
from typing import Any

_counter = itertools.count()


class LambdaContext:
    """The attributes of Lambda's context object that Powertools and handlers read."""

    def __init__(self, function_name: str, memory_mb: int = 1769, timeout_s: float = 900) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = memory_mb
        self.invoked_function_arn = (
            f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}"
        )
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def load_handler_module(functions_dir: Path, name: str) -> ModuleType:
    """Import functions/<name>/app.py as a fresh module: one per simulated container."""
    path = functions_dir / name / "app.py"
    module_name = f"maas_fn_{name}_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


class FunctionPool:
    """N warm containers of one function; each serves one event at a time, as on Lambda.

    `exclusive`: a lock held around each invocation, shared by the pools whose handlers use
    Powertools' HTTP resolver. That resolver keeps the current event on a class attribute
    (BaseRouter.current_event), one per process; Lambda runs one event per process, but here
    every container is a thread of one process, so two concurrent HTTP invocations would read
    each other's event. Containers stay separate (their own module state and caches).
    """

    def __init__(
        self,
        functions_dir: Path,
        name: str,
        size: int = 1,
        memory_mb: int = 1769,
        timeout_s: float = 900,
        exclusive: threading.Lock | None = None,
    ) -> None:
        self.name = name
        self.memory_mb = memory_mb
        self.timeout_s = timeout_s
        self._exclusive = exclusive
        self._idle: queue.Queue[ModuleType] = queue.Queue()
        for _ in range(size):
            self._idle.put(load_handler_module(functions_dir, name))

    @contextmanager
    def _container(self) -> Iterator[ModuleType]:
        module = self._idle.get()
        try:
            yield module
        finally:
            self._idle.put(module)

    def invoke(self, event: dict[str, Any]) -> Any:
        with self._container() as module, self._exclusive or nullcontext():
            context = LambdaContext(self.name, self.memory_mb, self.timeout_s)
            try:
                return module.lambda_handler(event, context)
            finally:
                # Powertools keeps (and at 100 values prints) metrics it was told not to flush;
                # a Lambda sandbox would flush them, so drop them here.
                metrics = getattr(module, "metrics", None)
                if metrics is not None and hasattr(metrics, "clear_metrics"):
                    metrics.clear_metrics()
