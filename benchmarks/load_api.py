"""Load test of `covidxr serve` on loopback: 200 requests, 50 at a time, bounded in count and time.

Starts the server for RUN (`python load_api.py RUN`, e.g. out/demo/run-demo from `make demo`) on a free
127.0.0.1 port, posts real shared Cohen images to /v1/predict, and prints the status counts (no 5xx
allowed), p50/p95 latency and the server's resident memory before and after. Last line: the summary."""

from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from _common import machine, shared_manifests

REQUESTS, CONCURRENCY, TIME_LIMIT = 200, 50, 300


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python load_api.py RUN")
    cohen, _ = shared_manifests()
    payloads = [(Path(p).name, Path(p).read_bytes()) for p in cohen["path"].head(20)]
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "covidxr.cli", "serve", "--run", sys.argv[1], "--port", str(port)],
                              stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        before = resident_mib(server.pid)
        started = time.time()

        def call(index: int) -> tuple[int, float]:
            if time.time() - started > TIME_LIMIT:
                return -1, 0.0
            name, content = payloads[index % len(payloads)]
            start = time.perf_counter()
            response = httpx.post(f"{base}/v1/predict", files={"file": (name, content)}, timeout=120)
            return response.status_code, time.perf_counter() - start

        with ThreadPoolExecutor(CONCURRENCY) as pool:
            results = list(pool.map(call, range(REQUESTS)))
        wall = time.time() - started
        after = resident_mib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    statuses: dict[int, int] = {}
    for status, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    latencies = sorted(seconds for status, seconds in results if status == 200)
    p95 = latencies[int(0.95 * (len(latencies) - 1))] if latencies else float("nan")
    print(f"machine: {machine()}; {REQUESTS} requests, {CONCURRENCY} concurrent, {len(payloads)} Cohen images")
    print(f"statuses: {statuses}; {len(results) / wall:.1f} requests/s over {wall:.1f} s")
    print(f"server memory: {before:.0f} MiB before, {after:.0f} MiB after")
    errors_5xx = sum(n for s, n in statuses.items() if s >= 500)
    print(f"load: {errors_5xx} errors 5xx; p50 {statistics.median(latencies) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms "
          f"(latency under {CONCURRENCY} concurrent requests)")


if __name__ == "__main__":
    main()
