"""Video frames are held to the same pixel limit as images and DICOM, checked on the codec's header
before anything is decoded (issue 18, kind 5)."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from fetalplanes.core.errors import ImageLoadError
from fetalplanes.core.frames import open_frames

pytest.importorskip("av")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fetalplanes.deploy.stream import write_phantom_video

    return write_phantom_video(tmp_path_factory.mktemp("video") / "clip.mp4", n_frames=4, size=(320, 256))


def test_codec_size_over_the_limit_is_refused_before_decoding(clip: Path) -> None:
    with pytest.raises(ImageLoadError, match=r"clip.mp4: image is 320x256 = 81,920 pixels .* at most 81,919"):
        open_frames(clip, max_pixels=320 * 256 - 1)  # raised on opening: no frame was decoded
    assert len(list(open_frames(clip, max_pixels=320 * 256))) == 4


def test_video_bytes_are_held_to_the_limit_too(clip: Path) -> None:
    with pytest.raises(ImageLoadError, match="clip.mp4: image is 320x256"):
        open_frames(clip.read_bytes(), name="clip.mp4", max_pixels=1000)


CHILD = """
import sys
from fetalplanes.core.frames import open_frames
from fetalplanes.core.errors import ImageLoadError
try:
    open_frames(sys.argv[1])
except ImageLoadError as err:
    print(err)
"""


def test_shared_12000px_clip_is_refused_with_flat_memory(shared_cases: Path) -> None:
    clip = shared_cases / "video_pixel_limit" / "h264_12000x12000_3frames.mp4"
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run([sys.executable, "-c", CHILD, str(clip)], capture_output=True, text=True, timeout=120)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    assert "12000x12000 = 144,000,000 pixels" in proc.stdout and proc.stdout.count("\n") == 1, proc.stdout + proc.stderr
    if before / 1024 < 200:  # the children's peak is a max over all children: only meaningful when lower so far
        assert peak_mb < 200, f"peak RSS {peak_mb:.0f} MB (the 12000x12000 frames were decoded?)"
