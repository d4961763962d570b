"""The torch-free runtime: it imports and predicts with torch blocked, answers like the
PyTorch model, reads preprocessing / temperature / abstain threshold from the ONNX
metadata, and rejects files that are not fetalplanes models with clear messages."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")

from fetalplanes.core.classes import PLANES  # noqa: E402
from fetalplanes.core.postprocess import softmax  # noqa: E402
from fetalplanes.core.preprocess import preprocess_batch  # noqa: E402
from fetalplanes.core.spec import ModelSpec, Preprocessing  # noqa: E402
from fetalplanes.runtime import ModelFileError, OnnxPredictor  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SIZE = 64

# Runs in a fresh interpreter: any import of torch (or a torch-based library) fails.
BLOCKED_SCRIPT = textwrap.dedent(
    """
    import importlib, importlib.abc, json, pkgutil, sys

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            top = name.split(".")[0]
            if top.startswith("torch") or top in ("timm", "lightning", "pytorch_grad_cam"):
                raise ImportError(f"{name} is blocked: the runtime must not need torch")
            return None

    sys.meta_path.insert(0, BlockTorch())
    import fetalplanes.core
    for mod in pkgutil.iter_modules(fetalplanes.core.__path__):
        importlib.import_module(f"fetalplanes.core.{mod.name}")
    from fetalplanes.runtime import OnnxPredictor

    model, image = sys.argv[1], sys.argv[2]
    pred = OnnxPredictor(model, threads=1)
    [p] = [r.prediction for r in pred.predict([image], k=3)]
    with open(image, "rb") as fh:
        [q] = [r.prediction for r in pred.predict(fh.read(), k=3)]
    loaded = sorted(m for m in sys.modules if m.split(".")[0].startswith("torch"))
    print(json.dumps({"file": p.to_dict(), "bytes": q.to_dict(), "torch_modules": loaded,
                      "spec": pred.spec.to_dict()}))
    """
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    """(onnx path, torch model, spec): a small CBAM model exported with the real exporter."""
    torch = pytest.importorskip("torch")
    from fetalplanes.deploy.export import export_onnx
    from fetalplanes.models import create_model
    from fetalplanes.models.registry import default_preprocessing

    torch.manual_seed(0)
    model = create_model("paper_lite0", len(PLANES), pretrained=False, attention="cbam").eval()
    spec = ModelSpec("runtime-test", "planes", tuple(PLANES), dict(model.config), default_preprocessing(model, SIZE))
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(model, spec, out)
    return out, model, spec


@pytest.fixture()
def image_file(synth_data: Path) -> Path:
    return sorted((synth_data / "Images").glob("*.png"))[0]


@pytest.mark.slow
def test_runtime_works_with_torch_blocked(exported, image_file: Path) -> None:
    model_path, model, spec = exported
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED_SCRIPT, str(model_path), str(image_file)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["torch_modules"] == []
    assert ModelSpec.from_dict(out["spec"]) == spec

    # Same answer as the PyTorch model with the training preprocessing.
    import torch

    from fetalplanes.core.io import load_image

    x = preprocess_batch([load_image(image_file)], spec.preprocessing)
    with torch.inference_mode():
        probs = softmax(model(torch.from_numpy(x)).numpy(), spec.temperature)[0]
    for answer in (out["file"], out["bytes"]):
        assert (answer["label"] or answer["nearest_plane"]) == PLANES[int(probs.argmax())]  # none when OOD
        assert [t["label"] for t in answer["topk"]] == [PLANES[i] for i in np.argsort(-probs)[:3]]
        got = np.array([answer["probabilities"][c] for c in PLANES])
        np.testing.assert_allclose(got, probs, atol=1e-5)


@pytest.mark.slow
def test_runtime_batches_match_torch(exported, synth_data: Path) -> None:
    import torch

    model_path, model, spec = exported
    files = sorted((synth_data / "Images").glob("*.png"))[:5]
    pred = OnnxPredictor(model_path)
    assert pred.input_size == SIZE and pred.spec == spec
    results = pred.predict(files, k=2, batch_size=2)  # batches of 2, 2 and 1
    assert [r.path for r in results] == files
    from fetalplanes.core.io import load_image

    x = preprocess_batch([load_image(f) for f in files], spec.preprocessing)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(pred.logits(x), ref, atol=1e-3)
    assert [r.prediction.label for r in results] == [PLANES[i] for i in ref.argmax(1)]


# ------------------------------------------------------------------ fast tests on a toy graph


def _toy_model(path: Path, spec: ModelSpec, weights: np.ndarray, with_spec: bool = True, size: int | None = None) -> Path:
    """A hand-built ONNX classifier: global average pool -> linear (no torch needed)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    s = size or spec.preprocessing.image_size
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("Gemm", ["flat", "W"], ["logits"]),
        ],
        "toy",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, s, s])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", spec.num_classes])],
        [numpy_helper.from_array(weights.astype(np.float32), "W")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    if with_spec:
        from fetalplanes.runtime.artifact import set_onnx_metadata

        set_onnx_metadata(proto, spec)
    onnx.save(proto, str(path))
    return path


def _toy_spec(**changes) -> ModelSpec:
    spec = ModelSpec("toy", "planes", ("a", "b", "c"), {}, Preprocessing(image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3))
    return spec.replace(**changes)


def _gray(value: int) -> Image.Image:
    return Image.new("L", (40, 30), value)


def test_temperature_abstain_and_preprocessing_come_from_metadata(tmp_path: Path) -> None:
    spec = _toy_spec(temperature=2.0, abstain_threshold=0.6)
    w = np.array([[1.0, 0.0, -1.0], [0.5, 0.2, 0.0], [0.0, 1.0, 0.3]])
    pred = OnnxPredictor(_toy_model(tmp_path / "toy.onnx", spec, w), threads=1)
    assert pred.spec == spec and pred.input_size == 32
    assert pred.session.get_session_options().intra_op_num_threads == 1

    images = [_gray(255), _gray(0), _gray(128)]
    got = [r.prediction for r in pred.predict(images, k=2)]
    # Expected: the spec's normalization ((v/255 - 0.5) / 0.25 on 3 channels), then / T.
    v = np.array([255, 0, 128]) / 255.0
    x = np.repeat(((v - 0.5) / 0.25)[:, None], 3, axis=1)
    probs = softmax(x @ w, 2.0)
    for p, row in zip(got, probs):
        assert p.label == "abc"[int(row.argmax())]
        assert p.confidence == pytest.approx(float(row.max()), abs=1e-5)
        assert len(p.topk) == 2 and p.abstain == bool(row.max() < 0.6)
    assert any(p.abstain for p in got) and not all(p.abstain for p in got)  # both branches seen


def test_predict_bytes_and_files_agree(tmp_path: Path) -> None:
    spec = _toy_spec()
    pred = OnnxPredictor(_toy_model(tmp_path / "toy.onnx", spec, np.eye(3)[:, [0, 2, 1]]))
    buf = io.BytesIO()
    Image.new("RGB", (50, 40), (200, 10, 30)).save(buf, format="PNG")
    (tmp_path / "img.png").write_bytes(buf.getvalue())
    [by_bytes] = pred.predict(buf.getvalue(), k=3)
    [by_file] = pred.predict(tmp_path, k=3)  # a folder is searched for images
    assert by_file.path == tmp_path / "img.png" and by_bytes.prediction == by_file.prediction
    assert len(by_bytes.prediction.topk) == 3


def test_not_a_fetalplanes_model(tmp_path: Path) -> None:
    plain = _toy_model(tmp_path / "plain.onnx", _toy_spec(), np.eye(3), with_spec=False)
    with pytest.raises(ModelFileError, match="plain.onnx.*fetalplanes_spec.*fetalplanes export"):
        OnnxPredictor(plain)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model at all")
    with pytest.raises(ModelFileError, match="garbage.onnx"):
        OnnxPredictor(garbage)
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        OnnxPredictor(tmp_path / "missing.onnx")


def test_graph_input_must_match_spec(tmp_path: Path) -> None:
    path = _toy_model(tmp_path / "toy.onnx", _toy_spec(), np.eye(3), size=48)  # spec says 32
    with pytest.raises(ModelFileError, match="input shape"):
        OnnxPredictor(path)


def test_bad_inputs_are_clear_errors(tmp_path: Path) -> None:
    pred = OnnxPredictor(_toy_model(tmp_path / "toy.onnx", _toy_spec(), np.eye(3)))
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\)"):
        pred.logits(np.zeros((1, 3, 64, 64), np.float32))
    assert pred.logits(np.zeros((0, 3, 32, 32), np.float32)).shape == (0, 3)
    assert pred.predict([]) == []
    [junk] = pred.predict(b"definitely not an image")
    assert not junk.ok and "not an image" in junk.error
    [missing] = pred.predict([tmp_path / "nope.png"])
    assert not missing.ok and "nope.png: file not found" in missing.error


