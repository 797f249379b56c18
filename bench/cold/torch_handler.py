"""Cold start, the torch comparator (bench/torch_app.py): import it, answer one OIP request."""

import time

t0 = time.perf_counter()
import json  # noqa: E402
import sys  # noqa: E402

sys.path.insert(0, sys.argv[2])  # bench/
import torch_app  # noqa: E402

t1 = time.perf_counter()
with open(sys.argv[1]) as f:
    event = json.load(f)
response = torch_app.lambda_handler(event, None)
t2 = time.perf_counter()
status = response["statusCode"]
print(
    "ANSWER",
    json.dumps({"status": status, "import_ms": (t1 - t0) * 1e3, "first_ms": (t2 - t1) * 1e3}),
    flush=True,
)
