"""Round trips against a real Orthanc (issue 21): (a) C-STORE in, SR out by C-STORE, found by QIDO-RS
in the same study; (b) the dicomweb pull path; (c) Orthanc down while receiving; (d) SIGKILL mid-batch;
(e) a checkpoint model with --overlay: the heat-map SC beside the SR.

Orthanc 1.10 binds its DICOM port on every interface, so everything (Orthanc, the node, the SCU)
runs inside a network namespace of the test's own with only loopback up (tests/node/harness.py);
the test asserts on what the harness found, reading the SRs back with plain pydicom.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(onnx_model: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory,
         shared_data: Path) -> dict[str, dict]:
    """All five scenarios in one namespace run (one Orthanc start each), their results by name."""
    from fetalplanes.node.orthanc import orthanc_binary, plugin_path

    if orthanc_binary() is None or plugin_path() is None:
        pytest.skip("Orthanc + DICOMweb plugin not installed (apt-get install orthanc orthanc-dicomweb)")
    if not harness.namespace_available():
        pytest.skip("no private network namespace (unshare -n) available for Orthanc")
    out = tmp_path_factory.mktemp("roundtrip")
    proc = harness.run_in_namespace("abcde", onnx_model, out, checkpoint=tiny_checkpoint)
    results = {}
    for name in "abcde":
        path = out / name / "result.json"
        assert path.is_file(), proc.stderr[-3000:]
        results[name] = json.loads(path.read_text())
        results[name]["_dir"] = str(out / name)
        assert "error" not in results[name], results[name].get("traceback")
    return results


def _read_srs(folder: str) -> list:
    import pydicom

    return [pydicom.dcmread(p) for p in sorted(Path(folder, "sr").glob("*.dcm"))]


def test_a_cstore_in_sr_out_in_the_same_study(runs: dict, onnx_model: Path) -> None:
    from fetalplanes.node.sr import file_sha256, read_sr
    from fetalplanes.runtime import load_predictor

    a = runs["a"]
    assert a["echo"] == 0 and a["ct_refused"] is True
    status = {r["file"]: r["status"] for r in a["sent"]}
    assert status == {"US1_UNCR.dcm": 0, "jpeg_cine.dcm": 0, "OBXXXX1A_rle.dcm": 0, "bad.dcm": 0xC000}
    bad = next(r for r in a["sent"] if r["file"] == "bad.dcm")
    assert "pixel data" in bad["comment"]
    good = {r["uid"] for r in a["sent"] if r["status"] == 0}
    assert set(a["journal"]) == good and set(a["journal"].values()) == {"delivered"}
    srs = _read_srs(a["_dir"])
    assert len(srs) == len(good) == len(a["sr"])
    names = set(load_predictor(onnx_model).spec.class_names)
    sha = file_sha256(onnx_model)
    by_source = {}
    for ds in srs:
        assert ds.Modality == "SR" and ds.VerificationFlag == "UNVERIFIED"
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
        groups = read_sr(ds)
        assert groups
        for g in groups:
            # A plane, or the OOD gate's coded "Not a fetal plane" (the tiny model's gate rejects
            # some real ultrasound): either way a probability and the model's hash.
            assert (g["plane"] in names) != (g["status"] == "NOT_FETAL_PLANE"), g
            assert 0.0 <= g["probability"] <= 1.0 and g["sha256"] == sha
            by_source.setdefault(g["referenced_sop"], []).append((g, ds))
    assert set(by_source) == good
    for r in a["sent"]:
        if r["status"] == 0:
            ds = by_source[r["uid"]][0][1]
            source_study = next(s["study"] for s in a["sr"] if s["sop"] == ds.SOPInstanceUID)
            assert ds.StudyInstanceUID == source_study
            assert ds.SeriesInstanceUID != r["uid"]
    cine = next(r["uid"] for r in a["sent"] if r["file"] == "jpeg_cine.dcm")
    frames = [g["frame"] for g, _ in by_source[cine]]
    assert all(f is not None and 1 <= f <= 6 for f in frames)  # cine: best frame per plane, 1-based
    assert all(g["frames"] == 6 for g, _ in by_source[cine])  # every frame was classified


def test_b_dicomweb_pulls_and_stows_back(runs: dict) -> None:
    from fetalplanes.node.sr import read_sr

    b = runs["b"]
    assert b["returncodes"] == [0, 0], b["stderr"]
    srs = _read_srs(b["_dir"])
    assert len(srs) == 2 and {ds.StudyInstanceUID for ds in srs} == {b["study"]}
    assert {read_sr(ds)[0]["referenced_sop"] for ds in srs} == set(b["sources"])
    first, second = (json.loads(out) for out in b["stdout"])
    assert first["delivered"] == 2 and not first["failed"] and not first["undelivered"]
    assert sorted(second["sr"]) == sorted(first["sr"])  # a second pull makes no new result


def test_c_orthanc_down_results_queue_then_arrive_once(runs: dict) -> None:
    c = runs["c"]
    assert all(r["status"] == 0 for r in c["sent"]) and len(c["sent"]) == 4
    assert c["queued"] and set(c["states_while_down"].values()) == {"processed"}
    assert min(c["attempts"].values()) >= 2  # at least one failed try, then the successful one
    assert set(c["states"].values()) == {"delivered"}
    assert len(c["sr"]) == 4 and len({s["sop"] for s in c["sr"]}) == 4


def test_d_sigkill_mid_batch_every_instance_one_result(runs: dict) -> None:
    from fetalplanes.node.sr import read_sr

    d = runs["d"]
    before = d["killed"]["states"]
    assert "received" in before.values() or "processed" in before.values()  # really killed mid-batch
    acknowledged = {r["uid"] for r in d["sent"] if r["status"] == 0}
    assert set(d["states"]) == acknowledged and set(d["states"].values()) == {"delivered"}
    referenced = [read_sr(ds)[0]["referenced_sop"] for ds in _read_srs(d["_dir"])]
    assert sorted(referenced) == sorted(acknowledged)  # exactly one SR per instance: none lost, none twice


def test_e_overlay_sc_arrives_beside_the_sr(runs: dict) -> None:
    e = runs["e"]
    assert [r["status"] for r in e["sent"]] == [0]
    by_modality = {i["Modality"]: i for i in e["instances"]}
    assert set(by_modality) == {"SR", "OT"}
    sc, sr = by_modality["OT"], by_modality["SR"]
    assert sc["BurnedInAnnotation"] == "YES" and "NOT FOR DIAGNOSTIC USE" in sc["ImageComments"]
    assert sc["StudyInstanceUID"] == sr["StudyInstanceUID"] and sc["SeriesInstanceUID"] != sr["SeriesInstanceUID"]
