"""One local stack per work dir: a second `maas local up` on it refuses, naming the first."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any, TextIO


class StackRunning(RuntimeError):
    """Another stack holds this work dir."""


class WorkdirLock:
    """An exclusive flock on <workdir>/stack.lock, held while the stack runs.

    The kernel drops it when the process ends, however it ends (a SIGKILL included), so a
    stale lock never blocks a restart; the file's content only names the holder.
    """

    def __init__(self, workdir: Path) -> None:
        self.path = workdir / "stack.lock"
        self._file: TextIO | None = None

    def acquire(self, **about: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = self.path.open("a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = _parse(f.read())
            f.close()
            raise StackRunning(
                f"a local stack already runs on {self.path.parent} "
                f"(pid {holder.get('pid', '?')}, AWS port {holder.get('aws_port', '?')}, "
                f"API port {holder.get('api_port', '?')}): stop it (Ctrl-C in its terminal, "
                f"or kill {holder.get('pid', '<pid>')}), or give this one another --workdir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), **about}))
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            self._file.truncate(0)
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lock now (pid, ports), or None when no stack runs here."""
        try:
            f = self.path.open("r")
        except FileNotFoundError:
            return None
        with f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _parse(f.read())
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            return None


def _parse(text: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}
