"""Node test helpers: a deterministic real Predictor (runtime.Predictor, the shared decode path) that
needs no training, and the real ultrasound DICOMs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fetalplanes.core.spec import ModelSpec, Preprocessing
from fetalplanes.runtime.predictor import Predictor

CLASSES = ("Fetal abdomen", "Fetal brain", "Other")


class MeanPredictor(Predictor):
    """Logits from the mean input intensity: a real Predictor (decode, preprocess, decide) whose
    answer does not depend on a trained model, so SR contents can be checked exactly."""

    kind = "stub"

    def __init__(self, path: Path, abstain: float = 0.0) -> None:
        super().__init__(path, ModelSpec(name="mean-stub", task="plane", class_names=CLASSES, architecture={},
                                         preprocessing=Preprocessing(image_size=32), version="0.1",
                                         abstain_threshold=abstain))

    def _run(self, x: np.ndarray) -> np.ndarray:
        m = x.mean(axis=(1, 2, 3))
        return np.stack([m, -m, np.zeros_like(m) + 0.5], axis=1).astype(np.float32) * 4


@pytest.fixture
def stub_predictor(tmp_path: Path) -> MeanPredictor:
    model = tmp_path / "stub.onnx"
    model.write_bytes(b"stub model bytes")
    return MeanPredictor(model)


@pytest.fixture(scope="session")
def dicom_us(shared_data: Path) -> Path:
    return shared_data / "dicom_us"