def _failing_at_run_time(path: Path, spec: ModelSpec) -> Path:
    """A toy graph that loads but cannot run: its logits are reshaped to 5 values whatever the batch."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    s = spec.preprocessing.image_size
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["image"], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("Reshape", ["flat", "five"], ["logits"])],
        "broken", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, s, s])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", spec.num_classes])],
        [numpy_helper.from_array(np.array([5], dtype=np.int64), "five")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    from fetalplanes.runtime.artifact import set_onnx_metadata

    set_onnx_metadata(proto, spec)
    onnx.save(proto, str(path))
    return path


def test_a_graph_that_fails_at_run_time_is_one_line_naming_the_file(tmp_path: Path) -> None:
    pred = OnnxPredictor(_failing_at_run_time(tmp_path / "broken.onnx", _toy_spec()), threads=1)
    with pytest.raises(ModelFileError, match=r"broken\.onnx: ONNX Runtime could not run the model") as info:
        pred.predict([_gray(10)])
    assert "\n" not in str(info.value)


def test_the_service_answers_a_failing_model_in_its_error_shape(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from fetalplanes.serve.app import create_app

    model = _failing_at_run_time(tmp_path / "broken.onnx", _toy_spec())
    buf = io.BytesIO()
    _gray(10).save(buf, format="PNG")
    client = TestClient(create_app(model, predictor=OnnxPredictor(model, threads=1)), raise_server_exceptions=False)
    r = client.post("/v1/predict", files={"file": ("a.png", buf.getvalue(), "image/png")})
    assert r.status_code == 500
    assert "broken.onnx: ONNX Runtime could not run the model" in r.json()["detail"]
