"""The result object: a TID 1500 measurement report in a Comprehensive 3D SR (highdicom), one per instance.

What the report holds (IHE AI Results asks for a TID 1500 SR), per reported frame (the best frame
per plane, :func:`fetalplanes.node.classify.best_per_plane`), one *Measurements and Qualitative
Evaluations* group (TID 1501) with:

- the plane, a coded qualitative evaluation: concept :data:`PLANE` with one value per class name
  of the model, or :data:`NOT_FETAL_PLANE` when the out-of-distribution gate says so;
- the result status, a coded qualitative evaluation: ``CLASSIFIED``, ``ABSTAINED`` (confidence
  below the model's threshold) or ``NOT_FETAL_PLANE``;
- the probability of the plane, a numeric measurement (UCUM unit ``1``);
- the algorithm identification (TID 4019): the model's name, version, and ``sha256=<file hash>``;
- a source image reference: the received instance and frame (1-based, PS3.3 Referenced Frame Number).

The SR is a new series of the source's study, ``VerificationFlag`` UNVERIFIED (a machine
result nobody has signed). Its UIDs are derived from the source SOP Instance UID
(:func:`result_uids`), so the same instance always gives the same SR instance: sending it twice
cannot make two results in a PACS.

Codes: plane values use the private coding scheme :data:`SCHEME` (no standard code set names
the FETAL_PLANES_DB planes); the procedure is SNOMED CT 268445003 "Ultrasound scan - obstetric".
"""

from __future__ import annotations

import copy
import hashlib
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from fetalplanes.node.classify import best_per_plane, verdict

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from fetalplanes.runtime.predictor import FileResult

__all__ = ["SCHEME", "AlgorithmInfo", "ResultUIDs", "build_sr", "file_sha256", "plane_code", "read_sr", "result_uids"]

SCHEME = "99FETALPLANES"
"""Private coding scheme designator (PS3.16 8.2: private schemes start with 99)."""
SERIES_NUMBER = 9901
SERIES_DESCRIPTION = "fetalplanes AI result (UNVERIFIED)"
_CODES = {  # concept -> (code value, meaning)
    "plane": ("PLANE", "Fetal ultrasound standard plane"),
    "status": ("STATUS", "Classification result status"),
    "probability": ("PROBABILITY", "Probability of the plane"),
    "frames": ("FRAMES", "Frames classified"),
    "classified": ("CLASSIFIED", "Classified"),
    "abstained": ("ABSTAINED", "Abstained: confidence below threshold"),
    "not_fetal_plane": ("NOT_FETAL_PLANE", "Not a fetal plane"),
}


def _code(key: str):  # noqa: ANN202 - a highdicom CodedConcept
    from highdicom.sr import CodedConcept

    value, meaning = _CODES[key]
    return CodedConcept(value, SCHEME, meaning)


PLANE = _CODES["plane"]
NOT_FETAL_PLANE = _CODES["not_fetal_plane"]


def plane_code(class_name: str, class_names: Sequence[str]):  # noqa: ANN201 - a highdicom CodedConcept
    """The coded value of a plane: ``P<index>_<NAME>`` (at most 16 characters, the SH limit; the
    index keeps two names that shorten alike apart), meaning the class name as the model says it."""
    from highdicom.sr import CodedConcept

    index = list(class_names).index(class_name)
    slug = re.sub(r"[^A-Z0-9]+", "_", class_name.upper()).strip("_")
    return CodedConcept(f"P{index}_{slug}"[:16], SCHEME, class_name[:64])


@dataclass(frozen=True)
class AlgorithmInfo:
    """The model as the SR names it (TID 4019): name, version, file hash (sha256 hex), class names."""

    name: str
    version: str
    sha256: str
    class_names: tuple[str, ...]

    @classmethod
    def from_predictor(cls, predictor: Any) -> AlgorithmInfo:
        spec = predictor.spec
        return cls(spec.name, spec.version or "unversioned", file_sha256(predictor.path), tuple(spec.class_names))


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ResultUIDs:
    series: str
    sr: str
    sc: str
    sc_series: str  # a Secondary Capture is modality OT: DICOM wants it in a series of its own


def result_uids(source_uid: str, algorithm: AlgorithmInfo) -> ResultUIDs:
    """UIDs of the result series, SR and SC, derived from the source SOP Instance UID and the model
    hash: the same instance and model always give the same result instances (idempotent delivery)."""
    from pydicom.uid import generate_uid

    def uid(role: str) -> str:
        return str(generate_uid(entropy_srcs=[source_uid, algorithm.sha256, role]))

    return ResultUIDs(uid("series"), uid("sr"), uid("sc"), uid("sc-series"))


def build_sr(source: Dataset, results: list[FileResult], algorithm: AlgorithmInfo) -> Dataset:
    """The Comprehensive 3D SR for one source instance (header ``source``, no pixel data needed).

    ``results``: the FileResults of every frame (:func:`fetalplanes.node.classify.classify_file`);
    the best frame per plane is reported. Raises ValueError when no frame was answered.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    reported = best_per_plane(results)
    if not reported:
        raise ValueError("no frame of the instance could be classified")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # highdicom warns about legal-but-odd names real scanners write
        return _build(_evidence(source), results, reported, algorithm)


# Type 2 attributes of the Patient and General Study modules (PS3.3 C.7.1.1, C.7.2.1) that highdicom
# copies from the evidence: they must be present but may be empty. Anonymizers and some scanners drop
# them, and highdicom then fails with an AttributeError; present-but-empty is what the standard allows.
_TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                 "StudyDate", "StudyTime", "ReferringPhysicianName")


def _evidence(source: Dataset) -> Dataset:
    """``source`` with the absent Type 2 patient/study attributes added empty (a copy; the source is
    untouched). ValueError, one line, when the Type 1 StudyInstanceUID is missing: the report belongs
    in the source's study and cannot be placed without it."""
    if not str(source.get("StudyInstanceUID", "") or ""):
        raise ValueError("the instance has no StudyInstanceUID (0020,000D); expected one, so that the report "
                         "can join its study")
    missing = [k for k in _TYPE2_COPIED if k not in source]
    if not missing:
        return source
    evidence = copy.deepcopy(source)  # Dataset.copy() is shallow: it would add them to the source too
    for keyword in missing:
        setattr(evidence, keyword, None)
    return evidence


