"""Fixtures of the serve tests: an ONNX export of the tiny checkpoint (made once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def onnx_model(tiny_checkpoint: Path, synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_checkpoint exported to ONNX (skips when the export module is not installed)."""
    export = pytest.importorskip("fetalplanes.deploy.export")
    pytest.importorskip("fetalplanes.runtime")
    from fetalplanes.core.io import load_image
    from fetalplanes.models.checkpoint import load_checkpoint

    model, spec = load_checkpoint(tiny_checkpoint)
    # Two phantoms are enough for the parity check here; the export tests cover it in depth.
    images = [load_image(p) for p in sorted((synth_data / "Images").glob("*.png"))[:2]]
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export.export_onnx(model, spec, out, verify_images=images)
    return out
