"""sample.npz and calibration.npz as a graph's feeds: the arrays the optimizer runs graphs on."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from maas.core.contract import INPUT_PREFIX

if TYPE_CHECKING:
    import onnxruntime as ort

Feeds = dict[str, np.ndarray]

_ORT_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def feeds_for(sample: dict[str, np.ndarray], sess: ort.InferenceSession) -> Feeds:
    """{input name: array} from the "input__<name>" keys, cast to the graph's dtypes."""
    feeds: Feeds = {}
    for i in sess.get_inputs():
        key = INPUT_PREFIX + i.name
        if key not in sample:
            raise ValueError(f"sample has no {key!r} for model input {i.name!r}")
        arr = np.asarray(sample[key])
        dtype = _ORT_NUMPY.get(i.type)
        if dtype is not None and arr.dtype != dtype:
            arr = arr.astype(dtype)
        feeds[i.name] = np.ascontiguousarray(arr)
    counts = {a.shape[0] if a.ndim else 0 for a in feeds.values()}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(f"sample inputs need one shared, non-zero row count; got {sorted(counts)}")
    return feeds


def rows(feeds: Feeds, start: int, stop: int) -> Feeds:
    return {k: v[start:stop] for k, v in feeds.items()}


def n_rows(feeds: Feeds) -> int:
    return int(next(iter(feeds.values())).shape[0])
