"""Across commands, a user's bad input is one line and exit code 2; a bug is a traceback and exit 1.

The bad inputs run in this process through the same ``run_app`` the console entry point uses
(no model is loaded: every case fails on its option or file before any work). The bug case runs
``python -c`` with a library function patched to raise, to see the real exit code and traceback.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def cli_app():
    from fetalplanes import cli

    cli._register()  # idempotent: every group once, whatever other tests registered
    return cli.app


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, str]:
    """Bad inputs: a junk model file, an empty folder, broken/non-mapping YAML, a bad variants row."""
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.yaml").write_text("data: [unclosed\n")
    (tmp_path / "variants.yaml").write_text("x:\n  base: paper_b0\n  overrides: {model.attention: foo}\n")
    names = ("bad.onnx", "empty", "broken.yaml", "variants.yaml", "out", "missing", "x.png")
    return {n: str(tmp_path / n) for n in names}


# (id, argv with {file} placeholders, substrings the one error line must contain)
CASES = [
    ("predict --format", "predict {x.png} --model {bad.onnx} --format xml", ["--format", "'xml'", "'json'"]),
    ("bad model file", "predict {x.png} --model {bad.onnx}", ["bad.onnx", "expected"]),
    ("unknown preset", "train --data {empty} --out {out} --config nosuch", ["'nosuch'", "paper_lite0"]),
    ("bench --preset", "bench --out {out} --preset nosuch", ["--preset", "'nosuch'", "paper_lite0"]),
    ("train --split", "train --data {empty} --out {out} --split bogus", ["data.split", "'bogus'", "'official'"]),
    ("train --attention", "train --data {empty} --out {out} --attention foo", ["model.attention", "'foo'", "cbam"]),
    ("config YAML", "train --data {empty} --out {out} --config {broken.yaml}", ["broken.yaml", "not valid YAML",
                                                                              "line 2"]),
    ("bench --backends", "bench --out {out} --backends tensorrt", ["tensorrt", "ort_fp32"]),
    ("bench --exporter", "bench --out {out} --exporter foo", ["'foo'", "torchscript"]),
    ("stream --smooth", "stream {x.png} --model {bad.onnx} --smooth median", ["--smooth", "'median'", "ema:ALPHA"]),
    ("missing data folder", "scan {missing}", ["missing", "no such file or folder"]),
    ("empty data folder", "train --data {empty} --out {out}", ["empty", "class"]),
    ("scan --task", "scan {empty} --task foo", ["'foo'", "planes", "brain"]),
    ("reproduce --variants", "reproduce --data {empty} --out {out} --variants nosuch", ["'nosuch'", "ablations"]),
    ("reproduce --task", "reproduce --data {empty} --out {out} --task foo", ["--task", "'foo'", "planes"]),
    ("reproduce --split", "reproduce --data {empty} --out {out} --split foo", ["--split", "'foo'", "patient-kfold"]),
    ("reproduce --seeds", "reproduce --data {empty} --out {out} --seeds abc", ["--seeds", "'abc'"]),
    ("variants file", "reproduce --data {empty} --out {out} --variants-file {variants.yaml}",
     ["variants.yaml", "variant 'x'", "model.attention", "cbam"]),
    ("export --int8", "export --model {bad.onnx} --out {out} --int8", ["--int8", "--calibration"]),
    ("serve --max-upload-mb", "serve --model {bad.onnx} --max-upload-mb 0", ["max_upload_mb", "> 0"]),
    ("download --api", "download --out {out} --api ftp://mirror", ["ftp://mirror", "HTTP"]),
]


@pytest.mark.parametrize(("argv", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(argv: str, expected: list[str], cli_app, files, monkeypatch,
                                          capsys: pytest.CaptureFixture) -> None:
    from fetalplanes.cli.common import run_app

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level  # the CLI's callback reconfigures logging
    monkeypatch.setattr(sys, "argv", ["fetalplanes", *_split(argv, files)])
    try:
        with pytest.raises(SystemExit) as info:
            run_app(cli_app)
    finally:
        root.handlers[:], root.level = handlers, level
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert info.value.code == 2, err
    assert "Traceback" not in err
    # The error is the last thing printed and exactly one line (log lines may come before it).
    assert lines and lines[-1].startswith("error: ") and sum(line.startswith("error:") for line in lines) == 1, err
    for text in expected:
        assert text in lines[-1], (text, lines[-1])


def _split(argv: str, files: dict[str, str]) -> list[str]:
    """Words of ``argv`` with ``{name}`` replaced by the fixture file's path."""
    return [files[w[1:-1]] if w.startswith("{") and w.endswith("}") else w for w in argv.split()]


@pytest.mark.parametrize("exc", ["KeyError('n_unit')", "ValueError('bug')"])
def test_a_bug_shows_its_traceback_and_exits_1(exc: str, tmp_path: Path) -> None:
    """A library function raising a non-UserError (a typo's KeyError, a plain ValueError) is a bug."""
    code = (
        "import sys\n"
        "import fetalplanes.data.sources as sources\n"
        f"def boom(*args, **kwargs): raise {exc}\n"
        "sources.load_source = boom\n"
        "from fetalplanes.cli import main\n"
        f"sys.argv = ['fetalplanes', 'scan', {str(tmp_path)!r}]\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" in proc.stderr and exc.split("(")[0] in proc.stderr.splitlines()[-1]
    assert "error:" not in proc.stderr
