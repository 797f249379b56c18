"""Read the train channel, encode labels and split it (numpy only, no sklearn); tables are
typed by maas_training.tables."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maas_training import log
from maas_training.errors import TrainingError

DATA_SUFFIXES = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
MIN_ROWS = 10
# A class needs this many rows to be spread over train/validation/test by stratification.
MIN_ROWS_PER_CLASS_TO_STRATIFY = 3


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # row indices
    validation: np.ndarray
    test: np.ndarray
    stratified: bool


def find_data_files(channel: Path) -> list[Path]:
    if not channel.is_dir():
        raise TrainingError(f"training channel {channel} does not exist or is not a directory")
    files = sorted(
        p
        for p in channel.rglob("*")
        if p.is_file() and p.suffix.lower() in DATA_SUFFIXES and not p.name.startswith(".")
    )
    if not files:
        raise TrainingError(
            f"no data files (.csv, .parquet, .jsonl) found under the training channel {channel}"
        )
    return files


def _read_file(path: Path):  # -> pandas.DataFrame
    import pandas as pd

    kind = DATA_SUFFIXES[path.suffix.lower()]
    try:
        if kind == "csv":
            return pd.read_csv(path)
        if kind == "parquet":
            return pd.read_parquet(path)
        return pd.read_json(path, lines=True)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TrainingError(f"cannot read {path.name} as {kind}: {msg}") from None


def read_frame(channel: Path):  # -> tuple[pandas.DataFrame, list[str]]
    import pandas as pd

    files = find_data_files(channel)
    frames = []
    columns: list[str] | None = None
    first_name = ""
    for path in files:
        df = _read_file(path)
        df.columns = [str(c) for c in df.columns]
        rel = str(path.relative_to(channel))
        if columns is None:
            columns, first_name = list(df.columns), rel
        elif set(df.columns) != set(columns):
            missing = sorted(set(columns) - set(df.columns))
            extra = sorted(set(df.columns) - set(columns))
            raise TrainingError(
                f"{rel} has different columns from {first_name}"
                + (f"; missing: {', '.join(missing)}" if missing else "")
                + (f"; extra: {', '.join(extra)}" if extra else "")
            )
        else:
            df = df[columns]
        log.info(f"read {rel}: {len(df)} rows x {len(df.columns)} columns")
        frames.append(df)
    rel_files = [str(p.relative_to(channel)) for p in files]
    frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    return frame, rel_files


def _short_list(items: list[str], limit: int = 20) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def encode_labels(values) -> tuple[np.ndarray, list[str]]:  # values: pandas.Series
    import pandas as pd

    if values.isna().any():
        n = int(values.isna().sum())
        raise TrainingError(f"{n} rows have an empty label in column {values.name!r}")
    integral = False
    if pd.api.types.is_bool_dtype(values):
        keys = values.astype(str).to_numpy()
    elif pd.api.types.is_integer_dtype(values):
        keys, integral = values.to_numpy().astype(np.int64), True
    elif pd.api.types.is_float_dtype(values):
        arr = values.to_numpy(dtype=np.float64)
        if np.all(arr == np.round(arr)):
            keys, integral = arr.astype(np.int64), True
        else:
            keys = arr  # sorted numerically; names are str(float)
    else:
        objs = values.to_list()
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in objs):
            keys, integral = np.array(objs, dtype=np.int64), True
        else:
            keys = np.array([str(v) for v in objs], dtype=object)
    uniques = np.unique(keys)  # sorted numerically for ints, lexicographically for strings
    targets = np.searchsorted(uniques, keys).astype(np.int64)
    names = [str(int(u)) for u in uniques] if integral else [str(u) for u in uniques]
    if len(set(names)) != len(names):
        raise TrainingError(f"label column {values.name!r} has values that print the same")
    return targets, names


def _allocate(counts: np.ndarray, total: int) -> np.ndarray:
    """Split `total` over classes in proportion to `counts` (largest remainder, exact sum)."""
    quota = counts * (total / counts.sum())
    base = np.floor(quota).astype(np.int64)
    rest = total - int(base.sum())
    if rest > 0:
        order = np.argsort(-(quota - base), kind="stable")
        base[order[:rest]] += 1
    return base


def split_indices(
    targets: np.ndarray, validation_fraction: float, test_fraction: float, seed: int
) -> Split:
    n = len(targets)
    rng = np.random.default_rng(seed)
    n_test = max(1, round(n * test_fraction))
    n_val = max(1, round(n * validation_fraction))
    if n - n_test - n_val < 1:
        raise TrainingError(f"{n} rows are too few for a train/validation/test split")
    counts = np.bincount(targets)
    present = counts[counts > 0]
    if present.min() < MIN_ROWS_PER_CLASS_TO_STRATIFY:
        log.info(
            f"smallest class has {int(present.min())} row(s) (< {MIN_ROWS_PER_CLASS_TO_STRATIFY}):"
            " not stratifying; using a plain shuffled split"
        )
        perm = rng.permutation(n)
        return Split(
            train=np.sort(perm[n_test + n_val :]),
            validation=np.sort(perm[n_test : n_test + n_val]),
            test=np.sort(perm[:n_test]),
            stratified=False,
        )
    classes = np.flatnonzero(counts)
    test_c = _allocate(counts[classes], n_test)
    val_c = _allocate(counts[classes], n_val)
    train_idx, val_idx, test_idx = [], [], []
    for k, c in enumerate(classes):
        members = rng.permutation(np.flatnonzero(targets == c))
        m = len(members)
        t = min(int(test_c[k]), m - 2)  # keep >= 1 for validation-or-train and 1 for train
        v = min(int(val_c[k]), m - 1 - t)
        test_idx.append(members[:t])
        val_idx.append(members[t : t + v])
        train_idx.append(members[t + v :])
    return Split(
        train=np.sort(np.concatenate(train_idx)),
        validation=np.sort(np.concatenate(val_idx)),
        test=np.sort(np.concatenate(test_idx)),
        stratified=True,
    )


# --- text ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextDataset:
    texts: list[str]
    targets: np.ndarray  # int64 [n], index into class_names
    class_names: list[str]
    text_column: str
    label_column: str
    files: list[str]

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for t in self.texts:
            h.update(t.encode("utf-8", "surrogatepass") + b"\x00")
        h.update(np.ascontiguousarray(self.targets).tobytes())
        h.update("\x00".join(self.class_names).encode())
        return h.hexdigest()


def load_text_dataset(channel: Path, text: str, label: str) -> TextDataset:
    """A text column and a label column (CSV, JSONL or Parquet); other columns are ignored."""
    frame, files = read_frame(channel)
    columns = list(frame.columns)
    for role, name, key in (("text", text, "text"), ("label", label, "label")):
        if name not in columns:
            raise TrainingError(
                f"{role} column {name!r} not found; columns: {_short_list(columns)}"
                f" (set it with the {key!r} key in job.json)"
            )
    if text == label:
        raise TrainingError(f"the text and label columns are the same column {text!r}")
    n = len(frame)
    if n < MIN_ROWS:
        raise TrainingError(f"too few rows to train: {n} (need at least {MIN_ROWS})")
    values = frame[text].to_list()
    empty = [i for i, v in enumerate(values) if not isinstance(v, str) or not v.strip()]
    if empty:
        raise TrainingError(
            f"{len(empty)} rows have an empty or non-text value in the text column {text!r}"
            f" (first at row {empty[0] + 1})"
        )
    targets, class_names = encode_labels(frame[label])
    if len(class_names) < 2:
        raise TrainingError(
            f"label column {label!r} has {len(class_names)} distinct value(s); "
            "classification needs at least 2 classes"
        )
    counts = np.bincount(targets, minlength=len(class_names))
    log.info(
        f"text dataset: {n} rows, {len(class_names)} classes (smallest class "
        f"{int(counts.min())} rows) from {len(files)} file(s)"
    )
    return TextDataset(
        texts=[str(v) for v in values],
        targets=targets,
        class_names=class_names,
        text_column=text,
        label_column=label,
        files=files,
    )
