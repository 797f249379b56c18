"""What a person sees of the local stack: one line per pipeline step; the rest in a log file.

On Lambda a function's stdout (its JSON logs, its EMF metric lines) goes to CloudWatch Logs.
Here the functions run as threads of this process, so `FunctionOutput` sends what a thread
writes while it runs a function to <workdir>/logs/functions.log (`maas local logs`), and what
any other thread writes to the terminal. `Console` prints the pipeline's steps: upload seen,
job started, epochs as a progress bar, optimizing, the candidates with their figures,
promoted or failed, and where the model serves.
"""

from __future__ import annotations

import io
import json
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

_invocation = threading.local()
EPOCH = re.compile(r"^epoch=(\d+)\b")
BAR = 24


@contextmanager
def running_function(name: str) -> Iterator[None]:
    """Marks this thread as running function `name` (its output is the function's)."""
    previous = getattr(_invocation, "function", None)
    _invocation.function = name
    try:
        yield
    finally:
        _invocation.function = previous


class FunctionOutput(io.TextIOBase):
    """sys.stdout for a process running functions: their lines to the log, others through."""

    def __init__(self, terminal: TextIO, log_path: Path) -> None:
        self.terminal = terminal
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = log_path.open("a", encoding="utf-8", buffering=1)
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        if getattr(_invocation, "function", None) is None:
            return self.terminal.write(text)
        with self._lock:
            return self.log.write(text)

    def flush(self) -> None:
        self.terminal.flush()
        self.log.flush()

    def isatty(self) -> bool:
        return self.terminal.isatty()

    @contextmanager
    def installed(self) -> Iterator[FunctionOutput]:
        saved = sys.stdout
        sys.stdout = self
        try:
            yield self
        finally:
            sys.stdout = saved
            self.log.close()


class Console:
    """The pipeline's steps as lines for a person; `quiet` prints nothing."""

    def __init__(self, out: TextIO | None = None, *, quiet: bool = False) -> None:
        self.out = out
        self.quiet = quiet
        self._lock = threading.Lock()
        self._bars: dict[str, tuple[int, int, float]] = {}  # job -> (epoch, of, last print)
        self._open = False  # a bar is drawn on the terminal's current line

    def _print(self, line: str, *, end: bool = False) -> None:
        if self.quiet:
            return
        # The real terminal, not FunctionOutput: steps are printed from function threads too.
        out = self.out or sys.__stdout__
        if out is None:
            return
        with self._lock:
            # After a bar drawn in place: finish it (end) or start below it.
            prefix = "\r" if self._open and end else ("\n" if self._open else "")
            self._open = False
            out.write(prefix + line + "\n")
            out.flush()

    def upload_seen(self, bucket: str, key: str) -> None:
        self._print(f"upload seen      s3://{bucket}/{key}")

    def job_started(self, request: dict[str, Any]) -> None:
        tags = {t["Key"]: t["Value"] for t in request.get("Tags", [])}
        model, version = tags.get("maas:model", "?"), tags.get("maas:version", "?")
        hp = request.get("HyperParameters", {})
        recipe = _hp(hp, "recipe") or "default recipe"
        self._print(
            # No task in job.json: a table, whose label decides (the job's log says which).
            f"job started      {model} v{version}: {_hp(hp, 'task') or 'table'}, "
            f"{recipe} ({request['TrainingJobName']})"
        )

    def training_line(self, request: dict[str, Any], line: str) -> None:
        """A line the training job printed: epochs advance the job's bar, the rest is quiet.

        Each fit (a candidate depth, the refit) numbers its epochs from 1 again: its bar ends
        where it stopped (early stopping) and a new one starts.
        """
        name = request["TrainingJobName"]
        match = EPOCH.match(line)
        if match:
            epoch = int(match.group(1))
            total = int(_hp(request.get("HyperParameters", {}), "epochs") or 0) or epoch
            last = self._bars.get(name)
            if last is not None and epoch < last[0]:
                self._end_bar(name)
                last = None
            now = time.monotonic()
            if last is None or now - last[2] >= 2.0:
                self._bars[name] = (epoch, total, now)
                self._progress(f"training         {_bar(epoch, total)} epoch {epoch}/{total}")
            else:
                self._bars[name] = (epoch, total, last[2])
        elif line.startswith("[maas] done:"):
            self._end_bar(name)
            done = line.removeprefix("[maas] done: ").split("; wrote ", 1)[0]
            self._print(f"trained          {done}")

    def _end_bar(self, name: str) -> None:
        last = self._bars.pop(name, None)
        if last is not None:
            epoch, total, _ = last
            self._print(f"training         {_bar(epoch, total)} epoch {epoch}/{total}", end=True)

    def _progress(self, line: str) -> None:
        """A line a terminal redraws in place (elsewhere: printed as it is)."""
        out = self.out or sys.__stdout__
        if out is not None and out.isatty() and not self.quiet:
            with self._lock:
                out.write("\r" + line)
                out.flush()
                self._open = True
        else:
            self._print(line)

    def optimizing(self, request: dict[str, Any]) -> None:
        self._print(f"optimizing       {request['TrainingJobName']}")

    def optimized(self, result: dict[str, Any], manifest: dict[str, Any] | None) -> None:
        model, version = result.get("model"), result.get("version")
        for c in (manifest or {}).get("quantization", {}).get("candidates", []):
            self._print("candidate        " + _candidate(c, manifest or {}))
        action = result.get("action")
        if action == "ready":
            # The reason's first clause; the manifest has it whole (`maas versions`).
            why = str(result.get("detail", "")).split(" (", 1)[0]
            self._print(f"ready            {model} v{version}: {why}")
        elif action in ("failed", "rejected"):
            self._print(f"{action.upper():<17}{model} v{version}: {result.get('detail', '')}")
        if result.get("promoted"):
            self._print(f"promoted         {model} v{version} -> prod")

    def serving(self, api_url: str, model: str) -> None:
        self._print(f"serving          {api_url}/v2/models/{model}/infer")


