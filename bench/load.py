"""Load generator for the throughput benchmark: its own process, so it does not share a GIL
with the server it measures. Closed loop: `concurrency` threads, each with one keep-alive
connection, sending the same request back to back for `duration` seconds.

python -m bench.load URL BODY_FILE CONCURRENCY DURATION  ->  one JSON line on stdout
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from urllib.parse import urlsplit


def main() -> None:
    url, body_file, concurrency, duration = (
        sys.argv[1],
        sys.argv[2],
        int(sys.argv[3]),
        float(sys.argv[4]),
    )
    body = open(body_file, "rb").read()  # noqa: SIM115 - read once, closed by the GC at exit
    parts = urlsplit(url)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    start = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def worker() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        mine: list[float] = []
        bad: dict[str, int] = {}
        start.wait()
        while time.perf_counter() < stop_at[0]:
            t0 = time.perf_counter()
            try:
                conn.request("POST", parts.path, body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
                key = str(response.status)
            except (OSError, http.client.HTTPException) as e:
                ok, key = False, type(e).__name__
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
            if ok:
                mine.append(time.perf_counter() - t0)
            else:
                bad[key] = bad.get(key, 0) + 1
        with lock:
            latencies.extend(mine)
            for k, v in bad.items():
                errors[k] = errors.get(k, 0) + v

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + duration
    began = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    latencies.sort()

    def pct(q: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(len(latencies) * q))] * 1e3
            if latencies
            else float("nan")
        )

    print(
        json.dumps(
            {
                "concurrency": concurrency,
                "seconds": elapsed,
                "ok": len(latencies),
                "errors": sum(errors.values()),
                "error_kinds": errors,
                "rps": len(latencies) / elapsed,
                "p50_ms": pct(0.50),
                "p99_ms": pct(0.99),
            }
        )
    )


if __name__ == "__main__":
    main()
