"""`fetalplanes dicom-node` / `dicomweb`: bad options and unreachable servers are one line, exit 2."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402


def test_bad_forward_target_is_one_line(cli_run, tmp_path: Path) -> None:
    proc = cli_run("dicom-node", "--model", str(tmp_path / "m.onnx"), "--forward", "ORTHANC")
    assert proc.returncode == 2 and "expected AET@host:port" in proc.stderr
    assert len([ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]) == 1


def test_missing_model_is_one_line(cli_run, tmp_path: Path) -> None:
    proc = cli_run("dicom-node", "--model", str(tmp_path / "m.onnx"), "--journal", str(tmp_path / "j"))
    assert proc.returncode == 2 and "m.onnx" in proc.stderr and "not found" in proc.stderr


def test_unreachable_dicomweb_server_is_one_line(cli_run, tmp_path: Path) -> None:
    from fetalplanes.node.orthanc import free_port

    url = f"http://127.0.0.1:{free_port()}/dicom-web"  # nothing listens there
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not a model")
    proc = cli_run("dicomweb", "--model", str(model), "--url", url, "--study", "1.2.3", "--journal", str(tmp_path / "j"))
    assert proc.returncode == 2 and "QIDO-RS for study 1.2.3 failed" in proc.stderr


def test_a_bad_dicomweb_url_names_the_option_given(cli_run, tmp_path: Path) -> None:
    proc = cli_run("dicomweb", "--model", str(tmp_path / "m.onnx"), "--url", "file:///etc/passwd", "--study", "1.2.3",
                   "--journal", str(tmp_path / "j"))
    assert proc.returncode == 2 and "--url 'file:///etc/passwd': expected an http:// or https://" in proc.stderr
    assert "--stow" not in proc.stderr  # the user gave no --stow


def test_a_journal_held_by_a_running_node_is_one_line(cli_run, onnx_model: Path, tmp_path: Path) -> None:
    """A second node (or a pull) on the folder a running node writes is refused before it binds
    its port: one line naming the folder and the holder's PID, exit 2."""
    from fetalplanes.node.orthanc import free_port

    holder = harness.hold_journal(tmp_path / "j")
    try:
        proc = cli_run("dicom-node", "--model", str(onnx_model), "--journal", str(tmp_path / "j"),
                       "--port", str(free_port()))
    finally:
        holder.kill()
        holder.wait()
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    assert f"the journal is held by another process (PID {holder.pid}" in errors[0]
