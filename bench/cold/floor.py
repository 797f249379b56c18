"""Cold start, the floor: import onnxruntime, create the session from the same file, run once."""

import time

t0 = time.perf_counter()
import json  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

t1 = time.perf_counter()
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
feeds = {name: np.load(path) for name, path in json.loads(sys.argv[2]).items()}
session.run(None, feeds)
t2 = time.perf_counter()
print(
    "ANSWER",
    json.dumps({"status": 200, "import_ms": (t1 - t0) * 1e3, "first_ms": (t2 - t1) * 1e3}),
    flush=True,
)
