"""Load test of `fetalplanes serve`: N concurrent clients POST one image for a bounded time.

Starts the real server (``fetalplanes serve`` in a subprocess on 127.0.0.1 and a free port),
warms it up, then runs ``--clients`` concurrent HTTP clients for ``--duration`` seconds.
Prints p50/p95/p99 latency, throughput and the error count, and writes them as JSON.

    python benchmarks/bench_serve.py --model model.onnx --clients 50 --duration 20 --out bench_serve.json

Without ``--image`` a synthetic phantom (640x480 PNG) is sent, never a real patient image.
The load generator shares the machine with the server, so numbers are a lower bound.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np


def phantom_png(size: tuple[int, int] = (640, 480)) -> bytes:
    """A synthetic fetal-brain phantom as PNG bytes (same generator as the tests' data)."""
    from PIL import Image

    from fetalplanes.data.synth import render

    image, _mask = render("Fetal brain", np.random.default_rng(0), size)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: Path, port: int, workers: int, threads: int | None) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "from fetalplanes.cli import main; main()", "serve", "--model", str(model),
           "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers), "--log-level", "warning"]
    if threads:
        cmd += ["--threads", str(threads)]
    return subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def wait_healthy(base: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"server did not become healthy within {timeout:.0f} s")


async def client_loop(client: httpx.AsyncClient, image: bytes, stop_at: float, latencies: list[float], errors: list[str]) -> None:
    files = {"file": ("phantom.png", image, "image/png")}
    while time.perf_counter() < stop_at:
        t0 = time.perf_counter()
        try:
            response = await client.post("/v1/predict", files=files)
            if response.status_code == 200 and "plane" in response.json():
                latencies.append(time.perf_counter() - t0)
            else:
                errors.append(f"HTTP {response.status_code}")
        except httpx.HTTPError as err:
            errors.append(f"{type(err).__name__}: {err}")


async def run_load(base: str, image: bytes, clients: int, duration: float, timeout: float) -> dict:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout) as client:
        for _ in range(5):  # warm-up: first requests pay for lazy initialisation
            (await client.post("/v1/predict", files={"file": ("w.png", image, "image/png")})).raise_for_status()
        latencies: list[float] = []
        errors: list[str] = []
        t0 = time.perf_counter()
        stop_at = t0 + duration
        tasks = [client_loop(client, image, stop_at, latencies, errors) for _ in range(clients)]
        # Bounded: requests in flight at the deadline may finish, but never past `timeout` more.
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=duration + timeout + 5)
        elapsed = time.perf_counter() - t0
    ms = np.array(latencies) * 1000.0
    pct = (lambda q: round(float(np.percentile(ms, q)), 1)) if len(ms) else (lambda q: None)
    return {
        "clients": clients,
        "duration_s": round(elapsed, 2),
        "requests_ok": len(latencies),
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:5],
        "throughput_rps": round(len(latencies) / elapsed, 2),
        "latency_ms": {"p50": pct(50), "p95": pct(95), "p99": pct(99),
                       "max": round(float(ms.max()), 1) if len(ms) else None},
    }


def print_table(result: dict) -> None:
    lat = result["latency_ms"]
    rows = [
        ("model", f"{result['model']} ({result['model_kind']})"),
        ("image", f"{result['image_bytes']:,} bytes"),
        ("clients / workers", f"{result['clients']} / {result['workers']}"),
        ("duration", f"{result['duration_s']} s"),
        ("requests ok", str(result["requests_ok"])),
        ("errors", str(result["errors"])),
        ("throughput", f"{result['throughput_rps']} req/s"),
        ("latency p50 / p95 / p99", f"{lat['p50']} / {lat['p95']} / {lat['p99']} ms"),
        ("latency max", f"{lat['max']} ms"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help=".onnx model (preferred) or .ckpt checkpoint")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load (bounded)")
    parser.add_argument("--image", type=Path, help="image to send (default: a synthetic phantom)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, help="inference threads per worker")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout, seconds")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=Path("bench_serve.json"))
    args = parser.parse_args(argv)

    from fetalplanes.core.atomic import write_json

    image = args.image.read_bytes() if args.image else phantom_png()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(args.model, port, args.workers, args.threads)
    try:
        wait_healthy(base, proc, args.startup_timeout)
        info = httpx.get(base + "/v1/model", timeout=10).json()
        result = asyncio.run(run_load(base, image, args.clients, args.duration, args.timeout))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    result.update(
        model=info["name"], model_kind=info["kind"], model_path=str(args.model), image_bytes=len(image),
        image_source=str(args.image) if args.image else "synthetic phantom 640x480", workers=args.workers,
        threads=args.threads, cpu_count=os.cpu_count(), python=platform.python_version(), host=platform.node(),
    )
    print_table(result)
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
