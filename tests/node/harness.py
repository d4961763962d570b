"""Round-trip harness for the DICOM node against a real Orthanc, run inside a private network namespace.

Used by tests/node/test_roundtrip.py and benchmarks/bench_node.py. ``python harness.py SCENARIO
--model M --out DIR`` must run inside ``unshare -n`` (only loopback up: Orthanc 1.10 binds its
DICOM port on every interface); :func:`run_in_namespace` does that from outside. Each scenario
writes DIR/result.json and the SRs it found in Orthanc (DIR/sr/*.dcm) for the caller to check.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from io import BytesIO
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SHARED_DICOM = REPO.parent / "shared" / "data" / "dicom_us"
NODE_AET = "FETALPLANES"


# ----------------------------------------------------------------------------- inputs
def make_inputs(folder: Path) -> dict[str, Path]:
    """The test instances: uncompressed US, a JPEG Baseline cine (made here from the real RLE
    palette cine's frames), RLE palette, and a damaged one (pixel data cut short)."""
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    from fetalplanes.core.frames import open_frames

    folder.mkdir(parents=True, exist_ok=True)
    out = {"uncompressed": SHARED_DICOM / "US1_UNCR.dcm", "rle_palette": SHARED_DICOM / "OBXXXX1A_rle.dcm"}
    cine = SHARED_DICOM / "dbdicom_0020.DCM"
    ds = pydicom.dcmread(cine)
    frames = [f.image.convert("L") for f in open_frames(cine)][:6]
    streams = []
    for im in frames:
        buf = BytesIO()
        im.save(buf, "JPEG", quality=90)
        streams.append(buf.getvalue())
    for tag in ("RedPaletteColorLookupTableDescriptor", "GreenPaletteColorLookupTableDescriptor",
                "BluePaletteColorLookupTableDescriptor", "RedPaletteColorLookupTableData",
                "GreenPaletteColorLookupTableData", "BluePaletteColorLookupTableData", "PlanarConfiguration"):
        if tag in ds:
            del ds[tag]
    ds.PhotometricInterpretation, ds.SamplesPerPixel = "MONOCHROME2", 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames = len(streams)
    ds.Rows, ds.Columns = frames[0].height, frames[0].width
    ds.PixelData = encapsulate(streams)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["jpeg-cine"])
    out["jpeg_cine"] = folder / "jpeg_cine.dcm"
    ds.save_as(out["jpeg_cine"], enforce_file_format=True)
    bad = pydicom.dcmread(SHARED_DICOM / "US1_UNCR.dcm")
    bad.PixelData = bad.PixelData[:1000]
    bad.SOPInstanceUID = bad.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["bad"])
    out["bad"] = folder / "bad.dcm"
    bad.save_as(out["bad"], enforce_file_format=True)
    return out


def copies(source: Path, folder: Path, n: int, tag: str) -> list[Path]:
    """``n`` copies of one instance, each a new SOP Instance UID in one study (for batches)."""
    import pydicom
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[tag, "study"])
    paths = []
    for i in range(n):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[tag, str(i)])
        ds.InstanceNumber = i + 1
        p = folder / f"{tag}-{i:03d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


