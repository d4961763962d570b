"""runtime.session: a session is built without ONNX Runtime writing its own log lines to stderr
(a damaged model file must give our one line only, never ORT's line first)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fetalplanes.runtime.session import load_session


def _model_ort_warns_about(path: Path) -> Path:
    """A valid graph whose constant folding fails (Gather index out of bounds): ORT logs a
    "[W:onnxruntime:...] Failure during constant folding" line to stderr while building the session,
    and its run fails."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    const = numpy_helper.from_array(np.ones((2, 3), np.float32), "c")
    index = numpy_helper.from_array(np.array([7], np.int64), "i")
    graph = helper.make_graph([helper.make_node("Gather", ["c", "i"], ["g"]), helper.make_node("Add", ["x", "g"], ["y"])],
                              "g", [x], [y], [const, index])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_building_a_session_writes_nothing_to_stderr(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    path = _model_ort_warns_about(tmp_path / "bad.onnx")
    session = load_session(path, threads=1)
    assert capfd.readouterr().err == ""  # ORT's own "[W:onnxruntime:...]" line is silenced
    with pytest.raises(Exception):  # the run fails (index out of bounds): raised, not logged
        session.run(None, {"x": np.zeros((1, 3), np.float32)})
    assert "onnxruntime" not in capfd.readouterr().err
