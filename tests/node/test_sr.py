"""The SR: TID 1500 content readable with plain pydicom, deterministic UIDs, the not-a-fetal-plane code."""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pydicom
import pytest

from fetalplanes.core.postprocess import STATES
from fetalplanes.runtime.predictor import FileResult
from fetalplanes.node.classify import admit, best_per_plane, classify_file
from fetalplanes.node.sr import AlgorithmInfo, build_sr, file_sha256, read_sr, result_uids


def _roundtrip(ds: pydicom.Dataset) -> pydicom.Dataset:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(BytesIO(buf.getvalue()))


def test_sr_of_a_cine_reports_the_best_frame_per_plane(stub_predictor, dicom_us: Path) -> None:
    path = dicom_us / "dbdicom_0020.DCM"
    results = classify_file(stub_predictor, path)
    assert len(results) == 11 and all(r.ok for r in results)
    header = admit(path.read_bytes(), path.name).header
    algo = AlgorithmInfo.from_predictor(stub_predictor)
    sr = _roundtrip(build_sr(header, results, algo))
    assert sr.VerificationFlag == "UNVERIFIED" and sr.StudyInstanceUID == header.StudyInstanceUID
    assert sr.SeriesInstanceUID != header.SeriesInstanceUID
    groups = read_sr(sr)
    best = best_per_plane(results)
    assert [g["frame"] for g in groups] == [r.frame + 1 for r in best]
    for g, r in zip(groups, best):
        assert g["plane"] == r.prediction.label and g["probability"] == pytest.approx(r.prediction.confidence)
        assert g["sha256"] == file_sha256(stub_predictor.path) and g["algorithm"] == "mean-stub"
        assert g["referenced_sop"] == header.SOPInstanceUID and g["frames"] == 11
        assert g["status"] == "CLASSIFIED"


def test_same_instance_same_result_uids(stub_predictor, dicom_us: Path) -> None:
    path = dicom_us / "US1_UNCR.dcm"
    header = admit(path.read_bytes(), path.name).header
    algo = AlgorithmInfo.from_predictor(stub_predictor)
    one, two = (build_sr(header, classify_file(stub_predictor, path), algo) for _ in range(2))
    assert one.SOPInstanceUID == two.SOPInstanceUID == result_uids(header.SOPInstanceUID, algo).sr
    other = AlgorithmInfo(algo.name, algo.version, "0" * 64, algo.class_names)
    assert result_uids(header.SOPInstanceUID, other).sr != one.SOPInstanceUID  # a new model is a new result


@dataclass(frozen=True)
class OodPrediction:  # a Prediction reduced to what the SR reads (state: core.postprocess.STATES)
    label: str
    confidence: float
    abstain: bool
    state: str


def test_not_a_fetal_plane_and_abstain_are_coded(stub_predictor, dicom_us: Path) -> None:
    path = dicom_us / "US1_UNCR.dcm"
    header = admit(path.read_bytes(), path.name).header
    algo = AlgorithmInfo.from_predictor(stub_predictor)
    ood = FileResult(0, path, prediction=OodPrediction("Other", 0.4, False, "out_of_distribution"))  # type: ignore[arg-type]
    g = read_sr(_roundtrip(build_sr(header, [ood], algo)))[0]
    assert (g["plane_code"], g["plane"], g["status"]) == ("NOT_FETAL_PLANE", "Not a fetal plane", "NOT_FETAL_PLANE")
    low = FileResult(0, path, prediction=OodPrediction("Other", 0.4, True, "abstain"))  # type: ignore[arg-type]
    assert {ood.prediction.state, low.prediction.state} <= set(STATES)  # the stub speaks Prediction.state's values
    assert read_sr(_roundtrip(build_sr(header, [low], algo)))[0]["status"] == "ABSTAINED"


def test_no_answered_frame_no_sr(stub_predictor, dicom_us: Path) -> None:
    header = admit((dicom_us / "US1_UNCR.dcm").read_bytes(), "x").header
    with pytest.raises(ValueError, match="no frame"):
        build_sr(header, [FileResult(0, Path("x"), error="x: frame 0: bad")], AlgorithmInfo.from_predictor(stub_predictor))


def test_an_instance_without_type2_patient_attributes_still_gets_its_report(stub_predictor, dicom_us: Path) -> None:
    """Anonymizers drop PatientName & co. (Type 2: present, may be empty); highdicom needs them, and the
    node used to mark such an instance failed with "AttributeError: ... no attribute 'PatientName'"."""
    path = dicom_us / "US1_UNCR.dcm"
    header = admit(path.read_bytes(), path.name).header
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber"):
        if keyword in header:
            delattr(header, keyword)
    sr = _roundtrip(build_sr(header, classify_file(stub_predictor, path), AlgorithmInfo.from_predictor(stub_predictor)))
    assert sr.StudyInstanceUID == header.StudyInstanceUID and sr.PatientName == "" and read_sr(sr)
    assert "PatientName" not in header  # the received header is not changed
    del header.StudyInstanceUID
    with pytest.raises(ValueError, match="no StudyInstanceUID"):
        build_sr(header, classify_file(stub_predictor, path), AlgorithmInfo.from_predictor(stub_predictor))
