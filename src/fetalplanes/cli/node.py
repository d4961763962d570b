"""`fetalplanes dicom-node` and `fetalplanes dicomweb`: the hospital-facing DICOM paths (docs/pacs.md)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from fetalplanes.cli.common import console


def dicom_node(
    model: Path = typer.Option(..., "--model", help="Exported model.onnx (torch-free) or a training checkpoint .ckpt."),
    aet: str = typer.Option("FETALPLANES", "--aet", help="This node's AE title (at most 16 characters)."),
    port: int = typer.Option(11112, "--port", min=1, max=65535, help="DICOM port to listen on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on; 0.0.0.0 lets scanners and the PACS reach it."),
    journal: Path = typer.Option(Path("fetalplanes-journal"), "--journal", help="Folder of the on-disk journal (received instances, results, delivery state)."),
    forward: Optional[List[str]] = typer.Option(None, "--forward", help="Send results by C-STORE to AET@host:port (repeatable)."),
    stow: Optional[List[str]] = typer.Option(None, "--stow", help="Send results by STOW-RS to this DICOMweb base URL (repeatable)."),
    allow_aet: Optional[List[str]] = typer.Option(None, "--allow-aet", help="Accept associations only from these calling AE titles (repeatable)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Inference threads."),
    overlay: bool = typer.Option(False, "--overlay", help="Also send a Secondary Capture of the heat-map overlay, burned 'NOT FOR DIAGNOSTIC USE' (needs a .ckpt model)."),
    retry_s: float = typer.Option(1.0, "--retry-s", min=0.01, help="Wait before the first retry of an undelivered result (seconds; doubles per attempt, at most 300)."),
    ready_file: Optional[Path] = typer.Option(None, "--ready-file", hidden=True, help="Written once the port is bound (scripts, tests)."),
) -> None:
    """Run a DICOM Storage SCP that classifies received US images and sends a structured report back."""
    from fetalplanes.core.errors import UsageError
    from fetalplanes.node.forward import parse_forward, parse_stow
    from fetalplanes.node.runner import NodeSettings, run_node

    if not 0 < len(aet.strip()) <= 16:
        raise UsageError(f"--aet {aet!r}: expected 1 to 16 characters")
    targets = [parse_forward(f, aet) for f in forward or []] + [parse_stow(u) for u in stow or []]
    console.print(f"fetalplanes dicom-node: {aet}@{host}:{port}, journal {journal}, results to "
                  f"{', '.join(t.name for t in targets) or 'nowhere (kept in the journal)'}  (Ctrl+C to stop)")
    run_node(NodeSettings(model=model, journal=journal, aet=aet.strip(), host=host, port=port, targets=targets,
                          allowed_callers=[a.strip() for a in allow_aet or []], threads=threads,
                          retry_s=retry_s, overlay_factory=_overlay_factory() if overlay else None), ready_file)


def _overlay_factory():  # noqa: ANN202 - Predictor -> overlay function | reason | None
    """Heat maps from fetalplanes.explain when installed (the CLI wires it; the node does not import it)."""
    try:
        from fetalplanes.explain import service_explainer
    except ImportError as err:
        return lambda _predictor: f"the explain extra is not installed ({err})"
    return service_explainer


def dicomweb(
    model: Path = typer.Option(..., "--model", help="Exported model.onnx (torch-free) or a training checkpoint .ckpt."),
    url: str = typer.Option(..., "--url", help="DICOMweb base URL, e.g. http://pacs:8042/dicom-web"),
    study: str = typer.Option(..., "--study", help="Study Instance UID to classify."),
    journal: Path = typer.Option(Path("fetalplanes-journal"), "--journal", help="Folder of the on-disk journal."),
    stow: Optional[str] = typer.Option(None, "--stow", help="STOW-RS the results here (default: back to --url)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Inference threads."),
) -> None:
    """Fetch a study by QIDO-RS/WADO-RS, classify it, and STOW-RS the structured reports back."""
    from fetalplanes.node.dicomweb import pull_study
    from fetalplanes.node.forward import parse_stow

    summary = pull_study(model, parse_stow(url, "--url").url, study, journal,
                         parse_stow(stow or url, "--stow" if stow else "--url"), threads=threads)
    console.print_json(data=summary)
    if summary["failed"] or summary["undelivered"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("dicom-node")(dicom_node)
    app.command("dicomweb")(dicomweb)
