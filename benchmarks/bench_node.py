"""DICOM node end to end: N US instances C-STOREd in a row -> SR stored in a real Orthanc (issue 21).

Runs everything (Orthanc, the node as a process, the SCU) inside a private network namespace
(``unshare -n``, loopback only; Orthanc 1.10 binds its DICOM port on every interface). Measures,
per instance, seconds from the start of its C-STORE to its SR first seen by QIDO-RS in Orthanc;
the node's peak RSS (VmHWM); results delivered / lost / duplicated. One bad instance (pixel data
cut short) is in the batch and must be refused without costing any other result.

    python benchmarks/bench_node.py --model model.onnx [--n 100] [--tag idle_2vcpu]

Prints a table and writes benchmarks/results/bench_node_<tag>.json. Goal: <= 2 s per instance,
0 lost, 0 duplicated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests" / "node"))
sys.path.insert(0, str(REPO / "src"))


def inside(model: Path, n: int, work: Path, paced: bool = False) -> dict:
    import harness
    import pydicom

    from fetalplanes.node.journal import Journal
    from fetalplanes.node.orthanc import LocalOrthanc, free_port

    files = harness.copies(harness.SHARED_DICOM / "US1_UNCR.dcm", work / "inputs", n - 1, "bench")
    bad = harness.make_inputs(work / "bad_inputs")["bad"]
    files.insert(n // 2, bad)
    orthanc = LocalOrthanc(work / "orthanc").start()
    port = free_port()
    node = harness.start_node(model, work / "journal", port, f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}",
                              work / "node.log")
    seen: dict[str, float] = {}
    stop = threading.Event()

    def poll() -> None:  # SR first seen in Orthanc, by SR SOP Instance UID
        while not stop.is_set():
            try:
                for s in harness.sr_in_orthanc(orthanc):
                    seen.setdefault(s["sop"], time.time())
            except OSError:
                pass
            time.sleep(0.1)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    t0 = time.time()
    try:
        if paced:  # one at a time, each waiting for its SR: latency without queueing
            sent = []
            for f in files:
                row = harness.c_store(port, [f])[0]
                sent.append(row)
                if row["status"] == 0:
                    harness.wait_for(lambda: len(seen) >= sum(r["status"] == 0 for r in sent), 60, step=0.02)
        else:
            sent = harness.c_store(port, files)
        ok = [r for r in sent if r["status"] == 0]
        harness.wait_for(lambda: len(seen) >= len(ok), 600, step=0.5)
        wall = time.time() - t0
        peak_kb = next(int(line.split()[1]) for line in Path(f"/proc/{node.pid}/status").read_text().splitlines()
                       if line.startswith("VmHWM"))
    finally:
        stop.set()
        poller.join()
        harness.stop(node)
    found = harness.sr_in_orthanc(orthanc)
    orthanc.stop()
    journal = Journal(work / "journal")
    sr_of = {u: journal.outcome(u).get("sr") for u in journal.uids()}
    latencies = [seen[sr_of[r["uid"]]] - (r["sent"] - r["seconds"]) for r in ok if sr_of.get(r["uid"]) in seen]
    srs = [s["sop"] for s in found]
    stages = _stages(work / "journal")
    delivered = sum(1 for r in ok if sr_of.get(r["uid"]) in set(srs))
    return {
        "mode": "paced" if paced else "burst", "instances_sent": len(files), "acknowledged": len(ok),
        "refused": [{"file": r["file"], "status": f"0x{r['status']:04X}", "comment": r["comment"]}
                    for r in sent if r["status"] != 0],
        "delivered": delivered, "lost": len(ok) - delivered, "duplicated": len(srs) - len(set(srs)),
        "sr_in_orthanc": len(srs), "wall_s": wall, "throughput_s_per_instance": wall / len(files),
        "latency_s": {"mean": statistics.mean(latencies), "median": statistics.median(latencies),
                      "p95": sorted(latencies)[int(0.95 * (len(latencies) - 1))], "max": max(latencies)},
        "node_peak_rss_mb": peak_kb / 1024, "node_stages_s": stages,
    }


def _stages(folder: Path) -> dict:
    """Inside the node, from the journal's own time stamps: journaled -> SR written -> delivered (medians)."""
    recv, proc = [], []
    for d in (folder / "instances").iterdir():
        try:
            r, p, q = (json.loads((d / n).read_text())[k] for n, k in (("received.json", "received"),
                       ("processed.json", "processed"), ("delivered.json", "delivered")))
        except (OSError, KeyError, ValueError):
            continue
        recv.append(p - r)
        proc.append(q - p)
    return {"journaled_to_sr_written_median": statistics.median(recv),
            "sr_written_to_delivered_median": statistics.median(proc)}


def table(r: dict) -> str:
    lat = r["latency_s"]
    rows = [("mode", r["mode"]), ("instances sent (1 bad)", r["instances_sent"]), ("acknowledged (0x0000)", r["acknowledged"]),
            ("refused", ", ".join(f"{x['file']} {x['status']}" for x in r["refused"])),
            ("end to end s/instance, mean", f"{lat['mean']:.2f}"), ("  median", f"{lat['median']:.2f}"),
            ("  p95", f"{lat['p95']:.2f}"), ("  max", f"{lat['max']:.2f}"),
            ("wall s / instance (batch)", f"{r['throughput_s_per_instance']:.2f}"),
            ("in node: journaled -> SR, median s", f"{r['node_stages_s']['journaled_to_sr_written_median']:.2f}"),
            ("in node: SR -> delivered, median s", f"{r['node_stages_s']['sr_written_to_delivered_median']:.2f}"),
            ("node peak RSS (MB)", f"{r['node_peak_rss_mb']:.0f}"),
            ("delivered / lost / duplicated", f"{r['delivered']} / {r['lost']} / {r['duplicated']}")]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--tag", default="idle_2vcpu")
    p.add_argument("--work", type=Path, default=Path("/tmp/fetalplanes-bench-node"))
    p.add_argument("--paced", action="store_true", help="Send the next instance only once the previous SR is in Orthanc.")
    p.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.inside:
        print(json.dumps(inside(a.model.resolve(), a.n, a.work, a.paced)))
        return
    import shutil

    shutil.rmtree(a.work, ignore_errors=True)
    a.work.mkdir(parents=True)
    cmd = (f"ip link set lo up && exec {sys.executable} {Path(__file__).resolve()} --inside --model {a.model.resolve()} "
           f"--n {a.n} --work {a.work}" + (" --paced" if a.paced else ""))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    load_before = os.getloadavg()[0]
    proc = subprocess.run(["unshare", "-n", "sh", "-c", cmd], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"benchmark failed: {proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(load_average_1min={"before": load_before, "after": os.getloadavg()[0]}, model=str(a.model), cpu=platform.processor() or platform.machine(), cores=os.cpu_count(),
                  command=" ".join([Path(sys.executable).name, *sys.argv]))
    print(table(result))
    out = HERE / "results" / f"bench_node_{a.tag}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
