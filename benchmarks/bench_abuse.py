"""Abuse benchmark (issue 18): peak memory, time and the answer for each hostile input, CLI and service.

    python benchmarks/bench_abuse.py --checkpoint best.ckpt --model model.onnx \
        --cases ../shared/cases --out bench_abuse.json

For each kind: the CLI side runs the library call a command makes in a fresh subprocess and
reports that process's RSS after imports and its peak (VmHWM) after the call; the service side
starts ``fetalplanes serve`` on 127.0.0.1 and reports the server's VmHWM before and after each
request. Kinds: a code-carrying checkpoint (built here; its pickle would create a marker file),
the shared deflate bomb DICOM, overlap zip bomb (through ``fetalplanes download`` and the shared
loopback mirror), 12000x12000 H.264 clip, a batch of 16 39.7 Mpx PNGs, and ``--slow`` slow clients
each declaring 15 MB and trickling it, for ``--slow-seconds``, while the load test of docs/serve.md
(``bench_serve.run_load``) runs against the same server. Loopback only; every loop is bounded.
Prints a table and writes JSON (default ``benchmarks/results/bench_abuse.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import free_port, phantom_png, run_load, wait_healthy  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
CHILD = r"""
import json, sys, time
def mem(key):
    for line in open("/proc/self/status"):
        if line.startswith(key): return int(line.split()[1]) / 1024
kind, arg = sys.argv[1], sys.argv[2]
import fetalplanes.core.io, fetalplanes.core.frames, fetalplanes.data.download
if kind == "model":
    import fetalplanes.models.checkpoint as ck
before, t0, answer = mem("VmRSS"), time.perf_counter(), "accepted"
try:
    if kind == "model":
        ck.load_model(arg)
    elif kind == "dicom":
        fetalplanes.core.io.load_image(arg)
    elif kind == "video":
        list(fetalplanes.core.frames.open_frames(arg))
except Exception as err:
    answer = f"{type(err).__name__}: {err}"
