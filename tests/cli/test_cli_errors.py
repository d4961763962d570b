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