def _build(source: Dataset, results: list[FileResult], reported: list[FileResult], algorithm: AlgorithmInfo) -> Dataset:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    answered = sum(r.prediction is not None for r in results)
    algo = hd.sr.AlgorithmIdentification(algorithm.name[:64], algorithm.version[:64],
                                         parameters=[f"sha256={algorithm.sha256}"], manufacturer="fetalplanes")
    groups = [_group(source, r, algorithm, algo, answered, len(results)) for r in reported]
    uids = result_uids(str(source.SOPInstanceUID), algorithm)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uids.series, name="fetalplanes", model_name=algorithm.name[:64]),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=hd.sr.CodedConcept("268445003", "SCT", "Ultrasound scan - obstetric"),
        imaging_measurements=groups,
        referenced_images=[source],
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[source], content=report[0], series_instance_uid=uids.series, series_number=SERIES_NUMBER,
        sop_instance_uid=uids.sr, instance_number=1, manufacturer="fetalplanes", is_complete=True,
        is_final=False, is_verified=False, series_description=SERIES_DESCRIPTION,
    )


def _group(source: Dataset, result: FileResult, algorithm: AlgorithmInfo, algo: Any, answered: int, total: int):  # noqa: ANN202
    import highdicom as hd

    pred = result.prediction
    assert pred is not None
    v = verdict(pred)
    frame = 1 if result.frame is None else result.frame + 1  # PS3.3: frame numbers start at 1
    plane = _code("not_fetal_plane") if v == "not_fetal_plane" else plane_code(pred.label, algorithm.class_names)
    where = f"frame {frame}" if result.frame is not None else "image"
    tracking = hd.sr.TrackingIdentifier(
        uid=str(_derived(source.SOPInstanceUID, algorithm.sha256, f"group-{frame}")),
        identifier=f"{where}: {'not a fetal plane' if v == 'not_fetal_plane' else pred.label}"[:64])
    unit = hd.sr.CodedConcept("1", "UCUM", "no units")
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        algorithm_id=algo,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(_code("plane"), plane),
                                 hd.sr.QualitativeEvaluation(_code("status"), _code(v))],
        measurements=[hd.sr.Measurement(_code("probability"), float(pred.confidence), unit, algorithm_id=algo),
                      hd.sr.Measurement(_code("frames"), float(answered), unit)],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(
            source, referenced_frame_numbers=[frame] if result.frame is not None else None)],
    )


def _derived(*parts: Any) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


def read_sr(ds: Dataset) -> list[dict[str, Any]]:
    """The reported groups of an SR written by :func:`build_sr`, read back with plain pydicom:
    [{'plane': meaning, 'plane_code': value, 'status': value, 'probability': float,
    'frames': float, 'sha256': str, 'algorithm': name, 'referenced_sop': uid, 'frame': int|None}].
    For tests, audits and the docs; walks the content tree, no highdicom needed."""
    out: list[dict[str, Any]] = []
    for group in _walk(ds):
        if _concept(group) != ("126010", "DCM"):  # Imaging Measurements container
            continue
        for item in group.get("ContentSequence", []):
            if _concept(item) == ("125007", "DCM"):  # Measurement Group
                out.append(_read_group(item))
    return out


def _read_group(group: Dataset) -> dict[str, Any]:
    row: dict[str, Any] = {"frame": None}
    for item in _walk(group):
        value, scheme = _concept(item)
        if scheme == SCHEME and value in ("PLANE", "STATUS") and "ConceptCodeSequence" in item:
            code = item.ConceptCodeSequence[0]
            if value == "PLANE":
                row.update(plane=code.CodeMeaning, plane_code=code.CodeValue)
            else:
                row["status"] = code.CodeValue
        elif scheme == SCHEME and value in ("PROBABILITY", "FRAMES") and "MeasuredValueSequence" in item:
            row[value.lower()] = float(item.MeasuredValueSequence[0].NumericValue)
        elif (value, scheme) == ("111002", "DCM"):  # Algorithm Parameters
            text = str(item.TextValue)
            if text.startswith("sha256="):
                row["sha256"] = text.split("=", 1)[1]
        elif (value, scheme) == ("111001", "DCM"):  # Algorithm Name
            row["algorithm"] = str(item.TextValue)
        elif "ReferencedSOPSequence" in item and item.get("ValueType") == "IMAGE":
            ref = item.ReferencedSOPSequence[0]
            row["referenced_sop"] = str(ref.ReferencedSOPInstanceUID)
            if "ReferencedFrameNumber" in ref:
                row["frame"] = int(ref.ReferencedFrameNumber)
    return row


def _concept(item: Dataset) -> tuple[str, str]:
    if "ConceptNameCodeSequence" not in item or not item.ConceptNameCodeSequence:
        return "", ""
    code = item.ConceptNameCodeSequence[0]
    return str(code.CodeValue), str(code.CodingSchemeDesignator)


def _walk(ds: Dataset):  # noqa: ANN202 - an iterator of content items, depth first
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _walk(item)
