"""Warm containers of the production handlers, invoked one event at a time as Lambda does."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from types import ModuleType
from typing import Any

from maas_devkit.lambda_runtime import LambdaContext, load_handler

from maas_local.console import running_function


class FunctionPool:
    """N warm containers of one function; each serves one event at a time, as on Lambda.

    `max_size`: when every container is busy, start another (a cold start, as Lambda scales a
    function out) up to this many; beyond it, wait for one to be free.

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
        max_size: int | None = None,
    ) -> None:
        self.name = name
        self.memory_mb = memory_mb
        self.timeout_s = timeout_s
        self._exclusive = exclusive
        self._functions_dir = functions_dir
        self._idle: queue.Queue[ModuleType] = queue.Queue()
        self._max_size = max(size, max_size or size)
        self._lock = threading.Lock()
        self.size = size
        for _ in range(size):
            self._idle.put(load_handler(name, functions_dir))

    @contextmanager
    def _container(self) -> Iterator[ModuleType]:
        try:
            module = self._idle.get_nowait()
        except queue.Empty:
            with self._lock:
                grow = self.size < self._max_size
                self.size += grow
            module = load_handler(self.name, self._functions_dir) if grow else self._idle.get()
        try:
            yield module
        finally:
            self._idle.put(module)

    @contextmanager
    def stream(self, event: dict[str, Any]) -> Iterator[Iterator[bytes]]:
        """A response-streaming invocation: the handler's ``stream_handler`` bytes (the HTTP
        integration stream). The container stays busy until the stream is over or closed."""
        with self._container() as module, running_function(self.name):
            context = LambdaContext(self.name, self.memory_mb, self.timeout_s)
            chunks = iter(module.stream_handler(event, context))
            try:
                yield chunks
            finally:
                close = getattr(chunks, "close", None)
                if callable(close):
                    close()

    def invoke(self, event: dict[str, Any]) -> Any:
        with (
            self._container() as module,
            self._exclusive or nullcontext(),
            running_function(self.name),
        ):
            context = LambdaContext(self.name, self.memory_mb, self.timeout_s)
            try:
                return module.lambda_handler(event, context)
            finally:
                # Powertools keeps (and at 100 values prints) metrics it was told not to flush;
                # a Lambda sandbox would flush them, so drop them here.
                metrics = getattr(module, "metrics", None)
                if metrics is not None and hasattr(metrics, "clear_metrics"):
                    metrics.clear_metrics()
