"""Real labelled English text without a download: docstring sentences of the standard library.

Each sentence is labelled with the topic of the stdlib package it documents (networking,
email, concurrency, ...). It is a genuine topic-classification task on real prose written by
people, but it is *not* a curated benchmark: sentence boundaries come from a regex, the exact
set depends on the Python version, and some sentences are generic ("Return the value.").
Tests therefore compare a model against a baseline trained on the same split, never against a
fixed number.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import pkgutil
import re
import warnings
from functools import cache

TOPICS: dict[str, tuple[str, ...]] = {
    "networking": (
        "http", "urllib", "socket", "socketserver", "ftplib", "imaplib", "poplib", "xmlrpc",
        "wsgiref", "ssl", "ipaddress", "selectors", "smtplib",
    ),
    "email": ("email", "mailbox", "mimetypes", "quopri"),
    "concurrency": (
        "asyncio", "threading", "multiprocessing", "concurrent", "queue", "sched", "signal",
        "contextvars",
    ),
    "testing": ("unittest", "doctest", "pdb", "trace", "profile", "timeit", "tracemalloc",
                "traceback"),
    "files": (
        "pathlib", "os", "shutil", "tempfile", "tarfile", "zipfile", "gzip", "lzma", "bz2",
        "glob", "fnmatch", "filecmp", "io", "zipimport", "stat",
    ),
    "text": ("re", "string", "textwrap", "difflib", "codecs", "unicodedata", "csv",
             "configparser", "json", "gettext", "locale"),
    "markup": ("xml", "html"),
    "introspection": (
        "inspect", "ast", "dis", "importlib", "pkgutil", "typing", "pydoc", "dataclasses",
        "enum", "abc", "tokenize", "runpy", "compileall", "modulefinder",
    ),
    "numbers": ("statistics", "decimal", "fractions", "math", "random", "numbers", "cmath"),
    "logging": ("logging",),
}  # fmt: skip

_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_SKIP_PARAGRAPH = re.compile(r"^\s*(>>>|\$ |\.\. |[-=]{3,})", re.M)


def _modules(name: str) -> list[object]:
    try:
        root = importlib.import_module(name)
    except Exception:
        return []
    found = [root]
    if hasattr(root, "__path__"):
        for info in pkgutil.walk_packages(root.__path__, name + "."):
            if ".test" in info.name or info.name.endswith("__main__") or "idle" in info.name:
                continue
            try:
                found.append(importlib.import_module(info.name))
            except Exception:
                continue
    return found


def _docstrings(module: object) -> list[str]:
    objs = [module]
    mod_name = getattr(module, "__name__", "")
    for _, obj in inspect.getmembers(module):
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__ == mod_name:
            objs.append(obj)
            if inspect.isclass(obj):
                objs += [
                    f
                    for _, f in inspect.getmembers(obj, inspect.isfunction)
                    if f.__qualname__.startswith(obj.__qualname__ + ".")
                ]
    docs = []
    for obj in objs:
        doc = inspect.getdoc(obj)
        if doc:
            docs.append(doc)
    return docs


def _sentences(doc: str) -> list[str]:
    out = []
    for para in re.split(r"\n\s*\n", doc):
        if _SKIP_PARAGRAPH.search(para):
            continue
        for s in _SPLIT.split(" ".join(para.split())):
            letters = sum(c.isalpha() for c in s)
            if 30 <= len(s) <= 300 and s[0].isupper() and s[-1] in ".!?" and letters > 0.7 * len(s):
                out.append(s)
    return out


@cache
def labelled_sentences() -> tuple[tuple[str, str], ...]:
    """(sentence, topic) pairs, deduplicated, in a stable order (~5,000 on Python 3.11)."""
    rows: list[tuple[str, str]] = []
    seen: set[str] = set()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for topic, packages in TOPICS.items():
            for package in packages:
                docs: list[str] = []
                for module in _modules(package):
                    docs += _docstrings(module)
                for doc in dict.fromkeys(docs):
                    for s in _sentences(doc):
                        if s not in seen:
                            seen.add(s)
                            rows.append((s, topic))
    return tuple(rows)