print(json.dumps({"rss_before_mb": before, "peak_mb": mem("VmHWM"), "wall_s": time.perf_counter() - t0, "answer": answer}))
"""


def child(kind: str, arg: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, kind, arg], capture_output=True, text=True, env=ENV, timeout=300)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def evil_checkpoint(checkpoint: Path, folder: Path) -> tuple[Path, Path]:
    """``checkpoint`` plus one key whose unpickling would create ``marker`` (a stand-in for os.system)."""
    import torch

    marker = folder / "MARKER_model_code_ran"

    class Marker:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["extra"] = Marker()
    path = folder / "evil.ckpt"
    torch.save(ckpt, path)
    return path, marker


def cli_download(cases: Path, folder: Path) -> dict:
    case = cases / "zip_overlap_bomb"
    port = free_port()
    mirror = subprocess.Popen([sys.executable, str(case / "serve_mirror.py"), str(case / "FETAL_PLANES_DB_overlap_bomb.zip"),
                               str(port), "120"])
    try:
        time.sleep(1.0)
        script = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
                  "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
                  "print(p.returncode, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024); "
                  "print(p.stderr.strip().splitlines()[-1] if p.stderr.strip() else p.stdout.strip()[-200:])")
        out = folder / "db"
        proc = subprocess.run([sys.executable, "-c", script, sys.executable, "-m", "fetalplanes", "download", "--out", str(out),
                               "--api", f"http://127.0.0.1:{port}/api/records"], capture_output=True, text=True, env=ENV,
                              timeout=300)
    finally:
        mirror.terminate()
        mirror.wait(10)
    first, answer = proc.stdout.splitlines()[:2]
    code, wall, peak = first.split()
    disk = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and "evil" not in f.name)
    return {"peak_mb": float(peak), "wall_s": float(wall), "answer": f"exit {code}: {answer}",
            "extracted": out.exists(), "bytes_on_disk": disk}


def server_mem(pid: int) -> dict:
    out = {}
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(("VmRSS", "VmHWM")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


def start_server(model: Path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fetalplanes", "serve", "--model", str(model), "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "error"]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def service_request(base: str, pid: int, files: list, batch: bool) -> dict:
    before, t0 = server_mem(pid), time.perf_counter()
    resp = httpx.post(f"{base}/v1/predict{'/batch' if batch else ''}", files=files, timeout=600)
    after = server_mem(pid)
    if batch:
        body = resp.json()
        ok = sum(i["status"] == 200 for i in body["items"])
        answer = f"HTTP {resp.status_code}: {ok} answered, {body['failed']} refused; first refusal: " + next(
            (i["error"] for i in body["items"] if i["status"] != 200), "none")
    else:
        answer = f"HTTP {resp.status_code}: {resp.json().get('detail', resp.json().get('plane'))}"
    return {"rss_before_mb": before["VmRSS"], "hwm_before_mb": before["VmHWM"], "peak_mb": after["VmHWM"],
            "wall_s": time.perf_counter() - t0, "answer": answer}


def slow_client(port: int, size: int, chunk: int, every_s: float, stop_at: float, results: list) -> None:
    """Declares ``size`` bytes, sends ``chunk`` every ``every_s`` s; records when and how the server answered."""
    t0 = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port), timeout=2)
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {size}\r\n"
            "Content-Type: multipart/form-data; boundary=zz\r\n\r\n--zz\r\nContent-Disposition: form-data; "
            "name=\"file\"; filename=\"slow.png\"\r\n\r\n")
    sent, answer = 0, b""
    try:
        sock.sendall(head.encode())
        while time.monotonic() < stop_at and sent < size:
            if select.select([sock], [], [], every_s)[0]:  # the server answered (or closed)
                break
            try:
                sock.sendall(b"\0" * min(chunk, size - sent))
                sent += chunk
            except OSError:  # the server stopped reading: wait for its answer below
                break
        if select.select([sock], [], [], max(0.1, stop_at + 5 - time.monotonic()))[0]:
            try:
                answer = sock.recv(4096)
            except OSError:
                pass
    finally:
        sock.close()
    status = answer.split(b" ")[1].decode() if answer.startswith(b"HTTP/") else "no answer"
    results.append({"status": status, "after_s": round(time.monotonic() - t0, 1), "sent_mb": round(sent / 2**20, 1)})


def slow_clients_with_load(base: str, port: int, pid: int, n: int, seconds: float, load_clients: int) -> dict:
    idle = server_mem(pid)["VmRSS"]
    stop_at, results, samples = time.monotonic() + seconds, [], []
    threads = [threading.Thread(target=slow_client, args=(port, 15 * 2**20, 256 * 1024, 1.0, stop_at, results))
               for _ in range(n)]
    for thread in threads:
        thread.start()

    def sample() -> None:
        while time.monotonic() < stop_at:
            samples.append((time.monotonic(), server_mem(pid)["VmRSS"]))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample)
    sampler.start()
    load = asyncio.run(run_load(base, phantom_png(), load_clients, seconds - 5, 60.0))
    health = httpx.get(f"{base}/health", timeout=10).status_code
    for thread in [*threads, sampler]:
        thread.join(seconds + 30)
    time.sleep(2)
    after = server_mem(pid)["VmRSS"]
    statuses: dict[str, int] = {}
    for r in results:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    return {"idle_rss_mb": idle, "peak_rss_mb": max(v for _, v in samples), "rss_after_mb": after,
            "slow_clients": statuses, "released_after_s": sorted(r["after_s"] for r in results),
            "load_test": load, "health_after": health}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a genuine .ckpt (the model-file case is built from it)")
    parser.add_argument("--model", type=Path, required=True, help="the model to serve (.onnx or .ckpt)")
    parser.add_argument("--cases", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "cases")
    parser.add_argument("--slow", type=int, default=20)
    parser.add_argument("--slow-seconds", type=float, default=60.0)
    parser.add_argument("--load-clients", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "bench_abuse.json")
    args = parser.parse_args(argv)
    cases, rows = args.cases, []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        evil, marker = evil_checkpoint(args.checkpoint, folder)
        rows.append({"kind": "model file", "side": "CLI", **child("model", str(evil))})
        rows.append({"kind": "deflated DICOM", "side": "CLI", **child("dicom", str(cases / "dicom_deflate_bomb" / "deflate_bomb_1GiB.dcm"))})
        rows.append({"kind": "zip archive", "side": "CLI download", **cli_download(cases, folder)})
        rows.append({"kind": "video", "side": "CLI", **child("video", str(cases / "video_pixel_limit" / "h264_12000x12000_3frames.mp4"))})
        # The service refuses the model file at start-up.
        proc = subprocess.run([sys.executable, "-m", "fetalplanes", "serve", "--model", str(evil), "--port", str(free_port())],
                              capture_output=True, text=True, env=ENV, timeout=300)
        rows.append({"kind": "model file", "side": "service start-up", "answer": f"exit {proc.returncode}: "
                     f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}"})
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = start_server(args.model, port)
        try:
            wait_healthy(base, server, 300)
            httpx.post(f"{base}/v1/predict", files={"file": ("w.png", phantom_png(), "image/png")}, timeout=60)
            bomb = (cases / "dicom_deflate_bomb" / "deflate_bomb_1GiB.dcm").read_bytes()
            rows.append({"kind": "deflated DICOM", "side": "service",
                         **service_request(base, server.pid, [("file", ("bomb.dcm", bomb, "application/dicom"))], False)})
            big = (cases / "batch_pixel_budget" / "big_rgba_39.7mpx.png").read_bytes()
            rows.append({"kind": "batch 16 x 39.7 Mpx", "side": "service",
                         **service_request(base, server.pid, [("files", (f"big{i}.png", big, "image/png")) for i in range(16)], True)})
            slow = slow_clients_with_load(base, port, server.pid, args.slow, args.slow_seconds, args.load_clients)
        finally:
            server.terminate()
            server.wait(30)
        marker_created = marker.exists()
    result = {"rows": rows, "slow_clients": slow, "marker_created": marker_created,
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "load_avg": os.getloadavg()},
              "model": str(args.model), "date": time.strftime("%Y-%m-%d %H:%M")}
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


def print_table(result: dict) -> None:
    print("| kind | side | RSS before (MB) | peak RSS (MB) | wall (s) | answer |")
    print("|---|---|---|---|---|---|")
    for r in result["rows"]:
        before = r.get("hwm_before_mb", r.get("rss_before_mb"))
        fmt = lambda v: f"{v:,.0f}" if isinstance(v, (int, float)) else "-"  # noqa: E731
        wall = f"{r['wall_s']:.2f}" if "wall_s" in r else "-"
        print(f"| {r['kind']} | {r['side']} | {fmt(before)} | {fmt(r.get('peak_mb'))} | {wall} | {r['answer'][:150]} |")
    s = result["slow_clients"]
    print(f"\nslow clients: {s['slow_clients']} (released after {s['released_after_s'][:1]}..{s['released_after_s'][-1:]} s); "
          f"server RSS idle {s['idle_rss_mb']:.0f} MB, peak {s['peak_rss_mb']:.0f} MB, after {s['rss_after_mb']:.0f} MB; "
          f"/health after: {s['health_after']}")
    load = s["load_test"]
    print(f"load test at the same time: {load['clients']} clients, {load['requests_ok']} ok, {load['errors']} errors "
          f"{load['error_examples']}, {load['throughput_rps']} req/s, p50 {load['latency_ms']['p50']} ms, "
          f"p95 {load['latency_ms']['p95']} ms")
    print(f"model-file marker created: {result['marker_created']}")


if __name__ == "__main__":
    raise SystemExit(main())
