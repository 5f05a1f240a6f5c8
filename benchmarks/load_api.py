"""Load test of `covidxr serve` on loopback: 200 uploads, 50 at a time, bounded in count and time.

Starts the server (`python load_api.py [RUN]`: a run directory, e.g. out/demo/run-demo from `make demo`;
without one, the shipped model) on a free 127.0.0.1 port, posts real shared Cohen images to /v1/predict,
and meanwhile asks GET /health every 50 ms: while inference blocks the event loop, even /health waits.
Prints the status counts (no 5xx allowed), p50/p95 latency of the uploads and of /health under load, and
the server's resident memory before and after. Last line: the summary.

`python load_api.py --mixed [--no-explain] [RUN]`: the memory budget under a mixed load on 8 threads (see
load_mixed.py): predict, explain and dicom-sr on Cohen images (as DICOM with one-part patient names for the
SR), bad inputs, and an 18 MB RLE DICOM of 24 frames at 7000x7000; prints the server's resident memory at
start, warm, peak (VmHWM) and after the load, the status counts, tracebacks and patient names in its log.
`--no-explain` leaves out /v1/explain, so PyTorch is never loaded (the ONNX path alone)."""

from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from _common import DATA, machine

REQUESTS, CONCURRENCY, TIME_LIMIT, HEALTH_EVERY = 200, 50, 300, 0.05


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_until_healthy(base: str, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.5)


def percentiles(seconds: list[float]) -> str:
    if not seconds:
        return "no answer"
    ordered = sorted(seconds)
    p95 = ordered[int(0.95 * (len(ordered) - 1))]
    return f"p50 {statistics.median(ordered) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms"


def main() -> None:
    if sys.argv[1:2] == ["--mixed"]:
        from load_mixed import mixed_load

        arguments = [argument for argument in sys.argv[2:] if argument != "--no-explain"]
        mixed_load(arguments[0] if arguments else None, explain="--no-explain" not in sys.argv)
        return
    if len(sys.argv) > 2:
        sys.exit("usage: python load_api.py [--mixed [--no-explain]] [RUN]")
    images = sorted((DATA / "covid-chestxray-dataset" / "images").glob("*.jp*g"))[:20]
    if not images:
        sys.exit(f"shared data not found in {DATA}; set DATA=dir")
    payloads = [(path.name, path.read_bytes()) for path in images]
    port = free_port()
    run = ["--run", sys.argv[1]] if len(sys.argv) == 2 else []
    server = subprocess.Popen([sys.executable, "-m", "covidxr.cli", "serve", *run, "--port", str(port)],
                              stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    health: list[float] = []
    try:
        wait_until_healthy(base)
        before = resident_mib(server.pid)
        started = time.time()
        loaded = threading.Event()

        def call(index: int) -> tuple[int, float]:
            if time.time() - started > TIME_LIMIT:
                return -1, 0.0
            name, content = payloads[index % len(payloads)]
            start = time.perf_counter()
            response = httpx.post(f"{base}/v1/predict", files={"file": (name, content)}, timeout=120)
            return response.status_code, time.perf_counter() - start

        def probe_health() -> None:
            with httpx.Client(base_url=base, timeout=120) as client:
                while not loaded.is_set():
                    start = time.perf_counter()
                    client.get("/health")
                    health.append(time.perf_counter() - start)
                    time.sleep(HEALTH_EVERY)

        prober = threading.Thread(target=probe_health)
        prober.start()
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            results = list(pool.map(call, range(REQUESTS)))
        loaded.set()
        prober.join()
        wall = time.time() - started
        after = resident_mib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    statuses: dict[int, int] = {}
    for status, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    latencies = [seconds for status, seconds in results if status == 200]
    print(f"machine: {machine()}; {REQUESTS} requests, {CONCURRENCY} concurrent, {len(payloads)} Cohen images; "
          f"model: {sys.argv[1] if len(sys.argv) == 2 else 'shipped'}")
    print(f"statuses: {statuses}; {len(results) / wall:.1f} requests/s over {wall:.1f} s")
    print(f"server memory: {before:.0f} MiB before, {after:.0f} MiB after")
    print(f"GET /health while loaded: {len(health)} calls, {percentiles(health)}")
    errors_5xx = sum(n for s, n in statuses.items() if s >= 500)
    print(f"load: {errors_5xx} errors 5xx; uploads {percentiles(latencies)}; /health {percentiles(health)} "
          f"(under {CONCURRENCY} concurrent uploads)")


if __name__ == "__main__":
    main()
