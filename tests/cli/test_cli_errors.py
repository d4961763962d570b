"""The CLI turns usage and user errors into one readable line and exit code 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def fetalplanes(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "fetalplanes", *args], capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("demo", "--no-such-flag"), "No such option"),
        (("no-such-command",), "No such command"),
        (("explain", "--checkpoint", "missing.ckpt", "--out", "x", "img.png"), "missing.ckpt"),
    ],
)
def test_errors_are_one_line_not_a_traceback(args: tuple[str, ...], expected: str) -> None:
    result = fetalplanes(*args)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


# ------------------------------------------------ only the project's user errors become one line
def _run(exc: BaseException) -> None:
    import typer

    from fetalplanes.cli.common import run_app

    app = typer.Typer()

    @app.command()
    def boom() -> None:
        raise exc

    @app.command()
    def other() -> None:  # two commands, so Typer dispatches by name
        pass

    import sys

    argv, sys.argv = sys.argv, ["fetalplanes", "boom"]
    try:
        run_app(app)
    finally:
        sys.argv = argv


@pytest.mark.parametrize("exc", [
    pytest.param(lambda: __import__("fetalplanes.core.errors", fromlist=["DataError"]).DataError("bad.csv: no label"),
                 id="DataError"),
    pytest.param(lambda: FileNotFoundError("missing.ckpt: no such file"), id="FileNotFoundError"),
])
def test_user_errors_exit_2_with_one_line(exc, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        _run(exc())
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("exc", [KeyError("n_unit"), ValueError("bug"), TypeError("bug")])
def test_bugs_are_not_dressed_as_user_errors(exc: BaseException) -> None:
    """A KeyError from a typo, or a plain ValueError, keeps its traceback (exit 1 from Python)."""
    with pytest.raises(type(exc)):
        _run(exc)


def test_evaluate_refuses_missing_patient_ids_unless_image_level_is_asked(tiny_checkpoint, synth_data, tmp_path) -> None:
    """Through the CLI: a CSV list without patient ids is an error naming --unit image, then works with it."""
    import csv

    from fetalplanes.data.sources import load_source

    index = load_source(synth_data, "planes")
    rows = [{"image": str(s.path), "label": index.class_names[s.label]} for s in index.samples[:24]]
    lst = tmp_path / "list.csv"
    with open(lst, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["image", "label"])
        w.writeheader()
        w.writerows(rows)
    # These are the model's own training phantoms: scoring them must be asked for (--split all).
    base = ("evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(lst), "--n-boot", "50", "--split", "all")
    bad = fetalplanes(*base, "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "--unit image" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad").exists()
    good = fetalplanes(*base, "--out", str(tmp_path / "good"), "--unit", "image")
    assert good.returncode == 0, good.stderr
    text = (tmp_path / "good" / "report.md").read_text()
    assert "50 resamples of 24 images (images resampled as if independent" in text
