"""Decoding shows what a viewer shows (issue 19 item 4): a video's display matrix turns its frames
upright, an Enhanced DICOM's window comes from its functional groups (per-frame, then shared, then
top level), and Float Pixel Data follows the documented float rule or is refused in one line."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fetalplanes.core.errors import ImageLoadError
from fetalplanes.core.frames import open_frames, upright
from fetalplanes.core.intensity import scale_to_uint8
from fetalplanes.core.io import load_frames, load_image

SHARED_CASES = Path(__file__).resolve().parents[2].parent / "shared" / "cases"


def _dataset(rows: int, cols: int, frames: int = 1):  # noqa: ANN202 - a pydicom Dataset
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.6.2", generate_uid()
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    if frames > 1:
        ds.NumberOfFrames = frames
    return ds


def _bytes(ds) -> bytes:  # noqa: ANN001
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _window(center: float, width: float):  # noqa: ANN202
    from pydicom.dataset import Dataset

    item = Dataset()
    item.WindowCenter, item.WindowWidth = center, width
    return item


def _group(**macros):  # noqa: ANN202
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    group = Dataset()
    for name, item in macros.items():
        setattr(group, name, Sequence([item]))
    return group


# ------------------------------------------------------------------ Enhanced DICOM VOI


def _enhanced(values: np.ndarray, shared: tuple[float, float] | None, per_frame: dict[int, tuple[float, float]]) -> bytes:
    from pydicom.sequence import Sequence

    ds = _dataset(*values.shape[1:], frames=len(values))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = values.astype(np.uint16).tobytes()
    if shared:
        ds.SharedFunctionalGroupsSequence = Sequence([_group(FrameVOILUTSequence=_window(*shared))])
    ds.PerFrameFunctionalGroupsSequence = Sequence(
        [_group(FrameVOILUTSequence=_window(*per_frame[i])) if i in per_frame else _group() for i in range(len(values))])
    return _bytes(ds)


def _classic(frame: np.ndarray, center: float, width: float) -> bytes:
    ds = _dataset(*frame.shape)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = center, width
    ds.PixelData = frame.astype(np.uint16).tobytes()
    return _bytes(ds)


def test_enhanced_window_per_frame_then_shared() -> None:
    ramp = np.tile(np.linspace(0, 4095, 32), (24, 1))
    values = np.stack([ramp, ramp, ramp])
    data = _enhanced(values, shared=(1500, 1000), per_frame={1: (3000, 400)})
    got = [np.asarray(im) for im in load_frames(data, name="enhanced.dcm")]
    shared_view = np.asarray(load_image(_classic(ramp, 1500, 1000)))
    own_view = np.asarray(load_image(_classic(ramp, 3000, 400)))
    assert np.array_equal(got[0], shared_view) and np.array_equal(got[2], shared_view)  # the shared window
    assert np.array_equal(got[1], own_view) and not np.array_equal(own_view, shared_view)  # frame 1's own


def test_enhanced_without_any_window_keeps_the_bit_depth_rule() -> None:
    ramp = np.tile(np.arange(0, 4096, 128), (24, 1))
    got = np.asarray(load_image(_enhanced(np.stack([ramp, ramp]), shared=None, per_frame={})))
    assert np.array_equal(got, scale_to_uint8(ramp, 0, 4095))


def test_shared_enhanced_case_decodes_like_its_classic_twin() -> None:
    folder = SHARED_CASES / "dicom_enhanced_voi"
    if not folder.is_dir():
        pytest.skip("../shared/cases is not present")
    classic = np.asarray(load_image(folder / "voi_classic_toplevel.dcm"))
    enhanced = np.asarray(load_image(folder / "voi_enhanced_functional_groups.dcm"))
    assert classic.std() > 5 and np.array_equal(classic, enhanced)


# ------------------------------------------------------------------ Float Pixel Data


def _float(values: np.ndarray) -> bytes:
    ds = _dataset(*values.shape)
    ds.BitsAllocated = 32
    ds.FloatPixelData = values.astype(np.float32).tobytes()
    return _bytes(ds)


def test_float_pixel_data_in_0_to_1_follows_the_float_rule() -> None:
    values = np.tile(np.linspace(0, 1, 16), (8, 1))
    got = np.asarray(load_image(_float(values), name="float.dcm"))
    assert got.dtype == np.uint8 and np.array_equal(got, scale_to_uint8(values, 0.0, 1.0))


def test_float_pixel_data_outside_0_to_1_is_one_line_refusal() -> None:
    with pytest.raises(ImageLoadError) as info:
        load_image(_float(np.full((4, 4), 3.5)), name="hounsfield.dcm")
    message = str(info.value)
    assert message.startswith("hounsfield.dcm: floating-point image with values 3.5..3.5")
    assert "0..1" in message and "\n" not in message and "AttributeError" not in message


def test_shared_float_case_gives_the_phantom() -> None:
    folder = SHARED_CASES
    if not (folder / "dicom_float_pixel").is_dir():
        pytest.skip("../shared/cases is not present")
    phantom = np.asarray(load_image(folder / "dicom_enhanced_voi" / "voi_classic_toplevel.dcm"))
    assert np.array_equal(np.asarray(load_image(folder / "dicom_float_pixel" / "float_pixel_0to1.dcm")), phantom)


# ------------------------------------------------------------------ video display matrix


class _Reader:
    def __init__(self, width: int, height: int) -> None:
        self.info = {"width": width, "height": height}


@pytest.mark.parametrize(("rotation", "corner"), [(0, (0, 0)), (-90, (1, 0)), (270, (1, 0)), (90, (0, 2)), (180, (2, 1))])
def test_upright_turns_by_the_display_rotation(rotation: int, corner: tuple[int, int]) -> None:
    """A 3x2 frame whose top-left pixel is marked: where the mark ends up, and the reported size."""
    stored = np.zeros((2, 3), np.uint8)
    stored[0, 0] = 255
    reader = _Reader(3, 2)
    shown = np.asarray(upright(Image.fromarray(stored), rotation, reader))
    turned = rotation % 180 != 0
    assert shown.shape == ((3, 2) if turned else (2, 3))
    assert shown[corner[1], corner[0]] == 255 and shown.sum() == 255
    assert (reader.info["width"], reader.info["height"]) == ((2, 3) if turned else (3, 2))
    assert reader.info["rotation"] == rotation % 360


def test_sideways_phone_clip_is_read_upright() -> None:
    pytest.importorskip("av")
    folder = SHARED_CASES / "video_rotation"
    if not folder.is_dir():
        pytest.skip("../shared/cases is not present")
    stacks, infos = [], []
    for name in ("femur_upright.mp4", "femur_rotated_display_matrix.mp4"):
        reader = open_frames(folder / name)
        stacks.append(np.stack([np.asarray(f.image, dtype=float) for f in reader]))
        infos.append(reader.info)
    assert stacks[0].shape == stacks[1].shape == (10, 260, 352)
    assert np.abs(stacks[0] - stacks[1]).mean() < 4  # the same pictures, up to H.264 noise
    assert (infos[1]["width"], infos[1]["height"], infos[1]["rotation"]) == (352, 260, 270)
    still = np.asarray(load_image(folder / "femur_upright.png"), dtype=float)
    assert np.abs(stacks[1][0] - still).mean() < 4