def _hp(hp: dict[str, Any], name: str) -> Any:
    """A hyperparameter as SageMaker passes it (JSON-encoded strings)."""
    raw = hp.get(name)
    try:
        return json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return raw


def _bar(done: int, total: int) -> str:
    filled = round(BAR * min(done, total) / max(total, 1))
    return "[" + "#" * filled + "." * (BAR - filled) + "]"


def _candidate(c: dict[str, Any], manifest: dict[str, Any]) -> str:
    quality = c.get("quality") or {}
    latency = c.get("latency_ms") or {}
    parts = [f"{c['recipe']:<40}", f"{c.get('size_bytes', 0) / 1024:9.1f} KiB"]
    for key, label in (("accuracy", "accuracy"), ("r2", "R^2"), ("cosine_mean", "cosine")):
        if quality.get(key) is not None:
            parts.append(f"{label} {quality[key]:.4f}")
    if latency.get("batch1_p50") is not None:
        parts.append(f"batch 1 {latency['batch1_p50']:.3f} ms")
    if c.get("error"):
        parts.append(f"error: {c['error'][:80]}")
    elif c["recipe"] == manifest.get("recipe"):
        parts.append("<- served")
    elif not c.get("passed_gate", True):
        parts.append("failed the gate")
    return "  ".join(parts)


class LogFileHandler:
    """Python logging into the same file as the functions' output, line by line."""

    def __init__(self, output: FunctionOutput) -> None:
        import logging

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                with output._lock:
                    output.log.write(self.format(record) + "\n")

        self.handler = Handler()
        self.handler.setFormatter(
            logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")
        )


@contextmanager
def console_session(workdir: Path, *, verbose: bool = False) -> Iterator[Path]:
    """A terminal session of the local stack: functions' output and logs to the log file,
    warnings and the pipeline's steps on the terminal. Yields the log file's path."""
    import logging

    path = workdir / "logs" / "stack.log"
    output = FunctionOutput(sys.stdout, path)
    root = logging.getLogger()
    to_file = LogFileHandler(output).handler
    to_terminal = logging.StreamHandler(sys.stderr)
    to_terminal.setLevel(logging.DEBUG if verbose else logging.WARNING)
    to_terminal.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    saved = root.level, list(root.handlers)
    root.handlers[:] = [to_file, to_terminal]
    root.setLevel(logging.INFO)
    for chatty in ("botocore", "boto3", "urllib3", "werkzeug"):  # a line per AWS call
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        with output.installed():
            yield path
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