# ----------------------------------------------------------------------------- SCU, node, Orthanc queries
def c_store(port: int, files: list[Path], calling: str = "SCANNER", on_each: Any = None) -> list[dict[str, Any]]:
    """C-STORE each file (one association); [{'file', 'uid', 'status', 'comment', 'seconds'}]."""
    import pydicom
    from pynetdicom import AE, StoragePresentationContexts

    ae = AE(ae_title=calling)
    datasets = [pydicom.dcmread(f) for f in files]
    for uid, syntax in sorted({(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets}):
        ae.add_requested_context(uid, syntax)  # one context per pair: an SCP accepts one syntax per context
    del StoragePresentationContexts
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    assert assoc.is_established, "the node refused the association"
    rows = []
    try:
        for i, (f, ds) in enumerate(zip(files, datasets)):
            t = time.monotonic()
            status = assoc.send_c_store(ds)
            rows.append({"file": f.name, "uid": str(ds.SOPInstanceUID), "status": int(status.Status),
                         "comment": str(status.get("ErrorComment", "")), "sent": time.time(),
                         "seconds": time.monotonic() - t})
            if on_each is not None:
                on_each(i)
    finally:
        if assoc.is_established:
            assoc.release()
    return rows


def c_echo(port: int) -> int:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


def refused_context(port: int) -> bool:
    """True when the node accepts the association but refuses its CT Image Storage context."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title="SCANNER")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    try:
        accepted = {str(c.abstract_syntax) for c in assoc.accepted_contexts}
        return assoc.is_established and accepted == {str(Verification)}
    finally:
        if assoc.is_established:
            assoc.release()


def start_node(model: Path, journal: Path, port: int, forward: str, log: Path, retry_s: float = 0.5,
               extra: list[str] | None = None) -> subprocess.Popen:
    ready = journal.parent / f"{journal.name}.ready"
    ready.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "fetalplanes", "dicom-node", "--model", str(model), "--port", str(port),
           "--journal", str(journal), "--forward", forward, "--retry-s", str(retry_s), "--threads", "1",
           "--ready-file", str(ready), *(extra or [])]
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    deadline = time.monotonic() + 120
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the node did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    return proc


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def sr_in_orthanc(orthanc: Any) -> list[dict[str, Any]]:
    """Every SR instance in Orthanc, found by QIDO-RS (modality SR), as {'study','series','sop'}."""
    url = f"{orthanc.dicomweb}/instances?Modality=SR&includefield=0020000D"
    with urllib.request.urlopen(url, timeout=10) as r:
        body = r.read()
    items = json.loads(body) if body else []
    return [{"study": i["0020000D"]["Value"][0], "series": i["0020000E"]["Value"][0], "sop": i["00080018"]["Value"][0]}
            for i in items]


def fetch_srs(orthanc: Any, found: list[dict[str, Any]], folder: Path) -> list[Path]:
    from dicomweb_client.api import DICOMwebClient

    folder.mkdir(parents=True, exist_ok=True)
    client = DICOMwebClient(orthanc.dicomweb)
    out = []
    for f in found:
        ds = client.retrieve_instance(f["study"], f["series"], f["sop"])
        p = folder / f"{f['sop']}.dcm"
        ds.save_as(p, enforce_file_format=True)
        out.append(p)
    return out


def wait_for(predicate: Any, timeout: float, step: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def journal_states(journal: Path) -> dict[str, str]:
    """The states of a journal a live node is writing, read as a monitor does: ``writer=False``
    takes no lock and deletes nothing (the node's in-flight writes stay its own)."""
    from fetalplanes.node.journal import Journal

    j = Journal(journal, writer=False)
    return {u: j.state(u) or "" for u in j.uids()}


_JOURNAL_HOLDER = """
import sys, time
from fetalplanes.node.journal import Journal
j = Journal(sys.argv[1])
(j.path("1.9") / ".received.json.live.tmp").parent.mkdir(parents=True, exist_ok=True)
(j.path("1.9") / ".received.json.live.tmp").write_bytes(b"in flight")  # a write under way
print("held", flush=True)
time.sleep(120)
"""


def hold_journal(root: Path) -> subprocess.Popen:
    """A process that holds ``root`` for writing (one in-flight temporary file in it) until killed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", _JOURNAL_HOLDER, str(root)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc



# ----------------------------------------------------------------------------- scenarios
def scenario_a(model: Path, out: Path, orthanc: Any) -> dict[str, Any]:
    """C-STORE uncompressed, JPEG Baseline cine, RLE palette (+ a bad one) -> SR in Orthanc."""
    from fetalplanes.node.orthanc import free_port

    inputs = make_inputs(out / "inputs")
    port = free_port()
    node = start_node(model, out / "journal", port, f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}", out / "node.log")
    try:
        echo = c_echo(port)
        refused = refused_context(port)
        sent = c_store(port, [inputs[k] for k in ("uncompressed", "jpeg_cine", "rle_palette", "bad")])
        ok = [r for r in sent if r["status"] == 0]
        wait_for(lambda: len(sr_in_orthanc(orthanc)) >= len(ok), 90)
    finally:
        stop(node)
    found = sr_in_orthanc(orthanc)
    fetch_srs(orthanc, found, out / "sr")
    return {"echo": echo, "ct_refused": refused, "sent": sent, "sr": found, "journal": journal_states(out / "journal"),
            "node_log": (out / "node.log").read_text()[-4000:]}


def scenario_b(model: Path, out: Path, orthanc: Any) -> dict[str, Any]:
    """STOW the sources to Orthanc, then `fetalplanes dicomweb` pulls the study and STOWs SRs back."""
    from dicomweb_client.api import DICOMwebClient
    import pydicom

    inputs = make_inputs(out / "inputs")
    sources = [pydicom.dcmread(inputs[k]) for k in ("uncompressed", "jpeg_cine")]
    study = str(sources[0].StudyInstanceUID)
    sources[1].StudyInstanceUID = study  # one study holding both
    DICOMwebClient(orthanc.dicomweb).store_instances(sources)
    cmd = [sys.executable, "-m", "fetalplanes", "dicomweb", "--model", str(model), "--url", orthanc.dicomweb,
           "--study", study, "--journal", str(out / "journal")]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    runs = [subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300) for _ in range(2)]
    found = sr_in_orthanc(orthanc)
    fetch_srs(orthanc, found, out / "sr")
    return {"study": study, "sources": [str(s.SOPInstanceUID) for s in sources], "sr": found,
            "returncodes": [r.returncode for r in runs], "stdout": [r.stdout[-3000:] for r in runs],
            "stderr": [r.stderr[-3000:] for r in runs]}


def scenario_c(model: Path, out: Path, orthanc: Any) -> dict[str, Any]:
    """Orthanc down while the node receives: results queue, then arrive once Orthanc is up."""
    from fetalplanes.node.orthanc import free_port

    orthanc.stop()
    files = copies(SHARED_DICOM / "US1_UNCR.dcm", out / "inputs", 4, "orthanc-down")
    port = free_port()
    node = start_node(model, out / "journal", port, f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}", out / "node.log")
    try:
        sent = c_store(port, files)
        queued = wait_for(lambda: list(journal_states(out / "journal").values()).count("processed") == len(files), 60)
        time.sleep(1.5)  # at least one failed attempt each
        states_down = journal_states(out / "journal")
        orthanc.start()
        wait_for(lambda: list(journal_states(out / "journal").values()).count("delivered") == len(files), 90)
    finally:
        stop(node)
    found = sr_in_orthanc(orthanc)
    fetch_srs(orthanc, found, out / "sr")
    from fetalplanes.node.journal import Journal

    j = Journal(out / "journal", writer=False)
    return {"sent": sent, "queued": queued, "states_while_down": states_down,
            "attempts": {u: j.delivery(u)["attempts"] for u in j.uids()},
            "states": journal_states(out / "journal"), "sr": found}


def scenario_d(model: Path, out: Path, orthanc: Any, n: int = 8, kill_after: int = 4) -> dict[str, Any]:
    """SIGKILL the node mid-batch, restart it: every journaled instance gets exactly one result."""
    from fetalplanes.node.orthanc import free_port

    files = copies(SHARED_DICOM / "OBXXXX1A_rle.dcm", out / "inputs", n, "sigkill")
    port = free_port()
    forward = f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"
    node = start_node(model, out / "journal", port, forward, out / "node.log")
    killed_at: dict[str, Any] = {}

    def kill_mid(i: int) -> None:
        if i == kill_after - 1:
            killed_at["states"] = journal_states(out / "journal")
            os.kill(node.pid, signal.SIGKILL)
            node.wait()

    sent: list[dict[str, Any]] = []
    try:
        sent = c_store(port, files, on_each=kill_mid)
    except Exception as exc:  # the association dies with the node: expected
        killed_at["scu_error"] = f"{type(exc).__name__}: {exc}"
    node = start_node(model, out / "journal", port, forward, out / "node.log")
    try:
        rest = [f for f in files if f.name not in {s["file"] for s in sent}]
        if rest:
            sent += c_store(port, rest)
        wait_for(lambda: list(journal_states(out / "journal").values()).count("delivered") == n, 120)
    finally:
        stop(node)
    found = sr_in_orthanc(orthanc)
    fetch_srs(orthanc, found, out / "sr")
    return {"sent": sent, "killed": killed_at, "states": journal_states(out / "journal"), "sr": found}


def scenario_e(model: Path, out: Path, orthanc: Any) -> dict[str, Any]:
    """A .ckpt model with --overlay: the SR and a heat-map SC arrive in the source's study."""
    from fetalplanes.node.orthanc import free_port

    port = free_port()
    node = start_node(model, out / "journal", port, f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}", out / "node.log",
                      extra=["--overlay"])
    try:
        sent = c_store(port, [SHARED_DICOM / "US1_UNCR.dcm"])
        wait_for(lambda: len(orthanc.get("/instances")) >= 2, 120)
    finally:
        stop(node)
    tags = [orthanc.get(f"/instances/{i}/simplified-tags") for i in orthanc.get("/instances")]
    keep = ("Modality", "SeriesDescription", "BurnedInAnnotation", "StudyInstanceUID", "SeriesInstanceUID", "ImageComments")
    return {"sent": sent, "instances": [{k: t.get(k) for k in keep} for t in tags]}


SCENARIOS = {"a": scenario_a, "b": scenario_b, "c": scenario_c, "d": scenario_d, "e": scenario_e}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenarios")
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, help="the .ckpt for scenario e (heat-map SC)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    from fetalplanes.node.orthanc import LocalOrthanc

    for name in args.scenarios:
        out = args.out / name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        orthanc = LocalOrthanc(out / "orthanc").start()
        try:
            result = SCENARIOS[name](args.checkpoint if name == "e" else args.model, out, orthanc)
        except Exception as exc:  # the caller asserts on result.json: say what broke
            import traceback

            result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        finally:
            orthanc.stop()
        (out / "result.json").write_text(json.dumps(result, indent=1, default=str))


def run_in_namespace(scenarios: str, model: Path, out: Path, timeout: float = 600,
                     checkpoint: Path | None = None) -> subprocess.CompletedProcess:
    """Run :func:`main` inside ``unshare -n`` with only loopback up (``unshare -rn`` if plain -n is refused)."""
    script = f"ip link set lo up && exec {sys.executable} {Path(__file__).resolve()} {scenarios} --model {model} --out {out}"
    if checkpoint is not None:
        script += f" --checkpoint {checkpoint}"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    for unshare in (["unshare", "-n"], ["unshare", "-rn"]):
        proc = subprocess.run([*unshare, "sh", "-c", script], capture_output=True, text=True, env=env, timeout=timeout)
        if "Operation not permitted" not in proc.stderr:
            return proc
    return proc


def namespace_available() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    for unshare in (["unshare", "-n"], ["unshare", "-rn"]):
        if subprocess.run([*unshare, "true"], capture_output=True).returncode == 0:
            return True
    return False


if __name__ == "__main__":
    main()
