"""The optional Secondary Capture: the heat-map overlay of the reported frame, burned "NOT FOR DIAGNOSTIC USE".

Made only when the node is given an overlay function (``fetalplanes dicom-node --overlay`` with a
``.ckpt`` model: Grad-CAM needs the torch model; the CLI wires ``fetalplanes.explain`` in, the
node does not import it). The SC is RGB, 8-bit, in its own series of the source's study
(series number :data:`SC_SERIES_NUMBER`; one modality per series), ``BurnedInAnnotation`` YES,
its UIDs derived from the source like the SR's (idempotent).
"""

from __future__ import annotations

from io import BytesIO
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from fetalplanes.node.sr import AlgorithmInfo, result_uids

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["BANNER", "SC_SERIES_NUMBER", "build_overlay_sc", "burn_banner"]

BANNER = "NOT FOR DIAGNOSTIC USE"
SC_SERIES_NUMBER = 9902


def burn_banner(image: Image.Image, caption: str) -> Image.Image:
    """``image`` (RGB) with a black band on top holding :data:`BANNER` and ``caption`` in white."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    height = max(14, out.height // 14)
    draw.rectangle([0, 0, out.width, height * 2], fill=(0, 0, 0))
    draw.text((4, 2), BANNER, fill=(255, 255, 255))
    draw.text((4, 2 + height), caption[:120], fill=(255, 255, 255))
    return out


_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime",
           "ReferringPhysicianName", "StudyID", "AccessionNumber", "StudyDescription")
"""Patient and General Study modules (PS3.3 C.7.1.1, C.7.2.1): the SC joins the source's study."""


def build_overlay_sc(source: Dataset, overlay_png: bytes, caption: str, algorithm: AlgorithmInfo) -> Dataset:
    """The SC for ``source`` from an overlay PNG (any size; the explainer's is the frame's).

    Written with pydicom rather than highdicom: highdicom's SCImage insists on a patient
    orientation, which an ultrasound frame does not have (PS3.3 C.7.6.1.1.1: Type 2C, empty here).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    with Image.open(BytesIO(overlay_png)) as im:
        pixels = np.ascontiguousarray(np.asarray(burn_banner(im, caption)), dtype=np.uint8)
    uids = result_uids(str(source.SOPInstanceUID), algorithm)
    sc = Dataset()
    sc.file_meta = FileMetaDataset()
    sc.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sc.SOPClassUID = sc.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    sc.SOPInstanceUID = sc.file_meta.MediaStorageSOPInstanceUID = uids.sc
    for keyword in _COPIED:
        setattr(sc, keyword, source.get(keyword, ""))
    sc.Modality, sc.ConversionType, sc.Manufacturer = "OT", "WSD", "fetalplanes"
    sc.SeriesInstanceUID, sc.SeriesNumber, sc.InstanceNumber = uids.sc_series, SC_SERIES_NUMBER, 1
    sc.SeriesDescription = "fetalplanes heat map (NOT FOR DIAGNOSTIC USE)"
    sc.PatientOrientation = ""
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = f"{BANNER}. {caption}"
    sc.SourceImageSequence = [Dataset()]
    sc.SourceImageSequence[0].ReferencedSOPClassUID = source.SOPClassUID
    sc.SourceImageSequence[0].ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.set_pixel_data(pixels, "RGB", 8)
    return sc
